"""BitFit (Ben Zaken et al. 2022): only the biases of the pretrained encoder and the head train.

Registered here: this function and its decorator are the whole addition (a built-in is imported
by its package's __init__; your own module is imported by your config file).
"""

from __future__ import annotations

from aetl_jax.core.rules import FROZEN
from aetl_jax.strategies.registry import STRATEGIES, Strategy


@STRATEGIES.register("bitfit")
def bitfit(ctx):
  """Biases of the pretrained encoder + the head train; every other weight is frozen."""
  rules = (("head/.*", 1.0), ("encoder/.*/bias", 1.0), (".*", FROZEN))
  return Strategy(ctx.name, "pretrained", (ctx.phase("bitfit", rules, ctx.cfg.epochs),))
