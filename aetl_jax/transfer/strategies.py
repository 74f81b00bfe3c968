"""Transfer strategies as data: phases of (freeze/lr rules, epochs).

Every strategy is built from the same path rules, so adding one is writing a
function that returns phases. Encoder blocks are ``encoder/block_<i>``
ordered from input (0) to code (L-1).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

from aetl_jax.transfer.rules import FROZEN, Rule


@dataclasses.dataclass(frozen=True)
class Phase:
  name: str
  rules: tuple[Rule, ...]
  epochs: int


@dataclasses.dataclass(frozen=True)
class Strategy:
  """``init`` is 'pretrained' (encoder from the checkpoint) or 'random'.

  A strategy either trains through ``phases`` or fits a closed-form ``probe``
  ('ridge' or 'knn') on frozen features.
  """

  name: str
  init: str
  phases: tuple[Phase, ...] = ()
  probe: str | None = None


HEAD_ONLY: tuple[Rule, ...] = (("encoder/.*", FROZEN), ("head/.*", 1.0))
EVERYTHING: tuple[Rule, ...] = ((".*", 1.0),)


def encoder_blocks(encoder_params) -> list[str]:
  """Block names of an encoder subtree, input to output (natural sort)."""
  def key(name):
    m = re.fullmatch(r"block_(\d+)", name)
    if not m:
      raise ValueError(f"encoder child {name!r} is not named block_<i>; "
                       "block-wise strategies need block_<i> names")
    return int(m.group(1))
  return sorted(encoder_params, key=key)


def _block_rule(blocks: Sequence[str], value) -> Rule:
  return ("encoder/(" + "|".join(re.escape(b) for b in blocks) + ")/.*", value)


def _partial(cfg, blocks):
  if cfg.partial_freeze_regex:
    return (Phase("partial", ((cfg.partial_freeze_regex, FROZEN), (".*", 1.0)), cfg.epochs),)
  k = cfg.partial_freeze_blocks
  if not 1 <= k < len(blocks):
    raise ValueError(f"transfer.partial_freeze_blocks={k} must be in [1, {len(blocks) - 1}] for an "
                     f"encoder with {len(blocks)} blocks ({', '.join(blocks)})")
  return (Phase("partial", (_block_rule(blocks[:k], FROZEN), (".*", 1.0)), cfg.epochs),)


def _layerwise(cfg, blocks):
  decay = cfg.layer_decay
  if not 0.0 < decay <= 1.0:
    raise ValueError(f"transfer.layer_decay must be in (0, 1], got {decay}")
  depth = len(blocks)
  rules = tuple((f"encoder/{re.escape(b)}/.*", decay ** (depth - i)) for i, b in enumerate(blocks))
  return (Phase("layerwise", rules + (("head/.*", 1.0),), cfg.epochs),)


def _gradual(cfg, blocks):
  phases = [Phase("unfreeze_0", HEAD_ONLY, cfg.unfreeze_epochs)]
  for n in range(1, len(blocks) + 1):
    frozen = blocks[: len(blocks) - n]
    rules = ((_block_rule(frozen, FROZEN),) if frozen else ()) + ((".*", 1.0),)
    phases.append(Phase(f"unfreeze_{n}", rules, cfg.unfreeze_epochs))
  return tuple(phases)


def build_strategy(name: str, cfg, encoder_params) -> Strategy:
  """Builds strategy ``name`` from the transfer config and the encoder tree."""
  blocks = encoder_blocks(encoder_params)
  if name == "scratch":
    return Strategy(name, "random", (Phase("train", EVERYTHING, cfg.epochs),))
  if name == "finetune":
    return Strategy(name, "pretrained", (Phase("finetune", EVERYTHING, cfg.epochs),))
  if name == "linear_probe":
    return Strategy(name, "pretrained", (Phase("probe", HEAD_ONLY, cfg.epochs),))
  if name == "partial":
    return Strategy(name, "pretrained", _partial(cfg, blocks))
  if name == "discriminative":
    if cfg.encoder_lr_mult <= 0:
      raise ValueError(f"transfer.encoder_lr_mult must be > 0 (freeze with 'frozen'), got "
                       f"{cfg.encoder_lr_mult}")
    rules = (("encoder/.*", cfg.encoder_lr_mult), ("head/.*", 1.0))
    return Strategy(name, "pretrained", (Phase("discriminative", rules, cfg.epochs),))
  if name == "layerwise":
    return Strategy(name, "pretrained", _layerwise(cfg, blocks))
  if name == "lp_ft":
    if cfg.lp_epochs < 1:
      raise ValueError("lp_ft needs a probe phase: set transfer.lp_epochs >= 1")
    ft_rules = ((".*", cfg.ft_lr_mult),)
    return Strategy(name, "pretrained", (Phase("probe", HEAD_ONLY, cfg.lp_epochs),
                                         Phase("finetune", ft_rules, cfg.epochs)))
  if name == "gradual_unfreeze":
    if cfg.unfreeze_epochs < 1:
      raise ValueError("gradual_unfreeze needs transfer.unfreeze_epochs >= 1")
    return Strategy(name, "pretrained", _gradual(cfg, blocks))
  if name == "ridge_probe":
    return Strategy(name, "pretrained", probe="ridge")
  if name == "knn_probe":
    return Strategy(name, "pretrained", probe="knn")
  raise ValueError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")


STRATEGIES = ("scratch", "linear_probe", "finetune", "partial", "discriminative", "layerwise",
              "lp_ft", "gradual_unfreeze", "ridge_probe", "knn_probe")
