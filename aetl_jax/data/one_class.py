"""The one-class protocol's splits: train on one normal class, score everything.

Every function returns index arrays into the labels it was given.
"""

from __future__ import annotations

import numpy as np


def check_normal_classes(labels, normal, dataset: str = "the dataset") -> tuple[int, ...]:
  """``normal`` as a tuple (every class when empty); ValueError listing the classes otherwise."""
  present = sorted(int(c) for c in np.unique(labels))
  normal = tuple(int(c) for c in normal) or tuple(present)
  missing = [c for c in normal if c not in present]
  if missing:
    raise ValueError(f"normal class(es) {', '.join(map(str, missing))} not in {dataset}; "
                     f"its classes are {', '.join(map(str, present))}")
  if len(set(normal)) != len(normal):
    raise ValueError(f"normal classes repeat: {normal}")
  return normal


def normal_split(labels, normal: int, *, val_fraction: float, seed: int, max_train: int = 0):
  """(train, validation) indices of class ``normal`` only; validation is a seeded
  ``val_fraction`` of them (for thresholds), ``max_train`` caps the rest (0: no cap)."""
  if not 0.0 < val_fraction < 1.0:
    raise ValueError(f"validation fraction must be in (0, 1), got {val_fraction}")
  idx = np.random.default_rng([seed, normal]).permutation(np.flatnonzero(np.asarray(labels) == normal))
  k = max(1, int(round(val_fraction * len(idx))))
  if len(idx) - k < 2:
    raise ValueError(f"class {normal} has {len(idx)} examples: too few to train on and validate")
  train = idx[k:]
  if max_train:
    train = train[:max_train]
  return np.sort(train), np.sort(idx[:k])


def pad_by_repeating(idx, size: int, seed: int) -> np.ndarray:
  """``idx`` followed by a seeded draw (without replacement where possible) of its own
  entries, ``size`` in all: one-class sets of unequal size stacked for ``jax.vmap``. An
  epoch then sees ``size - len(idx)`` examples of the smaller class twice."""
  idx = np.asarray(idx)
  if size < len(idx):
    raise ValueError(f"cannot pad {len(idx)} indices to {size}")
  extra = size - len(idx)
  rng = np.random.default_rng(seed)
  reps = [rng.permutation(idx) for _ in range(-(-extra // len(idx)))] if extra else []
  return np.concatenate([idx, *reps])[:size]
