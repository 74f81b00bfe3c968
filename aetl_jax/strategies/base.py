"""The classic transfer strategies, each one registered function of path rules.

Encoder blocks are ``encoder/block_<i>`` ordered from input (0) to code (L-1).
"""

from __future__ import annotations

import re

from aetl_jax.core.config import require
from aetl_jax.core.rules import FROZEN
from aetl_jax.strategies.registry import EVERYTHING, HEAD_ONLY, STRATEGIES, Strategy, block_rule
from aetl_jax.core.registry import Key, count, positive, within


@STRATEGIES.register("scratch")
def scratch(ctx):
  """Everything trains from a random initialisation."""
  return Strategy(ctx.name, "random", (ctx.phase("train", EVERYTHING, ctx.cfg.epochs),))


@STRATEGIES.register("finetune")
def finetune(ctx):
  """Everything trains, starting from the pretrained encoder."""
  return Strategy(ctx.name, "pretrained", (ctx.phase("finetune", EVERYTHING, ctx.cfg.epochs),))


@STRATEGIES.register("linear_probe")
def linear_probe(ctx):
  """The head alone, on cached features of the frozen pretrained encoder."""
  return Strategy(ctx.name, "pretrained", (ctx.phase("probe", HEAD_ONLY, ctx.cfg.epochs),))


def _check_partial(t) -> None:
  if t.partial_freeze_regex:
    try:
      re.compile(t.partial_freeze_regex)
    except re.error as e:
      require(False, "transfer.partial_freeze_regex", f"invalid regex {t.partial_freeze_regex!r}: {e}")


@STRATEGIES.register("partial", defaults=dict(
    partial_freeze_blocks=Key(1, "how many encoder blocks, from the input, stay frozen", count(1)),
    partial_freeze_regex=Key("", "or: a regex of the parameter paths that stay frozen")),
                     validate=_check_partial)
def partial(ctx):
  """All but the first ``partial_freeze_blocks`` encoder blocks (or ``partial_freeze_regex``)."""
  cfg, blocks = ctx.cfg, ctx.blocks()
  if cfg.partial_freeze_regex:
    return Strategy(ctx.name, "pretrained", (ctx.phase(
        "partial", ((cfg.partial_freeze_regex, FROZEN), (".*", 1.0)), cfg.epochs),))
  k = cfg.partial_freeze_blocks
  if not 1 <= k < len(blocks):
    raise ValueError(f"transfer.partial_freeze_blocks={k} must be in [1, {len(blocks) - 1}] for an "
                     f"encoder with {len(blocks)} blocks ({', '.join(blocks)})")
  return Strategy(ctx.name, "pretrained", (ctx.phase(
      "partial", (block_rule(blocks[:k], FROZEN), (".*", 1.0)), cfg.epochs),))


@STRATEGIES.register("discriminative", defaults=dict(
    encoder_lr_mult=Key(0.1, "the encoder's learning rate as a multiple of the head's",
                        positive())))
def discriminative(ctx):
  """Everything trains; the encoder at ``encoder_lr_mult`` × the learning rate."""
  rules = (("encoder/.*", ctx.cfg.encoder_lr_mult), ("head/.*", 1.0))
  return Strategy(ctx.name, "pretrained", (ctx.phase("discriminative", rules, ctx.cfg.epochs),))


@STRATEGIES.register("layerwise", defaults=dict(
    layer_decay=Key(0.5, "block i of L trains at layer_decay^(L-i) x the learning rate",
                    within(0, 1, closed="(]"))))
def layerwise(ctx):
  """Block i of L trains at ``layer_decay``^(L−i) × the learning rate."""
  blocks, decay = ctx.blocks(), ctx.cfg.layer_decay
  rules = tuple((f"encoder/{re.escape(b)}/.*", decay ** (len(blocks) - i))
                for i, b in enumerate(blocks))
  return Strategy(ctx.name, "pretrained",
                  (ctx.phase("layerwise", rules + (("head/.*", 1.0),), ctx.cfg.epochs),))


@STRATEGIES.register("lp_ft", defaults=dict(
    lp_epochs=Key(50, "epochs of the linear probe before fine-tuning", positive(integer=True)),
    ft_lr_mult=Key(0.3, "fine-tuning's learning rate as a multiple of transfer.learning_rate",
                   positive())))
def lp_ft(ctx):
  """Linear probe for ``lp_epochs``, then fine-tune at ``ft_lr_mult`` × lr (Kumar et al. 2022)."""
  cfg = ctx.cfg
  return Strategy(ctx.name, "pretrained", (
      ctx.phase("probe", HEAD_ONLY, cfg.lp_epochs),
      ctx.phase("finetune", ((".*", cfg.ft_lr_mult),), cfg.epochs)))


@STRATEGIES.register("gradual_unfreeze", defaults=dict(
    unfreeze_epochs=Key(25, "epochs per phase; one more encoder block unfreezes per phase",
                        positive(integer=True))))
def gradual_unfreeze(ctx):
  """The head, then one more encoder block per phase, top down, ``unfreeze_epochs`` each."""
  blocks, epochs = ctx.blocks(), ctx.cfg.unfreeze_epochs
  share = ctx.cfg.get("min_steps", 0) // (len(blocks) + 1)  # transfer.min_steps over all phases
  phases = [ctx.phase("unfreeze_0", HEAD_ONLY, epochs, min_steps=share)]
  for n in range(1, len(blocks) + 1):
    frozen = blocks[: len(blocks) - n]
    rules = ((block_rule(frozen, FROZEN),) if frozen else ()) + ((".*", 1.0),)
    phases.append(ctx.phase(f"unfreeze_{n}", rules, epochs, min_steps=share))
  return Strategy(ctx.name, "pretrained", tuple(phases))
