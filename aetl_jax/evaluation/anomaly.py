"""Anomaly scores from a trained autoencoder, pixel-space baselines, and their metrics.

Higher score = more anomalous. A score is a registered function
``fn(ctx, images) -> (N,) numpy`` of a :class:`ScoreContext` (the model, its
parameters, the normal training images it learned, an explicit ``rng``)::

    from aetl_jax.evaluation.anomaly import SCORES

    @SCORES.register("my_score")
    def my_score(ctx, images):
      ...

Built in: per-example reconstruction error (``reconstruction_mse``,
``reconstruction_bce``), the mean distance to the ``k`` nearest training
codes (``latent_knn``), and the VAE's negative ELBO (``neg_elbo``). Baselines
on raw pixels (PCA reconstruction error, scikit-learn's IsolationForest and
OneClassSVM) are :data:`BASELINES`. Metrics come from scikit-learn.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from sklearn import metrics as skm

from aetl_jax.core.registry import Registry
from aetl_jax.evaluation.batched import batched_apply
from aetl_jax.evaluation.reconstruction import per_example_metrics
from aetl_jax.evaluation.vae import per_example_bounds
from aetl_jax.objectives.reconstruction import pixel_errors
from aetl_jax.models.variables import variables

SCORES = Registry("anomaly score", "one_class.scores")
BASELINES = Registry("anomaly baseline", "one_class.baselines")


@dataclasses.dataclass(frozen=True)
class ScoreContext:
  model: object
  params: dict
  train_images: np.ndarray  # the normal images the model was trained on
  rng: jax.Array
  knn_k: int = 5
  elbo_samples: int = 10

  @functools.cached_property
  def neighbours(self):
    """A nearest-neighbour index of the training images' codes, built once per context (the
    test and validation images of one model are scored against the same one)."""
    from sklearn.neighbors import NearestNeighbors
    return NearestNeighbors(n_neighbors=self.knn_k).fit(codes(self.model, self.params,
                                                              self.train_images))


@functools.lru_cache(maxsize=None)
def _encode_fn(model):
  return jax.jit(lambda params, x: model.apply(variables(params), x, method="encode"))


@SCORES.register("reconstruction_mse")
def reconstruction_mse(ctx: ScoreContext, images) -> np.ndarray:
  """Mean squared pixel error of the reconstruction."""
  return np.asarray(per_example_metrics(ctx.model, ctx.params, images)["mse"])


@SCORES.register("reconstruction_bce")
def reconstruction_bce(ctx: ScoreContext, images) -> np.ndarray:
  """Mean pixel binary cross-entropy of the reconstruction."""
  return np.asarray(per_example_metrics(ctx.model, ctx.params, images)["bce"])


def codes(model, params, images) -> np.ndarray:
  """Deterministic codes (the features transfer uses), flattened to (N, d)."""
  z = np.asarray(batched_apply(_encode_fn(model), params, images))
  return z.reshape(len(z), -1)


@SCORES.register("latent_knn")
def latent_knn(ctx: ScoreContext, images) -> np.ndarray:
  """Mean Euclidean distance to the ``knn_k`` nearest codes of the training images."""
  distances, _ = ctx.neighbours.kneighbors(codes(ctx.model, ctx.params, images))
  return distances.mean(axis=1)


@SCORES.register("neg_elbo", model="vae")
def neg_elbo(ctx: ScoreContext, images) -> np.ndarray:
  """The VAE's negative ELBO in nats (``elbo_samples`` posterior samples)."""
  return per_example_bounds(ctx.model, ctx.params, images, ctx.rng,
                            num_samples=ctx.elbo_samples, batch_size=500)[0]


def pixel_error_map(model, params, images) -> np.ndarray:
  """Per-pixel squared error of the reconstruction, shaped like ``images``."""
  logits = model.apply(variables(params), jnp.asarray(images), method="reconstruct")
  return np.asarray(pixel_errors(logits, images, "mse")).reshape(np.shape(images))


# ---------------------------------------------------------------------------
# Baselines on raw pixels: fn(train (N, D), test (M, D), seed, cfg) -> (M,) scores.


@BASELINES.register("pca")
def pca_error(train, test, seed, cfg) -> np.ndarray:
  """Squared reconstruction error after projecting on the top ``pca_components`` components."""
  from sklearn.decomposition import PCA
  pca = PCA(n_components=min(cfg.pca_components, *train.shape), random_state=seed).fit(train)
  return ((pca.inverse_transform(pca.transform(test)) - test) ** 2).sum(axis=1)


@BASELINES.register("isolation_forest", seeded=True)
def isolation_forest(train, test, seed, cfg) -> np.ndarray:
  """scikit-learn's IsolationForest (200 trees); the score is minus its decision function."""
  from sklearn.ensemble import IsolationForest
  forest = IsolationForest(n_estimators=200, random_state=seed, n_jobs=-1).fit(train)
  return -forest.score_samples(test)


@BASELINES.register("ocsvm")
def one_class_svm(train, test, seed, cfg) -> np.ndarray:
  """scikit-learn's OneClassSVM, RBF kernel, ``gamma='scale'``, ν = ``ocsvm_nu``."""
  from sklearn.svm import OneClassSVM
  svm = OneClassSVM(kernel="rbf", gamma="scale", nu=cfg.ocsvm_nu, cache_size=1000).fit(train)
  return -svm.decision_function(test)


# ---------------------------------------------------------------------------
# Metrics.


def detection_metrics(scores, is_anomaly) -> dict:
  """AUROC and average precision (anomalies are the positive class)."""
  scores, is_anomaly = np.asarray(scores, np.float64), np.asarray(is_anomaly, bool)
  if is_anomaly.all() or not is_anomaly.any():
    raise ValueError("detection metrics need both normal and anomalous examples")
  return {"auroc": float(skm.roc_auc_score(is_anomaly, scores)),
          "average_precision": float(skm.average_precision_score(is_anomaly, scores))}


def threshold_at_fpr(normal_scores, fpr: float) -> float:
  """The score above which a fraction ``fpr`` of (validation) normal examples lies."""
  if not 0 < fpr < 1:
    raise ValueError(f"fpr must be in (0, 1), got {fpr}")
  return float(np.quantile(np.asarray(normal_scores, np.float64), 1.0 - fpr))


def decision_metrics(scores, is_anomaly, threshold: float) -> dict:
  """Flagging ``score > threshold``: true and false positive rates, precision, F1."""
  flagged, is_anomaly = np.asarray(scores) > threshold, np.asarray(is_anomaly, bool)
  return {"tpr": float(flagged[is_anomaly].mean()), "fpr": float(flagged[~is_anomaly].mean()),
          "precision": float(skm.precision_score(is_anomaly, flagged, zero_division=0)),
          "f1": float(skm.f1_score(is_anomaly, flagged, zero_division=0))}
