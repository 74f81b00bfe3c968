"""Transfer between named datasets: TFDS catalogue, raw files offline, or local data.

Source and target are named in the config (``data.source``, ``data.target``):
``mnist``, ``fashion_mnist``, ``kmnist``, ``emnist/digits``, ``svhn_cropped``,
``cifar10``, ``stl10`` (TFDS; downloaded on first use, or prepared from the
official raw files in ``data.manual_dir`` with nothing fetched), ``digits``,
or local data ``idx:DIR``, ``npz:FILE``, ``folder:DIR``. Domains of
different shapes need ``data.common_shape`` (H, W, C).

Same-dataset few-label transfer on MNIST, from the IDX files in ../shared
(offline; a dense autoencoder 784-512-256-64 pretrained on 20,000 unlabelled
images; ``--config.model.family=conv`` for the convolutional one)::

    aetl run --config experiments/transfer.py --workdir runs/mnist \\
        --config.data.source=idx:../shared/datasets/mnist \\
        --config.data.target=idx:../shared/datasets/mnist

Gave (2 min 6 s on 2 CPU cores; 5 seeds; test = 5,000 MNIST test images;
target pool 10,000 train images disjoint from the 20,000 source images):

| strategy | 1 labels/class | 10 labels/class | 100 labels/class |
|---|---|---|---|
| scratch | 34.4 ± 8.3% (n=5) | 74.2 ± 2.8% (n=5) | 91.6 ± 0.5% (n=5) |
| linear_probe | 30.3 ± 3.6% (n=5) | 70.3 ± 2.7% (n=5) | 88.2 ± 0.7% (n=5) |
| finetune | 38.0 ± 5.4% (n=5) | 77.8 ± 2.9% (n=5) | 91.8 ± 0.1% (n=5) |
| lp_ft | 40.9 ± 5.0% (n=5) | 78.5 ± 2.3% (n=5) | 91.8 ± 0.4% (n=5) |
| ridge_probe | 41.8 ± 3.9% (n=5) | 74.9 ± 3.3% (n=5) | 86.4 ± 0.6% (n=5) |
| knn_probe | 45.6 ± 5.0% (n=5) | 77.7 ± 2.6% (n=5) | 91.5 ± 0.4% (n=5) |

Difference to `scratch` in accuracy points, paired by seed (same labelled subset), mean ± 95% CI; an interval that excludes 0 is a significant difference.

| strategy | 1 labels/class | 10 labels/class | 100 labels/class |
|---|---|---|---|
| linear_probe | -4.1 ± 9.6 pt (n=5) | -3.9 ± 3.6 pt (n=5) | -3.4 ± 1.0 pt (n=5) |
| finetune | +3.7 ± 9.0 pt (n=5) | +3.6 ± 3.4 pt (n=5) | +0.3 ± 0.5 pt (n=5) |
| lp_ft | +6.6 ± 7.3 pt (n=5) | +4.3 ± 2.4 pt (n=5) | +0.3 ± 0.8 pt (n=5) |
| ridge_probe | +7.4 ± 7.0 pt (n=5) | +0.8 ± 3.5 pt (n=5) | -5.2 ± 0.8 pt (n=5) |
| knn_probe | +11.2 ± 4.6 pt (n=5) | +3.5 ± 3.2 pt (n=5) | -0.0 ± 0.8 pt (n=5) |

Here pretraining helps at small budgets: LP-FT gains +4.3 ± 2.4 points at 10
labels per class, and k-NN on the frozen features +11.2 ± 4.6 at one label per
class; at 100 labels per class only frozen-feature probes differ from scratch,
and they are worse.

Cross-domain: pretrain on MNIST, transfer to Fashion-MNIST prepared by the
real TFDS builder from the official files (offline)::

    aetl run --config experiments/transfer.py --workdir runs/mnist2fashion \\
        --config.data.source=idx:../shared/datasets/mnist \\
        --config.data.target=fashion_mnist \\
        --config.data.manual_dir=../shared/datasets/fashion_mnist

On your own machine, ``--config.data.source=mnist`` downloads through TFDS.
"""

from aetl_jax.tasks.transfer import default_config


def get_config():
  """MNIST → MNIST by default (TFDS); dense AE 784-512-256-64; budgets 1/10/100 per class."""
  c = default_config()
  c.data.update(source="mnist", target="mnist", test_fraction=0.2, source_fraction=0.5,
                max_source=20000, max_pool=10000, max_test=5000)
  c.model.update(family="mlp", widths=(512, 256), code_dim=64)
  c.pretrain.update(epochs=15, batch_size=128, eval_every=5, checkpoint_every=5)
  c.transfer.update(budgets=(1, 10, 100), epochs=50, lp_epochs=25)
  return c
