"""Semi-supervised strategies: the target's unlabelled images train beside its few labels
(``joint_finetune``: the pretrained autoencoder's reconstruction; ``pseudo_label`` from the
pretrained encoder and ``pseudo_label_scratch`` from a random one: FixMatch-style confident
pseudo-labels for ``semi_epochs`` passes over the pool; ``ladder`` and ``ladder_gamma``: the
Ladder network, Rasmus et al. 2015, trained from scratch; ``propagate_finetune`` and
``propagate_scratch``: labels spread over a graph of the pretrained encoder's codes, then the
classifier trained on every pool image, as Iscen et al. 2019 do with a network's own
features)."""

from __future__ import annotations

import dataclasses

from aetl_jax.core.config import require
from aetl_jax.models.ladder import COMBINATORS, LadderNetwork
from aetl_jax.objectives.augmentation import check_chain
from aetl_jax.objectives.ladder import PAPER_COSTS
from aetl_jax.objectives.reconstruction import RECONSTRUCTION_LOSSES
from aetl_jax.strategies import manifold
from aetl_jax.strategies.registry import EVERYTHING, STRATEGIES, Strategy
from aetl_jax.core.registry import Key, at_least, each, one_of, positive, within


# The target pool's batch beside each labelled batch.
RATIO_KEY = Key(1.0, "target-pool batch = ratio x batch_size", positive())


@STRATEGIES.register("joint_finetune", model="autoencoder_classifier",
                     defaults=dict(
                         reconstruction_weight=Key(1.0, "weight of the reconstruction term beside classification",
                                                   at_least(0)),
                         unlabelled_ratio=RATIO_KEY,
                         reconstruction_loss=Key("bce", "reconstruction loss: bce or mse",
                                                 one_of(*RECONSTRUCTION_LOSSES))))
def joint_finetune(ctx):
  """Fine-tune encoder + head on the labels and the decoder's reconstruction of the
  target pool's images (labels unused), ``reconstruction_weight`` × reconstruction."""
  cfg = ctx.cfg
  ocfg = dict(loss=cfg.reconstruction_loss, reconstruction_weight=cfg.reconstruction_weight)
  unlabelled = max(1, int(round(cfg.unlabelled_ratio * cfg.batch_size)))
  return Strategy(ctx.name, "pretrained", (ctx.phase(
      "joint", EVERYTHING, cfg.epochs, objective="joint", objective_cfg=ocfg,
      batch_sizes={"images": unlabelled}),))


def _check_ladder(t) -> None:
  widths = tuple(t.ladder_widths)
  levels = len(widths) + 2  # the input, every hidden layer, the class layer
  require(len(t.ladder_costs) == levels and all(c >= 0 for c in t.ladder_costs),
          "transfer.ladder_costs", f"must be {levels} weights >= 0 (input, {len(widths)} hidden "
          f"layers, class layer), got {tuple(t.ladder_costs)!r}")


def _ladder_model(variant: str):
  def build(t, num_classes: int, input_shape):
    del input_shape
    return LadderNetwork(widths=tuple(t.ladder_widths), num_classes=num_classes,
                         noise_std=float(t.ladder_noise), combinator=t.ladder_combinator,
                         variant=variant)
  return build


LADDER_DEFAULTS = dict(
    ladder_widths=Key((1000, 500, 250, 250, 250), "hidden widths of the ladder (the class layer follows)",
                      each(positive(integer=True), "positive integers (hidden layers)")),
    ladder_costs=Key(PAPER_COSTS, "denoising cost weight per level: input, every hidden layer, class layer"),
    ladder_noise=Key(0.3, "std of the Gaussian noise of the corrupted pass", at_least(0)),
    ladder_combinator=Key("gauss", "the decoder's combinator: gauss (Rasmus et al.) or amlp (Pezeshki et al.)",
                          one_of(*COMBINATORS)),
    ladder_epochs=Key(150, "passes over the target pool", positive(integer=True)),
    ladder_learning_rate=Key(0.002, "Adam learning rate (constant, then linearly to 0 over the last third)",
                             positive()),
    ladder_batch_size=Key(100, "labelled and unlabelled batch size of one step", positive(integer=True)))


def _ladder(ctx, costs):
  """The ladder's one phase: ``ladder_epochs`` passes over the pool in batches of
  ``ladder_batch_size``, each beside a labelled batch of that size (cycled); Adam at
  ``ladder_learning_rate``, constant, then linearly to 0 over the last third (the paper's
  100 + 50 epochs)."""
  cfg = ctx.cfg
  optim = dataclasses.replace(ctx.optim, learning_rate=float(cfg.ladder_learning_rate),
                              optimizer="adam", schedule="linear_tail", warmup_epochs=0)
  bs = int(cfg.ladder_batch_size)
  return Strategy(ctx.name, "random", (ctx.phase(
      "ladder", EVERYTHING, cfg.ladder_epochs, objective="ladder",
      objective_cfg=dict(denoising_costs=tuple(float(c) for c in costs)),
      roles=("images", "labelled"), batch_sizes={"images": bs, "labelled": bs}, optim=optim,
      min_steps=0),))


@STRATEGIES.register("ladder", model="ladder", validate=_check_ladder, defaults=LADDER_DEFAULTS,
                     unlabelled=True, build_model=_ladder_model("full"))
def ladder(ctx):
  """Ladder network (Rasmus et al. 2015) from a random initialisation: every level denoised."""
  return _ladder(ctx, ctx.cfg.ladder_costs)


@STRATEGIES.register("ladder_gamma", model="ladder", validate=_check_ladder,
                     defaults=LADDER_DEFAULTS, unlabelled=True, build_model=_ladder_model("gamma"))
def ladder_gamma(ctx):
  """The Γ-model: the ladder with the class layer's denoising cost only."""
  costs = tuple(ctx.cfg.ladder_costs)
  return _ladder(ctx, (0.0,) * (len(costs) - 1) + costs[-1:])


def _check_pseudo(t) -> None:
  check_chain(t.weak_augment, "transfer.weak_augment")
  check_chain(t.strong_augment, "transfer.strong_augment")


PSEUDO_DEFAULTS = dict(
    semi_epochs=Key(3, "passes over the target pool", positive(integer=True)),
    pseudo_label_weight=Key(1.0, "weight of the pseudo-label term", at_least(0)),
    confidence=Key(0.95, "a pseudo-label counts when its probability is at least this",
                   within(0, 1, closed="[)")),
    unlabelled_ratio=RATIO_KEY,
    weak_augment=Key((("translate", 0.1),), "augmentation chain of the views pseudo-labels are predicted on"),
    strong_augment=Key((("translate", 0.125), ("rotate", 15), ("cutout", 0.25), ("noise", 0.1)), "augmentation chain of the views they are learned on"))


def _pseudo_label(ctx, init: str):
  cfg = ctx.cfg
  ocfg = dict(weight=float(cfg.pseudo_label_weight), confidence=float(cfg.confidence),
              weak=check_chain(cfg.weak_augment, "transfer.weak_augment"),
              strong=check_chain(cfg.strong_augment, "transfer.strong_augment"))
  unlabelled = max(1, int(round(cfg.unlabelled_ratio * cfg.batch_size)))
  return Strategy(ctx.name, init, (ctx.phase(
      "pseudo_label", EVERYTHING, cfg.semi_epochs, objective="pseudo_label", objective_cfg=ocfg,
      roles=("images", "labelled"), batch_sizes={"images": unlabelled}),))


@STRATEGIES.register("pseudo_label", validate=_check_pseudo, unlabelled=True,
                     defaults=PSEUDO_DEFAULTS)
def pseudo_label(ctx):
  """Fine-tune on the labels + confident pseudo-labels of the pool (FixMatch-style)."""
  return _pseudo_label(ctx, "pretrained")


@STRATEGIES.register("pseudo_label_scratch", validate=_check_pseudo, unlabelled=True,
                     defaults=PSEUDO_DEFAULTS)
def pseudo_label_scratch(ctx):
  """``pseudo_label`` from a random initialisation: what the pretrained encoder adds to it."""
  return _pseudo_label(ctx, "random")


def _check_propagate(t) -> None:
  if "_umap" in str(t.propagate_with):
    manifold._check_umap(t)


PROPAGATE_DEFAULTS = dict(
    manifold.DEFAULTS,
    propagate_with=Key("knn_umap", "the manifold probe whose labels of the pool are trained on",
                       one_of(*manifold.POOL_PROBES)),
    propagate_epochs=Key(10, "passes over the relabelled target pool", positive(integer=True)),
    propagate_batch_size=Key(128, "batch size over the relabelled pool", positive(integer=True)))


def _propagate(ctx, init: str):
  """One phase over the whole pool, each image with the label ``propagate_with`` gave it on
  the pretrained encoder's codes (the labelled images keep theirs): every parameter trains
  for ``propagate_epochs`` passes in batches of ``propagate_batch_size``."""
  cfg = ctx.cfg
  bs = int(cfg.propagate_batch_size)
  return Strategy(ctx.name, init, (ctx.phase(
      "propagated", EVERYTHING, cfg.propagate_epochs, batch_sizes={"labelled": bs}),),
                  labels_from=str(cfg.propagate_with))


@STRATEGIES.register("propagate_finetune", validate=_check_propagate, unlabelled=True,
                     defaults=PROPAGATE_DEFAULTS)
def propagate_finetune(ctx):
  """Fine-tune the pretrained encoder + a head on the pool labelled by a manifold probe."""
  return _propagate(ctx, "pretrained")


@STRATEGIES.register("propagate_scratch", validate=_check_propagate, unlabelled=True,
                     defaults=PROPAGATE_DEFAULTS)
def propagate_scratch(ctx):
  """``propagate_finetune`` from a random initialisation (the labels still come from the
  pretrained encoder's codes): what the pretrained weights add beyond the graph."""
  return _propagate(ctx, "random")
