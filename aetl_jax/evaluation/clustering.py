"""Clustering of features (autoencoder codes, pixels, PCA) and its scores.

A clustering method is a registered function ``fn(features, k, seed) ->
(N,) int`` cluster ids; an embedding (a manifold step before clustering, as
N2D does with UMAP) is ``fn(features, seed, cfg) -> (N, d)``. Scores:
clustering accuracy under the best one-to-one matching of clusters to
classes (Hungarian, ``scipy.optimize.linear_sum_assignment``), NMI and ARI
from scikit-learn.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as skm

from aetl_jax.core.registry import Registry

CLUSTERERS = Registry("clustering method", "clustering.methods")
EMBEDDINGS = Registry("embedding", "clustering.embedding")


@CLUSTERERS.register("kmeans")
def kmeans(features, k: int, seed: int) -> np.ndarray:
  """k-means++ with 10 restarts (scikit-learn)."""
  from sklearn.cluster import KMeans
  return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(features)


@CLUSTERERS.register("gmm")
def gmm(features, k: int, seed: int) -> np.ndarray:
  """A full-covariance Gaussian mixture (scikit-learn), k-means initialised."""
  from sklearn.mixture import GaussianMixture
  return GaussianMixture(n_components=k, covariance_type="full", random_state=seed,
                         max_iter=200).fit(features).predict(features)


@EMBEDDINGS.register("none")
def identity(features, seed: int, cfg) -> np.ndarray:
  """The features themselves."""
  return features


@EMBEDDINGS.register("pca")
def pca(features, seed: int, cfg) -> np.ndarray:
  """The top ``embedding_dim`` principal components."""
  from sklearn.decomposition import PCA
  return PCA(n_components=min(cfg.embedding_dim, *features.shape),
             random_state=seed).fit_transform(features)


@EMBEDDINGS.register("umap")
def umap(features, seed: int, cfg) -> np.ndarray:
  """UMAP (umap-learn) to ``embedding_dim`` dimensions, ``umap_neighbors`` neighbours,
  min_dist 0 (the N2D setting for clustering)."""
  try:
    import umap as umap_learn
  except ImportError:
    raise ImportError("clustering.embedding='umap' needs umap-learn: pip install 'aetl_jax[cluster]'"
                      ) from None
  return umap_learn.UMAP(n_components=cfg.embedding_dim, n_neighbors=cfg.umap_neighbors,
                         min_dist=0.0, random_state=seed, n_jobs=1).fit_transform(features)


def cluster_accuracy(labels, clusters) -> float:
  """Fraction of examples whose cluster maps to their class under the best one-to-one
  assignment of clusters to classes (clusters left unmatched count as errors)."""
  labels, clusters = np.asarray(labels), np.asarray(clusters)
  _, y = np.unique(labels, return_inverse=True)
  _, c = np.unique(clusters, return_inverse=True)
  counts = np.zeros((c.max() + 1, y.max() + 1), np.int64)
  np.add.at(counts, (c, y), 1)
  rows, cols = linear_sum_assignment(counts, maximize=True)
  return float(counts[rows, cols].sum() / len(labels))


def cluster_scores(labels, clusters) -> dict:
  return {"accuracy": cluster_accuracy(labels, clusters),
          "nmi": float(skm.normalized_mutual_info_score(labels, clusters)),
          "ari": float(skm.adjusted_rand_score(labels, clusters))}


def matched(labels, clusters) -> np.ndarray:
  """Cluster ids renamed to the class each is matched to (unmatched clusters: ids above the
  classes'), so that figures colour a cluster like its class."""
  labels, clusters = np.asarray(labels), np.asarray(clusters)
  classes, y = np.unique(labels, return_inverse=True)
  ids, c = np.unique(clusters, return_inverse=True)
  counts = np.zeros((len(ids), len(classes)), np.int64)
  np.add.at(counts, (c, y), 1)
  rows, cols = linear_sum_assignment(counts, maximize=True)
  name = {r: classes[k] for r, k in zip(rows, cols)}
  spare = iter(range(int(classes.max()) + 1, int(classes.max()) + 1 + len(ids)))
  table = np.array([name[r] if r in name else next(spare) for r in range(len(ids))])
  return table[c]


def contingency(labels, clusters) -> np.ndarray:
  """(clusters × classes) counts, clusters reordered to their matched class."""
  labels, clusters = np.asarray(labels), np.asarray(clusters)
  table = skm.cluster.contingency_matrix(clusters, labels)
  rows, cols = linear_sum_assignment(table, maximize=True)
  order = list(rows[np.argsort(cols)]) + [r for r in range(table.shape[0]) if r not in set(rows)]
  return table[order]
