"""Regex rules over '/'-joined parameter paths (big_vision style).

A rule list is a sequence of ``(regex, value)`` pairs. Each leaf takes the
value of the first rule whose regex *fully* matches its path
(``encoder/block_0/kernel``). One mechanism answers every per-leaf question
transfer asks: is it frozen, what learning-rate or weight-decay multiplier does
it get, is it re-initialised instead of loaded.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Sequence

import jax

Rule = tuple[str, Any]
FROZEN = "frozen"

log = logging.getLogger(__name__)


def path_str(path) -> str:
  """'/'-joins a jax key path (DictKey, GetAttrKey, SequenceKey ...)."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def tree_paths(tree) -> list[str]:
  """All leaf paths of ``tree`` in flattening order."""
  return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def match_rules(tree, rules: Sequence[Rule], *, what: str = "rules",
                allow_uncovered: bool = False, default: Any = None):
  """Returns a tree shaped like ``tree`` holding each leaf's rule value.

  Raises ValueError listing every uncovered leaf (unless ``allow_uncovered``,
  then they get ``default``), and logs a warning for each rule that matched
  nothing: a silent typo in a regex is how a "frozen" encoder ends up training.
  """
  compiled = []
  for rule in rules:
    if not (isinstance(rule, (tuple, list)) and len(rule) == 2):
      raise ValueError(f"{what}: each rule must be a (regex, value) pair, got {rule!r}")
    pattern, value = rule
    try:
      compiled.append((pattern, re.compile(pattern), value))
    except re.error as e:
      raise ValueError(f"{what}: invalid regex {pattern!r}: {e}") from None
  used = [False] * len(compiled)
  uncovered = []

  def value_for(path, _leaf):
    name = path_str(path)
    for i, (_, regex, value) in enumerate(compiled):
      if regex.fullmatch(name):
        used[i] = True
        return value
    uncovered.append(name)
    return default

  values = jax.tree_util.tree_map_with_path(value_for, tree)
  if uncovered and not allow_uncovered:
    raise ValueError(
        f"{what}: {len(uncovered)} parameter(s) matched by no rule: "
        + ", ".join(uncovered)
        + ". Add a rule (e.g. ('.*', ...)) that covers them.")
  for (pattern, _, _), hit in zip(compiled, used):
    if not hit:
      log.warning("%s: rule %r matched no parameter", what, pattern)
  return values


def _valid(pattern) -> bool:
  try:
    re.compile(pattern)
    return True
  except (re.error, TypeError):
    return False


def freeze_and_multipliers(tree, rules: Sequence[Rule]):
  """(bool trainable mask, float learning-rate multipliers) from one rule match.

  Every non-frozen value must be a positive learning-rate multiplier; 0 or a
  negative number is refused because freezing must be said explicitly.
  Frozen leaves get multiplier 0.0.
  """
  paths = tree_paths(tree)
  for rule in rules:
    pattern, value = rule if isinstance(rule, (tuple, list)) and len(rule) == 2 else (None, None)
    if value == FROZEN and _valid(pattern) and not any(re.fullmatch(pattern, p) for p in paths):
      # The leaves it was meant to freeze would silently train.
      raise ValueError(f"freeze rule {pattern!r} matches no parameter, so nothing it names would "
                       f"be frozen; parameters are named like {', '.join(paths[:3])} ...")
  values = match_rules(tree, rules, what="freeze/lr rules")

  def multiplier(path, v):
    if v == FROZEN:
      return 0.0
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
      raise ValueError(
          f"freeze/lr rules: leaf {path_str(path)!r} got value {v!r}; valid values are "
          f"{FROZEN!r} or a positive learning-rate multiplier (freeze with {FROZEN!r}, not 0)")
    return float(v)

  mults = jax.tree_util.tree_map_with_path(multiplier, values)
  return jax.tree.map(lambda m: m > 0.0, mults), mults


def trainable_mask(tree, rules: Sequence[Rule]):
  """Bool tree: True where the leaf trains, False where it is ``'frozen'``."""
  return freeze_and_multipliers(tree, rules)[0]


def lr_multipliers(tree, rules: Sequence[Rule]):
  """Float tree of learning-rate multipliers (frozen leaves get 0.0)."""
  return freeze_and_multipliers(tree, rules)[1]


def weight_decay_multipliers(tree, rules: Sequence[Rule]):
  """Float tree of weight-decay multipliers; leaves no rule names keep 1.0."""
  values = match_rules(tree, rules, what="weight-decay rules", allow_uncovered=True, default=1.0)

  def check(path, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
      raise ValueError(f"weight-decay rules: leaf {path_str(path)!r} got value {v!r}; valid "
                       f"values are numbers >= 0 (0: no decay)")
    return float(v)

  return jax.tree_util.tree_map_with_path(check, values)


def reinit_paths(tree, patterns: Sequence[str]) -> list[str]:
  """Paths named by re-initialisation patterns (they keep their fresh init)."""
  if not patterns:
    return []
  values = match_rules(tree, [(p, True) for p in patterns], what="reinit rules",
                       allow_uncovered=True, default=False)
  return [path_str(p) for p, v in jax.tree_util.tree_flatten_with_path(values)[0] if v]


def split_by_mask(tree, mask):
  """Splits ``tree`` into (selected, rest); unselected slots hold None.

  None is an empty subtree to JAX, so gradients, optimiser state and updates of
  the selected part never touch the rest.
  """
  selected = jax.tree.map(lambda x, m: x if m else None, tree, mask)
  rest = jax.tree.map(lambda x, m: None if m else x, tree, mask)
  return selected, rest


def merge_split(selected, rest):
  """Inverse of :func:`split_by_mask`."""
  return jax.tree.map(lambda a, b: b if a is None else a, selected, rest,
                      is_leaf=lambda x: x is None)
