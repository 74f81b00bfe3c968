"""Embedded default: dense-AE pretraining and few-label transfer on sklearn digits.

Runs offline (the 8×8 digits ship inside scikit-learn)::

    aetl run --config experiments/digits_transfer.py --workdir runs/digits

Setting. The 1,797 digits are split, stratified with ``data.split_seed``, into
a test set (30%, 539 images) and the rest; the rest is halved into an *unlabelled source*
split (630 images) and a *target pool* (628 images, at least 61 per class). A dense autoencoder
(64→128→64→32→64→128→64, BCE on pixels in [0,1]) is pretrained on the source
images and saved with Orbax. For each label budget k (labels per class), each
strategy and each seed, k labelled examples per class (plus 5 per class for
validation) are drawn from the target pool, the encoder is restored from the
checkpoint (encoder subtree only) into a classifier with a fresh linear head,
and the classifier is trained and tested on the held-out test split.

Results (2-core CPU, defaults, 5 seeds, test accuracy mean ± 95% CI; produced by this config
on 2026-12-05 with 0.6; every cell trains at least 1,000 optimiser steps
(``transfer.min_steps``) and the linear probe is logistic regression trained to convergence;
labels: k per class + 5 per class for validation):

| strategy | 10 labels/class | 25 labels/class | 50 labels/class |
|---|---|---|---|
| scratch | 87.6 ± 2.2% (n=5) | 92.7 ± 1.1% (n=5) | 95.8 ± 0.4% (n=5) |
| linear_probe | 87.6 ± 1.2% (n=5) | 91.7 ± 0.7% (n=5) | 93.5 ± 0.8% (n=5) |
| finetune | 87.5 ± 2.1% (n=5) | 93.1 ± 0.8% (n=5) | 95.4 ± 0.7% (n=5) |
| lp_ft | 88.8 ± 0.4% (n=5) | 93.0 ± 0.5% (n=5) | 95.2 ± 0.8% (n=5) |
| ridge_probe | 85.2 ± 2.6% (n=5) | 89.5 ± 1.5% (n=5) | 90.1 ± 0.7% (n=5) |
| knn_probe | 88.5 ± 1.0% (n=5) | 93.5 ± 1.2% (n=5) | 95.8 ± 0.4% (n=5) |

Difference to `scratch` in accuracy points, paired by seed (same labelled subset), mean ± 95% CI; an interval that excludes 0 is a significant difference.

| strategy | 10 labels/class | 25 labels/class | 50 labels/class |
|---|---|---|---|
| linear_probe | +0.0 ± 1.7 pt (n=5) | -1.0 ± 0.9 pt (n=5) | -2.3 ± 0.9 pt (n=5) |
| finetune | -0.1 ± 1.9 pt (n=5) | +0.4 ± 1.1 pt (n=5) | -0.4 ± 1.1 pt (n=5) |
| lp_ft | +1.2 ± 2.0 pt (n=5) | +0.3 ± 1.6 pt (n=5) | -0.7 ± 0.9 pt (n=5) |
| ridge_probe | -2.4 ± 2.5 pt (n=5) | -3.2 ± 1.5 pt (n=5) | -5.8 ± 0.9 pt (n=5) |
| knn_probe | +0.9 ± 2.2 pt (n=5) | +0.7 ± 0.7 pt (n=5) | +0.0 ± 0.7 pt (n=5) |

Wall time of the command above: 78 s on the 2-core CPU VM (2026-12-05, pretraining and
all 90 cells; 80 s of user CPU).

Honest reading: on these 8×8 digits no strategy is significantly better than training from
scratch at any budget (k-NN on the codes at 25 labels per class, +0.7 ± 0.7, touches zero),
and the frozen linear and ridge probes fall behind it (-1.0 to -5.8). The run of 2026-12-04
(0.5) read LP-FT +1.9 ± 1.7 at 10 labels per class and k-NN +1.5 ± 0.9 at 25; 0.6 draws other
batches (its shuffles rank examples by per-index random bits, for padded label budgets) and
a different pretrained encoder, and those two gains shrank to +1.2 ± 2.0 and +0.7 ± 0.7:
they were at the edge of seed noise, not effects. The clear autoencoder gains of this
project are on MNIST with its unlabelled pool (``experiments/mnist_semisupervised.py``).
Against the earlier table (before training lengths were counted in optimiser steps) the
linear probe moved from 83.7% to ~88% at 10 labels per class: it had stopped after 300 Adam
steps without fitting its own labels.
"""

from aetl_jax.tasks.transfer import default_config


def get_config():
  """sklearn digits (offline), dense autoencoder 64-128-64-32, six strategies × 3 budgets × 5 seeds."""
  c = default_config()
  c.data.update(source="digits", target="digits", test_fraction=0.3, source_fraction=0.5)
  c.model.update(family="mlp", widths=(128, 64), code_dim=32)
  c.objective.update(name="reconstruction", loss="bce")
  return c
