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
on 2026-12-04; every cell trains at least 1,000 optimiser steps (``transfer.min_steps``) and
the linear probe is logistic regression trained to convergence; labels: k per class + 5 per
class for validation):

| strategy | 10 labels/class | 25 labels/class | 50 labels/class |
|---|---|---|---|
| scratch | 87.5 ± 1.9% (n=5) | 93.0 ± 1.1% (n=5) | 95.8 ± 0.6% (n=5) |
| linear_probe | 88.7 ± 1.8% (n=5) | 91.5 ± 0.9% (n=5) | 93.4 ± 0.8% (n=5) |
| finetune | 88.1 ± 1.1% (n=5) | 92.9 ± 0.8% (n=5) | 95.5 ± 0.8% (n=5) |
| lp_ft | 89.4 ± 1.5% (n=5) | 93.0 ± 1.1% (n=5) | 95.3 ± 0.7% (n=5) |
| ridge_probe | 86.1 ± 1.3% (n=5) | 89.3 ± 1.8% (n=5) | 90.8 ± 0.9% (n=5) |
| knn_probe | 88.6 ± 2.2% (n=5) | 94.5 ± 1.2% (n=5) | 95.9 ± 1.7% (n=5) |

Difference to `scratch` in accuracy points, paired by seed (same labelled subset), mean ± 95% CI; an interval that excludes 0 is a significant difference.

| strategy | 10 labels/class | 25 labels/class | 50 labels/class |
|---|---|---|---|
| linear_probe | +1.2 ± 1.4 pt (n=5) | -1.4 ± 0.3 pt (n=5) | -2.3 ± 1.3 pt (n=5) |
| finetune | +0.5 ± 1.4 pt (n=5) | -0.1 ± 0.9 pt (n=5) | -0.3 ± 1.2 pt (n=5) |
| lp_ft | +1.9 ± 1.7 pt (n=5) | +0.0 ± 0.8 pt (n=5) | -0.4 ± 1.2 pt (n=5) |
| ridge_probe | -1.4 ± 1.6 pt (n=5) | -3.7 ± 1.5 pt (n=5) | -5.0 ± 1.0 pt (n=5) |
| knn_probe | +1.0 ± 2.8 pt (n=5) | +1.5 ± 0.9 pt (n=5) | +0.1 ± 2.0 pt (n=5) |

Wall time of the command above: 85 s on the 2-core CPU VM (2026-12-04, pretraining and
all 90 cells; 88 s of user CPU).

Honest reading: at 10 labels per class, LP-FT (a converged linear probe, then fine-tuning)
beats training from scratch by +1.9 ± 1.7 points, the only interval above zero there; at 25
labels per class only k-NN on the codes does (+1.5 ± 0.9), at 50 none does, and the frozen
linear and ridge probes fall behind scratch (-1.4 to -5.0). Against the earlier table (before
training lengths were counted in optimiser steps) the linear probe moved from 83.7% to 88.7%
at 10 labels per class: it had stopped after 300 Adam steps without fitting its own labels.
"""

from aetl_jax.tasks.transfer import default_config


def get_config():
  """sklearn digits (offline), dense autoencoder 64-128-64-32, six strategies × 3 budgets × 5 seeds."""
  c = default_config()
  c.data.update(source="digits", target="digits", test_fraction=0.3, source_fraction=0.5)
  c.model.update(family="mlp", widths=(128, 64), code_dim=32)
  c.objective.update(name="reconstruction", loss="bce")
  return c
