"""Semi-supervised MNIST: every training image unlabelled, 1 / 10 / 100 labels per class.

    aetl run --config experiments/mnist_semisupervised.py --workdir runs/mnist_semi     # TFDS download
    aetl run --config experiments/mnist_semisupervised.py --workdir runs/mnist_semi \\
        --config.data.source=idx:../shared/datasets/mnist \\
        --config.data.target=idx:../shared/datasets/mnist                              # offline

Setting of Kingma et al. 2014 (Table 1) and Rifai et al. 2011: the 60,000 training images
are all available without labels (``data.source_fraction=0``: the autoencoder pretrains on
the whole target pool), a few labels per class are drawn from them, and the 10,000 test
images score. Strategies: ``scratch``; autoencoder transfer (``finetune``, ``lp_ft``);
the pool's images used during fine-tuning (``joint_finetune``: + reconstruction;
``pseudo_label``: FixMatch-style confident pseudo-labels under augmentation). Published
test errors at 100 labels: 25.81% NN baseline, 13.47% CAE, 11.82% M1+TSVM.

RESULTS
"""

from aetl_jax.tasks.transfer import default_config


def get_config():
  """Dense AE 784-512-256-64 on all 60k images; 5 strategies × budgets 1/10/100 × 5 seeds."""
  c = default_config()
  c.data.update(source="mnist", target="mnist", source_fraction=0.0)
  c.model.update(family="mlp", widths=(512, 256), code_dim=64)
  c.pretrain.update(epochs=20, batch_size=128, learning_rate=1e-3, eval_every=5,
                    checkpoint_every=5)
  c.transfer.strategies = ("scratch", "finetune", "lp_ft", "joint_finetune", "pseudo_label")
  c.transfer.update(budgets=(1, 10, 100), seeds=5, epochs=100, learning_rate=1e-3,
                    val_per_class=5)
  c.transfer.update(lp_epochs=50, reconstruction_weight=1.0, unlabelled_ratio=4.0,
                    semi_epochs=4, pseudo_label_weight=1.0, confidence=0.95)
  return c
