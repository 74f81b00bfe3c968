"""Strategies that use more than the target's labels: the source classifier as it is and
domain adaptation with the labelled source.

``source_only`` evaluates the classifier pretrained on the labelled source (encoder and
head from the checkpoint) on the target without training: at budget 0 it is the source-only
baseline. ``drcn``, ``dann``, ``coral``, ``mmd`` and ``adda`` train on the labelled source
and the target pool's images (and the target labels when the budget is above 0); one step
reads a source batch of ``batch_size`` and a target batch of ``unlabelled_ratio`` ×
``batch_size`` (1.0: balanced domains). Their length is ``adaptation_epochs`` passes over
the source, or at least ``adaptation_steps`` optimiser steps.

* ``dann`` as published (Ganin & Lempitsky 2015; Ganin et al. 2016, JMLR): the gradient-
  reversal weight ramped 2/(1+exp(-10p))-1 over training progress p (times
  ``adaptation_weight``), SGD with momentum 0.9 at ``dann_learning_rate`` annealed
  μ0/(1+10p)^0.75, a domain classifier of ``domain_hidden`` units (the paper's 100 for
  digits) on the encoder's codes.
* ``adda`` (Tzeng et al. 2017) as its code (github.com/erictzeng/adda) runs it: the target
  network (encoder and classifier layer) starts as the source classifier and plays a
  two-player game (:class:`aetl_jax.engine.phase.Adversary`) against a discriminator of
  ``adda_discriminator`` units (the paper's 500-500): the discriminator learns to tell the
  frozen source network's outputs (``source_encoder`` + ``source_head``) from the target
  network's, the target network learns to fool it (inverted labels), both updated at the same
  parameters; Adam at ``adda_learning_rate`` with β1 = 0.5, for ``adda_steps``. The paper's
  text instead maps the encoder's codes and keeps the source head
  (``adda_features='codes'``, with ``adda_order='alternating'`` the discriminator first): 3-6
  points lower on MNIST ↔ USPS here (experiments/digits_adaptation.py).
"""

from __future__ import annotations

import dataclasses

from aetl_jax.core.rules import FROZEN
from aetl_jax.engine.phase import Adversary
from aetl_jax.engine.step import ORDERS
from aetl_jax.models.autoencoder import ADDA_FEATURES
from aetl_jax.strategies.registry import EVERYTHING, STRATEGIES, Strategy, objective_loss
from aetl_jax.core.registry import Check, Key, at_least, count, each, one_of, positive

WIDTHS = Check(lambda v: (isinstance(v, int) and not isinstance(v, bool) and v > 0)
               or (isinstance(v, (tuple, list)) and len(v) > 0
                   and all(isinstance(h, int) and h > 0 for h in v)),
               lambda v: f"must be a positive integer or a tuple of them (hidden widths of the "
                         f"domain classifier), got {v!r}")

ADAPTATION_DEFAULTS = dict(
    adaptation_epochs=Key(5, "passes over the source", positive(integer=True)),
    adaptation_steps=Key(0, "at least this many optimiser steps (0: adaptation_epochs alone)",
                         count(0)),
    adaptation_weight=Key(1.0, "weight of the unsupervised alignment term", at_least(0)),
    unlabelled_ratio=Key(1.0, "target-pool batch = ratio x batch_size", positive()),
    domain_hidden=Key(100, "hidden width(s) of DANN's domain classifier", WIDTHS),
    dann_learning_rate=Key(0.01, "DANN's initial SGD learning rate (annealed lr/(1+10p)^0.75)",
                           positive()))


@STRATEGIES.register("source_only", needs_target_labels=False, needs_source_labels=True,
                     init="source")
def source_only(ctx):
  """The classifier trained on the labelled source, evaluated on the target as it is."""
  return Strategy(ctx.name, "source", ())


def _roles(ctx) -> tuple[str, ...]:
  return ("source", "images") + (("labelled",) if ctx.budget else ())


def _length(cfg) -> dict:
  return dict(min_steps=max(int(cfg.adaptation_steps), int(cfg.get("min_steps", 0))))


def _adaptation(objective: str, doc: str, model: str = "classifier"):
  def strategy(ctx):
    cfg = ctx.cfg
    ocfg = dict(weight=float(cfg.adaptation_weight))
    if objective == "drcn":
      ocfg["loss"] = cfg.get("reconstruction_loss", "bce")
    return Strategy(ctx.name, "pretrained", (ctx.phase(
        objective, EVERYTHING, cfg.adaptation_epochs, objective=objective, objective_cfg=ocfg,
        roles=_roles(ctx), batch_sizes={"images": _unlabelled_batch(cfg)}, **_length(cfg)),))

  strategy.__doc__ = doc
  STRATEGIES.register(objective, model=model, defaults=ADAPTATION_DEFAULTS, needs_target_labels=False,
                      needs_source_labels=True, unlabelled=True)(strategy)
  return strategy


def _unlabelled_batch(cfg) -> int:
  return max(1, int(round(cfg.unlabelled_ratio * cfg.batch_size)))


drcn = _adaptation("drcn", "DRCN: source classification + target reconstruction, shared encoder.",
                   model="autoencoder_classifier")
coral = _adaptation("coral", "CORAL: source classification + alignment of code covariances.")
mmd = _adaptation("mmd", "MMD: source classification + RBF-kernel MMD between domain codes.")


@STRATEGIES.register("dann", model="domain_classifier", defaults=ADAPTATION_DEFAULTS, needs_target_labels=False,
                     needs_source_labels=True, unlabelled=True)
def dann(ctx):
  """DANN as published: ramped gradient reversal, SGD + momentum with the annealed rate."""
  cfg = ctx.cfg
  optim = dataclasses.replace(ctx.optim, optimizer="sgd", learning_rate=float(cfg.dann_learning_rate),
                              momentum=0.9, nesterov=False, schedule="inverse_power",
                              warmup_epochs=0)
  phase = ctx.phase("dann", EVERYTHING, cfg.adaptation_epochs, objective="dann",
                    objective_cfg=dict(weight=float(cfg.adaptation_weight), ramp=True),
                    roles=_roles(ctx), batch_sizes={"images": _unlabelled_batch(cfg)},
                    optim=optim, **_length(cfg))
  return Strategy(ctx.name, "pretrained", (dataclasses.replace(phase, progress=True),))


@STRATEGIES.register("adda", model="adda", needs_target_labels=False,
                     needs_source_labels=True, unlabelled=True, init="source",
                     defaults={
                         **ADAPTATION_DEFAULTS,
                         "adda_discriminator": Key((500, 500), "hidden widths of ADDA's discriminator",
                                                   each(positive(integer=True), "positive integers (hidden widths)")),
                         "adda_learning_rate": Key(2e-4, "Adam learning rate of ADDA's encoder and discriminator (beta1 0.5)",
                                                   positive()),
                         "adda_steps": Key(10_000, "optimiser steps of ADDA's adversarial phase",
                                           positive(integer=True)),
                         "adda_features": Key("logits", "what the discriminator reads: the classifiers' logits "
                                              "(the paper's code; the target head trains too) or the encoders' codes "
                                              "(the paper's text)", one_of(*ADDA_FEATURES)),
                         "adda_order": Key("simultaneous", "both players' updates at the same parameters (the "
                                           "paper's code), or the discriminator first and the encoder against it "
                                           "(alternating)", one_of(*ORDERS))})
def adda(ctx):
  """ADDA: the target network mapped onto the frozen source network's outputs by a GAN game."""
  cfg = ctx.cfg
  optim = dataclasses.replace(ctx.optim, optimizer="adam", learning_rate=float(cfg.adda_learning_rate),
                              beta1=0.5, schedule="constant", warmup_epochs=0, weight_decay=0.0)
  discriminator = Adversary(objective_loss("adda_discriminator", ctx.model)[0],
                            (("domain/.*", 1.0), (".*", FROZEN)), optim,
                            order=cfg.adda_order)
  logits = cfg.adda_features == "logits"
  player = (("encoder/.*", 1.0),) + ((("head/.*", 1.0),) if logits else ()) + ((".*", FROZEN),)
  phase = ctx.phase("adda", player, 1, objective="adda_target",
                    roles=_roles(ctx), batch_sizes={"images": _unlabelled_batch(cfg)},
                    optim=optim, min_steps=int(cfg.adda_steps))
  copies = {"source_encoder": "encoder", **({"source_head": "head"} if logits else {})}
  return Strategy(ctx.name, "source", (dataclasses.replace(phase, adversary=discriminator),),
                  start=lambda p: {**p, **{k: p[v] for k, v in copies.items()}})
