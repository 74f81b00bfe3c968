"""Strategies that use more than the target's labels: the source classifier as it is,
domain adaptation with the labelled source, and semi-supervised pseudo-labels.

``source_only`` evaluates the classifier pretrained on the labelled source
(encoder and head from the checkpoint) on the target without training: at
budget 0 it is the source-only baseline. ``drcn``, ``dann``, ``coral`` and
``mmd`` train on the labelled source and the target pool's images (and the
target labels when the budget is above 0) for ``adaptation_epochs`` passes
over the source; ``pseudo_label`` trains on the target labels and the pool's
images for ``semi_epochs`` passes over the pool. Their unsupervised term is
weighted by ``adaptation_weight`` / ``pseudo_label_weight``; the pool batch
is ``unlabelled_ratio`` × ``batch_size``.
"""

from __future__ import annotations

from aetl_jax.core.config import require
from aetl_jax.objectives.augmentation import check_chain
from aetl_jax.strategies.registry import EVERYTHING, STRATEGIES, Strategy, positive

ADAPTATION_DEFAULTS = dict(adaptation_epochs=5, adaptation_weight=1.0, unlabelled_ratio=1.0,
                           domain_hidden=64)


@STRATEGIES.register("source_only", needs_target_labels=False, needs_source_labels=True,
                     init="source")
def source_only(ctx):
  """The classifier trained on the labelled source, evaluated on the target as it is."""
  return Strategy(ctx.name, "source", ())


def _check_adaptation(t) -> None:
  positive(t, "adaptation_epochs", integer=True)
  positive(t, "unlabelled_ratio")
  positive(t, "domain_hidden", integer=True)
  require(t.adaptation_weight >= 0, "transfer.adaptation_weight",
          f"must be >= 0, got {t.adaptation_weight}")


def _adaptation(objective: str, doc: str, model: str = "classifier"):
  def strategy(ctx):
    cfg = ctx.cfg
    roles = ("source", "images") + (("labelled",) if ctx.budget else ())
    ocfg = dict(weight=float(cfg.adaptation_weight))
    if objective == "drcn":
      ocfg["loss"] = cfg.get("reconstruction_loss", "bce")
    return Strategy(ctx.name, "pretrained", (ctx.phase(
        objective, EVERYTHING, cfg.adaptation_epochs, objective=objective, objective_cfg=ocfg,
        roles=roles, batch_sizes={"images": _unlabelled_batch(cfg)}),))

  strategy.__doc__ = doc
  STRATEGIES.register(objective, model=model, validate=_check_adaptation,
                      defaults=ADAPTATION_DEFAULTS, needs_target_labels=False,
                      needs_source_labels=True, unlabelled=True)(strategy)
  return strategy


def _unlabelled_batch(cfg) -> int:
  return max(1, int(round(cfg.unlabelled_ratio * cfg.batch_size)))


drcn = _adaptation("drcn", "DRCN: source classification + target reconstruction, shared encoder.",
                   model="autoencoder_classifier")
dann = _adaptation("dann", "DANN: source classification + a gradient-reversed domain classifier.",
                   model="domain_classifier")
coral = _adaptation("coral", "CORAL: source classification + alignment of code covariances.")
mmd = _adaptation("mmd", "MMD: source classification + RBF-kernel MMD between domain codes.")


def _check_pseudo(t) -> None:
  positive(t, "semi_epochs", integer=True)
  positive(t, "unlabelled_ratio")
  require(t.pseudo_label_weight >= 0, "transfer.pseudo_label_weight",
          f"must be >= 0, got {t.pseudo_label_weight}")
  require(0 <= t.confidence < 1, "transfer.confidence", f"must be in [0, 1), got {t.confidence}")
  check_chain(t.weak_augment, "transfer.weak_augment")
  check_chain(t.strong_augment, "transfer.strong_augment")


@STRATEGIES.register("pseudo_label", validate=_check_pseudo, unlabelled=True,
                     defaults=dict(semi_epochs=3, pseudo_label_weight=1.0, confidence=0.95,
                                   unlabelled_ratio=1.0, weak_augment=(("translate", 0.1),),
                                   strong_augment=(("translate", 0.125), ("rotate", 15),
                                                   ("cutout", 0.25), ("noise", 0.1))))
def pseudo_label(ctx):
  """Fine-tune on the labels + confident pseudo-labels of the pool (FixMatch-style)."""
  cfg = ctx.cfg
  ocfg = dict(weight=float(cfg.pseudo_label_weight), confidence=float(cfg.confidence),
              weak=check_chain(cfg.weak_augment, "transfer.weak_augment"),
              strong=check_chain(cfg.strong_augment, "transfer.strong_augment"))
  return Strategy(ctx.name, "pretrained", (ctx.phase(
      "pseudo_label", EVERYTHING, cfg.semi_epochs, objective="pseudo_label", objective_cfg=ocfg,
      roles=("images", "labelled"), batch_sizes={"images": _unlabelled_batch(cfg)}),))
