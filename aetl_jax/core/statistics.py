"""BatchNorm running statistics inside a parameter tree.

A model with BatchNorm keeps its running statistics as leaves named
``running_mean`` / ``running_var`` beside the module's ``scale`` and ``bias``
(torchvision's names), so path rules, checkpoints, vmapped seeds and the
encoder transplant treat a block's statistics together with its weights: a rule
that freezes ``encoder/layer1/.*`` freezes both.

Statistics are never differentiated. The train step hands the loss the
statistics of *frozen* modules renamed ``frozen_running_*`` (see
:func:`mark_frozen`), which tells their BatchNorm to normalise with them
(inference mode); the other modules normalise with the batch's statistics and
the loss reports their updated running averages (``aux['batch_stats']``), which
the step writes back with :func:`merge_updates`.
"""

from __future__ import annotations

import jax

from aetl_jax.core.rules import path_str

RUNNING = ("running_mean", "running_var")
FROZEN_PREFIX = "frozen_"


def is_statistic(path: str) -> bool:
  return path.rsplit("/", 1)[-1] in RUNNING


def statistics_mask(tree):
  """A bool tree: True at running-statistics leaves."""
  return jax.tree_util.tree_map_with_path(lambda p, _: is_statistic(path_str(p)), tree)


def has_statistics(tree) -> bool:
  return any(jax.tree.leaves(statistics_mask(tree)))


def mark_frozen(tree, trainable):
  """``tree`` with the statistics whose ``trainable`` leaf is False renamed ``frozen_*``."""
  if not isinstance(tree, dict):
    return tree
  return {(FROZEN_PREFIX + k if k in RUNNING and not trainable[k] else k):
          mark_frozen(v, trainable[k]) for k, v in tree.items()}


def merge_updates(tree, updates):
  """``tree`` with the leaves of the nested dict ``updates`` (same paths) replaced."""
  if not isinstance(updates, dict):
    return updates
  out = dict(tree)
  for k, v in updates.items():
    if k not in tree:
      raise KeyError(f"statistics update for {k!r}, which the tree does not hold")
    out[k] = merge_updates(tree[k], v)
  return out
