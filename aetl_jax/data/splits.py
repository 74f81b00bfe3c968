"""Seeded, stratified splits and per-class label budgets.

All functions return index arrays into the dataset they were given, so that
disjointness between source, target, validation and test is checkable.
"""

from __future__ import annotations

import numpy as np


def stratified_split(labels, fraction: float, seed: int):
  """Splits indices into (a, b) with ``fraction`` of every class in ``b``."""
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"split fraction must be in (0, 1), got {fraction}")
  rng = np.random.default_rng(seed)
  a, b = [], []
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    k = int(round(fraction * len(idx)))
    b.append(idx[:k])
    a.append(idx[k:])
  return np.sort(np.concatenate(a)), np.sort(np.concatenate(b))


def subsample(n: int, limit: int, seed: int) -> np.ndarray:
  """Indices of at most ``limit`` of ``n`` examples (0: all), a seeded random subset in order."""
  idx = np.arange(n)
  if limit and limit < n:
    idx = np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))
  return idx


def label_budget(labels, per_class: int, seed: int, *, pool=None, num_classes: int | None = None):
  """Draws exactly ``per_class`` examples of every class from ``pool``.

  Raises ValueError naming the class and its count when one class holds fewer
  examples than the budget.
  """
  if per_class < 1:
    raise ValueError(f"label budget must be >= 1 per class, got {per_class}")
  pool = np.arange(len(labels)) if pool is None else np.asarray(pool)
  classes = np.arange(num_classes) if num_classes is not None else np.unique(labels)
  rng = np.random.default_rng(seed)
  chosen = []
  for c in classes:
    idx = pool[labels[pool] == c]
    if len(idx) < per_class:
      raise ValueError(f"label budget {per_class} per class is larger than class {int(c)} holds "
                       f"({len(idx)} examples available)")
    chosen.append(rng.choice(idx, per_class, replace=False))
  return np.sort(np.concatenate(chosen))


def class_counts(labels, idx, num_classes: int) -> list[int]:
  return np.bincount(labels[idx], minlength=num_classes).tolist()
