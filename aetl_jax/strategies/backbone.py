"""Strategies for pretrained backbones (e.g. torchvision's ResNet-18).

frozen_backbone  the classic recipe: freeze the backbone, train a new N-class head with SGD
                 (momentum 0.9, learning rate 1e-3), then fine-tune everything
backbone_ae      the backbone becomes an autoencoder's encoder: encoder + a new decoder
                 reconstruct the target's unlabelled images, then encoder + head fine-tune

Both work with any family; with BatchNorm, frozen blocks normalise with their running
statistics and trainable ones update them (see :mod:`aetl_jax.core.statistics`).
"""

from __future__ import annotations

import dataclasses

from aetl_jax.objectives.reconstruction import RECONSTRUCTION_LOSSES
from aetl_jax.core.rules import FROZEN
from aetl_jax.strategies.registry import EVERYTHING, HEAD_ONLY, STRATEGIES, Strategy
from aetl_jax.core.registry import Key, count, one_of, positive, within


@STRATEGIES.register("frozen_backbone",
                     defaults=dict(
                         recipe_lr=Key(1e-3, "learning rate of the new head on the frozen backbone (SGD)",
                                       positive()),
                         recipe_momentum=Key(0.9, "SGD momentum of both phases", within(0, 1, closed="[)")),
                         recipe_ft_lr=Key(1e-4, "learning rate when everything fine-tunes afterwards",
                                          positive()),
                         recipe_ft_epochs=Key(10, "epochs of that fine-tuning (0: the head alone)",
                                              count(0, " (0: no fine-tuning)"))))
def frozen_backbone(ctx):
  """Frozen backbone + new head by SGD (``recipe_momentum``, ``recipe_lr``; plain momentum,
  as torch's SGD) for ``transfer.epochs``, then everything at ``recipe_ft_lr`` for
  ``recipe_ft_epochs``; constant learning rates, the ``transfer`` section's weight decay."""
  cfg = ctx.cfg
  sgd = dataclasses.replace(ctx.optim, optimizer="sgd", learning_rate=float(cfg.recipe_lr),
                            momentum=float(cfg.recipe_momentum), nesterov=False,
                            schedule="constant", warmup_epochs=0)
  phases = [ctx.phase("head", HEAD_ONLY, cfg.epochs, optim=sgd)]
  if cfg.recipe_ft_epochs:
    ft = dataclasses.replace(sgd, learning_rate=float(cfg.recipe_ft_lr))
    phases.append(ctx.phase("finetune", EVERYTHING, cfg.recipe_ft_epochs, optim=ft))
  return Strategy(ctx.name, "pretrained", tuple(phases))


@STRATEGIES.register("backbone_ae", model="autoencoder_classifier",
                     defaults=dict(
                         ae_epochs=Key(20, "epochs the new decoder reconstructs the target pool (head frozen)",
                                       positive(integer=True)),
                         ae_lr_mult=Key(1.0, "learning-rate multiplier of that reconstruction phase",
                                        positive()),
                         ae_loss=Key("bce", "its reconstruction loss: bce or mse",
                                     one_of(*RECONSTRUCTION_LOSSES))))
def backbone_ae(ctx):
  """The pretrained encoder + a new decoder reconstruct the target's unlabelled images
  (``ae_epochs``, ``ae_lr_mult`` × lr, head frozen), then encoder + head fine-tune
  (decoder frozen) for ``transfer.epochs``."""
  cfg = ctx.cfg
  reconstruct = ctx.phase("reconstruct", (("head/.*", FROZEN), (".*", 1.0)), cfg.ae_epochs,
                          objective="reconstruction", objective_cfg=dict(loss=cfg.ae_loss),
                          lr_mult=cfg.ae_lr_mult)
  finetune = ctx.phase("finetune", (("decoder/.*", FROZEN), (".*", 1.0)), cfg.epochs)
  return Strategy(ctx.name, "pretrained", (reconstruct, finetune))
