"""Strategy ``rules``: one phase with the user's own path rules, given in the config.

    --config.transfer.strategies="('rules',)" \\
    --config.transfer.rules="(('encoder/block_0/.*', 'frozen'), ('encoder/.*', 0.1), ('.*', 1.0))"
"""

from __future__ import annotations

import re

from aetl_jax.core.config import require
from aetl_jax.core.rules import FROZEN
from aetl_jax.strategies.registry import STRATEGIES, Strategy
from aetl_jax.core.registry import Key


def check_rule_list(rules, key: str, *, frozen_ok: bool) -> None:
  """Each rule a (regex, value) pair with a valid regex and a valid value."""
  require(isinstance(rules, (tuple, list)), key, f"must be a tuple of (regex, value) pairs, got {rules!r}")
  for rule in rules:
    require(isinstance(rule, (tuple, list)) and len(rule) == 2, key,
            f"each rule must be a (regex, value) pair, got {rule!r}")
    pattern, value = rule
    try:
      re.compile(pattern)
    except (re.error, TypeError) as e:
      require(False, key, f"invalid regex {pattern!r}: {e}")
    ok = (value == FROZEN and frozen_ok) or (
        isinstance(value, (int, float)) and not isinstance(value, bool)
        and (value > 0 if frozen_ok else value >= 0))
    require(ok, key, f"rule {pattern!r} has value {value!r}; valid: "
            + (f"{FROZEN!r} or a positive learning-rate multiplier" if frozen_ok
               else "a weight-decay multiplier >= 0"))


def _check(t) -> None:
  require(len(t.rules) > 0, "transfer.rules", "give at least one (regex, value) rule")
  check_rule_list(t.rules, "transfer.rules", frozen_ok=True)


@STRATEGIES.register("rules", defaults=dict(
    rules=Key(((".*", 1.0),), "your (regex, 'frozen' | lr multiplier) rules of one phase")), validate=_check)
def rules(ctx):
  """One phase of ``transfer.rules``: (regex, 'frozen' | lr multiplier), first match wins."""
  return Strategy(ctx.name, "pretrained",
                  (ctx.phase("rules", tuple(tuple(r) for r in ctx.cfg.rules), ctx.cfg.epochs),))
