"""Semi-supervised fine-tuning: the target's unlabelled images train beside its few labels."""

from __future__ import annotations

from aetl_jax.core.config import require
from aetl_jax.strategies.registry import EVERYTHING, STRATEGIES, Strategy


def _check(t) -> None:
  require(t.reconstruction_weight >= 0, "transfer.reconstruction_weight",
          f"must be >= 0, got {t.reconstruction_weight}")
  require(t.unlabelled_ratio > 0, "transfer.unlabelled_ratio",
          f"must be > 0 (unlabelled batch = ratio × labelled batch), got {t.unlabelled_ratio}")


@STRATEGIES.register("joint_finetune", model="autoencoder_classifier", validate=_check,
                     defaults=dict(reconstruction_weight=1.0, unlabelled_ratio=1.0,
                                   reconstruction_loss="bce"))
def joint_finetune(ctx):
  """Fine-tune encoder + head on the labels and the decoder's reconstruction of the
  target pool's images (labels unused), ``reconstruction_weight`` × reconstruction."""
  cfg = ctx.cfg
  ocfg = dict(loss=cfg.reconstruction_loss, reconstruction_weight=cfg.reconstruction_weight)
  unlabelled = max(1, int(round(cfg.unlabelled_ratio * cfg.batch_size)))
  return Strategy(ctx.name, "pretrained", (ctx.phase(
      "joint", EVERYTHING, cfg.epochs, objective="joint", objective_cfg=ocfg,
      batch_sizes={"images": unlabelled}),))
