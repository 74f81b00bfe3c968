"""Embedded default: dense-AE pretraining and few-label transfer on sklearn digits.

Runs offline (the 8×8 digits ship inside scikit-learn)::

    python -m experiments digits_transfer --workdir runs/digits

Setting. The 1,797 digits are split, stratified with ``data.split_seed``, into
a test set (30%) and the rest; the rest is halved into an *unlabelled source*
split (629 images) and a *target pool* (629 images). A dense autoencoder
(64→128→64→32→64→128→64, BCE on pixels in [0,1]) is pretrained on the source
images and saved with Orbax. For each label budget k (labels per class), each
strategy and each seed, k labelled examples per class (plus 5 per class for
validation) are drawn from the target pool, the encoder is restored from the
checkpoint (encoder subtree only) into a classifier with a fresh linear head,
and the classifier is trained and tested on the held-out test split.

Results (2-core CPU, defaults, 3 seeds, test accuracy mean ± 95% CI):

RESULTS_PLACEHOLDER
"""

from __future__ import annotations

import ml_collections

from aetl_jax.data.digits import load_digits_arrays
from aetl_jax.pipeline import run_transfer_experiment
from aetl_jax.validation import validate_transfer_config


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.data = dict(test_fraction=0.3, source_fraction=0.5, split_seed=0)
  c.model = dict(family="mlp", widths=(128, 64), code_dim=32, dropout_rate=0.0)
  c.pretrain = dict(
      epochs=200, batch_size=64, learning_rate=3e-3, optimizer="adam", weight_decay=0.0,
      schedule="cosine", warmup_epochs=0, loss="bce", runner="scan", seed=0, eval_every=25,
      checkpoint_every=25, keep_checkpoints=2, grad_clip_norm=0.0)
  c.transfer = dict(
      strategies=("scratch", "linear_probe", "finetune", "lp_ft", "ridge_probe", "knn_probe"),
      budgets=(10, 40), seeds=3, val_per_class=5, label_seed=0, seed_offset=0,
      epochs=100, learning_rate=3e-3, optimizer="adam", weight_decay=0.0, schedule="cosine",
      warmup_epochs=0, batch_size=32, runner="scan",
      lp_epochs=50, ft_lr_mult=0.3, partial_freeze_blocks=1, partial_freeze_regex="",
      encoder_lr_mult=0.1, layer_decay=0.5, unfreeze_epochs=25, reinit=(),
      ridge_l2_grid=(0.01, 0.1, 1.0, 10.0, 100.0), knn_k_grid=(1, 3, 5, 10))
  c.report = dict(num_figure_images=10)
  c.lock()
  return c


def validate(config) -> None:
  validate_transfer_config(config)


def run(config, workdir, *, progress: bool = True) -> dict:
  images, labels = load_digits_arrays()
  return run_transfer_experiment(config, workdir, images=images, labels=labels, num_classes=10,
                                 title="sklearn digits 8×8: dense AE → few-label classification",
                                 progress=progress)
