"""Closed-form probes on frozen features: ridge regression and k-NN.

The ridge probe is big_vision's few-shot evaluation: regress ±1 one-hot
targets on standardised features in closed form and pick the L2 strength on
the validation split. k-NN uses scikit-learn with cosine distance.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.neighbors import KNeighborsClassifier

from aetl_jax.core.registry import Registry
from aetl_jax.strategies.registry import STRATEGIES, Strategy
from aetl_jax.core.registry import Key, each, positive

# A probe: fn(train, val, test, *, num_classes, cfg) -> result dict, each split (features,
# labels); a probe registered with pool=True also gets ``pool``: the codes of every target-pool
# image (strategies.manifold.ProbePool).
PROBES = Registry("probe", "transfer.strategies")


def _standardise(train, *others):
  mean = train.mean(0)
  std = train.std(0)
  # A feature constant on the training set carries no information; leave it
  # unscaled instead of blowing its test values up by 1/eps.
  std = np.where(std > 1e-6, std, 1.0)
  return [(a - mean) / std for a in (train, *others)]


def ridge_fit(features, labels, num_classes: int, l2: float):
  """Weights (d+1, C) of ridge regression onto ±1 targets (last row is bias)."""
  x = np.concatenate([features, np.ones((len(features), 1), features.dtype)], 1).astype(np.float64)
  y = 2.0 * np.eye(num_classes)[labels] - 1.0
  reg = l2 * np.eye(x.shape[1])
  reg[-1, -1] = 0.0  # the bias is not penalised
  return np.linalg.solve(x.T @ x + reg, x.T @ y)


def ridge_predict(weights, features):
  x = np.concatenate([features, np.ones((len(features), 1), features.dtype)], 1)
  return np.argmax(x @ weights, -1)


def select(candidates, score_fn, has_val):
  scores = [score_fn(c) for c in candidates]
  if not has_val:
    return candidates[len(candidates) // 2], None
  best = int(np.argmax(scores))
  return candidates[best], scores[best]


def ridge_probe(train, val, test, *, num_classes: int, l2_grid: Sequence[float]) -> dict:
  """``train/val/test`` are (features, labels). Returns accuracies and the chosen l2.

  Without validation examples the middle of ``l2_grid`` is used.
  """
  (ftr, ytr), (fva, yva), (fte, yte) = train, val, test
  ftr, fva, fte = _standardise(ftr, fva, fte)
  has_val = len(yva) > 0

  def val_acc(l2):
    return float(np.mean(ridge_predict(ridge_fit(ftr, ytr, num_classes, l2), fva) == yva)) if has_val else 0.0

  l2, val_accuracy = select(list(l2_grid), val_acc, has_val)
  weights = ridge_fit(ftr, ytr, num_classes, l2)
  return {"test_accuracy": float(np.mean(ridge_predict(weights, fte) == yte)),
          "val_accuracy": val_accuracy, "train_accuracy": float(np.mean(ridge_predict(weights, ftr) == ytr)),
          "l2": l2}


def knn_probe(train, val, test, *, k_grid: Sequence[int]) -> dict:
  """Cosine k-NN; k chosen on validation (k larger than the train set is skipped)."""
  (ftr, ytr), (fva, yva), (fte, yte) = train, val, test
  ks = [k for k in k_grid if k <= len(ytr)] or [1]
  has_val = len(yva) > 0

  def fit(k):
    return KNeighborsClassifier(n_neighbors=k, metric="cosine").fit(ftr, ytr)

  def val_acc(k):
    return float(fit(k).score(fva, yva)) if has_val else 0.0

  k, val_accuracy = select(ks, val_acc, has_val)
  return {"test_accuracy": float(fit(k).score(fte, yte)), "val_accuracy": val_accuracy, "k": k}


@PROBES.register("ridge")
def _ridge(train, val, test, *, num_classes: int, cfg) -> dict:
  return ridge_probe(train, val, test, num_classes=num_classes, l2_grid=tuple(cfg.ridge_l2_grid))


@PROBES.register("knn")
def _knn(train, val, test, *, num_classes: int, cfg) -> dict:
  del num_classes
  return knn_probe(train, val, test, k_grid=tuple(cfg.knn_k_grid))


@STRATEGIES.register("ridge_probe", defaults=dict(
    ridge_l2_grid=Key((0.01, 0.1, 1.0, 10.0, 100.0), "L2 strengths tried; the best on validation wins",
                      each(positive(), "positive numbers"))))
def ridge_probe_strategy(ctx):
  """Closed-form ridge on frozen features, L2 picked on validation."""
  return Strategy(ctx.name, "pretrained", probe="ridge")


@STRATEGIES.register("knn_probe", defaults=dict(
    knn_k_grid=Key((1, 3, 5, 10), "neighbour counts tried; the best on validation wins",
                   each(positive(integer=True), "positive integers"))))
def knn_probe_strategy(ctx):
  """Cosine k-NN on frozen features, k picked on validation."""
  return Strategy(ctx.name, "pretrained", probe="knn")
