"""Manifold probes: k-NN and label spreading on the frozen encoder's codes of the whole
target pool, optionally after a PCA or UMAP embedding of those codes.

The codes of an autoencoder can hold the classes on a curved manifold that a linear head on
a hundred labels does not find; a neighbourhood graph over every pool image does (label
spreading, Zhou et al. 2004; UMAP then k-NN, as N2D clusters). Each probe is registered as a
strategy (``knn_pca``, ``knn_umap``, ``spreading``, ``spreading_pca``, ``spreading_umap``;
``knn_umap_pixels`` and ``spreading_umap_pixels`` fit on the images' pixels instead of the
codes: what the graph owes to the autoencoder) owning the keys below:

* ``manifold_mode``: ``'inductive'`` fits the embedding and the graph on the target pool only
  (labelled and unlabelled training images) and maps the test set through them afterwards;
  ``'transductive'`` fits them on the pool and the test images together (the test labels are
  never read; the table caption says which mode ran).
* ``manifold_dim``: the embedding's dimensions; ``manifold_k_grid`` (k-NN's k),
  ``spreading_alpha_grid`` and ``spreading_neighbors`` (label spreading's clamping factor
  and graph degree), ``umap_grid`` (UMAP's ``(n_neighbors, min_dist)`` pairs: the library's
  default ``(15, 0.1)``; its documentation suggests ``(30, 0.0)`` for clustering): chosen on
  the validation labels (the middle value without any).

The embedding depends on the pool's codes only, not on any label, so a sweep fits it once
and every budget and seed reuses it (``ProbePool.cache``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import NamedTuple, Sequence

import numpy as np

from aetl_jax.core.config import is_number, require
from aetl_jax.strategies.probes import PROBES, select
from aetl_jax.strategies.registry import STRATEGIES, Strategy
from aetl_jax.core.registry import Check, Key, count, each, one_of, positive, within

MODES = ("inductive", "transductive")
EMBEDDINGS = ("none", "pca", "umap")


@dataclasses.dataclass
class ProbePool:
  """The codes of every target-pool image, where the cell's labelled training and validation
  images sit among them, and a cache shared by the cells of a sweep."""

  features: np.ndarray
  train_at: np.ndarray
  val_at: np.ndarray
  cache: dict = dataclasses.field(default_factory=dict)


UMAP_DEFAULT = (15, 0.1)  # umap-learn's own (n_neighbors, min_dist)


def _embedder(kind: str, dim: int, seed: int, umap: tuple = UMAP_DEFAULT):
  if kind == "pca":
    from sklearn.decomposition import PCA
    return PCA(n_components=dim, random_state=seed)
  import umap as umap_learn
  neighbors, min_dist = umap
  return umap_learn.UMAP(n_components=dim, n_neighbors=int(neighbors), min_dist=float(min_dist),
                         random_state=seed, n_jobs=1)


def embed(kind: str, pool: np.ndarray, test: np.ndarray, *, dim: int, mode: str,
          seed: int = 0, cache: dict | None = None,
          umap: tuple = UMAP_DEFAULT) -> tuple[np.ndarray, np.ndarray]:
  """(pool, test) in the embedding: fitted on the pool (inductive; the test set is mapped
  through the fitted embedding) or on pool + test (transductive). ``umap``: UMAP's
  ``(n_neighbors, min_dist)``."""
  if kind == "none":
    return pool, test
  umap = tuple(umap) if kind == "umap" else ()
  key = (kind, dim, mode, seed, umap, hashlib.sha1(np.ascontiguousarray(pool)).hexdigest(),
         hashlib.sha1(np.ascontiguousarray(test)).hexdigest())
  if cache is not None and key in cache:
    return cache[key]
  dim = min(dim, pool.shape[1])
  model = _embedder(kind, dim, seed, umap or UMAP_DEFAULT)
  if mode == "transductive":
    both = model.fit_transform(np.concatenate([pool, test]))
    out = both[: len(pool)], both[len(pool):]
  else:
    out = model.fit_transform(pool), model.transform(test)
  out = tuple(np.asarray(a, np.float32) for a in out)
  if cache is not None:
    cache[key] = out
  return out


class Fit(NamedTuple):
  """What a manifold method gives: its labels of the test images and of every pool image,
  its validation and training accuracy, and the settings the validation labels chose."""

  test: np.ndarray
  val_accuracy: float | None
  train_accuracy: float
  chosen: dict
  pool: np.ndarray


def knn(pool_x, train_at, y_train, val_at, y_val, test_x, *, k_grid: Sequence[int]) -> Fit:
  """k-NN (Euclidean) on the embedded training labels; k chosen on validation."""
  from sklearn.neighbors import KNeighborsClassifier
  ks = [k for k in k_grid if k <= len(train_at)] or [1]

  def fit(k):
    return KNeighborsClassifier(n_neighbors=k).fit(pool_x[train_at], y_train)

  def val_acc(k):
    return float(fit(k).score(pool_x[val_at], y_val))

  k, val_accuracy = select(ks, val_acc, len(val_at) > 0)
  clf = fit(k)
  return Fit(clf.predict(test_x), val_accuracy, float(clf.score(pool_x[train_at], y_train)),
             {"k": k}, clf.predict(pool_x))


def spread(pool_x, train_at, y_train, val_at, y_val, test_x, *, alpha_grid: Sequence[float],
           neighbors: int, transductive: bool) -> Fit:
  """Label spreading (scikit-learn, k-NN kernel) over the pool graph (+ the test images when
  transductive) from the training labels; alpha chosen on the validation images' labels
  as spread (they are unlabelled in the graph)."""
  from sklearn.semi_supervised import LabelSpreading
  x = np.concatenate([pool_x, test_x]) if transductive else pool_x
  y = np.full(len(x), -1, np.int64)
  y[train_at] = y_train

  def fit(alpha):
    return LabelSpreading(kernel="knn", n_neighbors=neighbors, alpha=alpha, max_iter=100).fit(x, y)

  fitted = {}

  def val_acc(alpha):
    fitted[alpha] = fit(alpha)
    return float(np.mean(fitted[alpha].transduction_[val_at] == y_val))

  alpha, val_accuracy = select(list(alpha_grid), val_acc, len(val_at) > 0)
  model = fitted.get(alpha) or fit(alpha)
  test = model.transduction_[len(pool_x):] if transductive else model.predict(test_x)
  train = float(np.mean(model.transduction_[train_at] == y_train))
  return Fit(test, val_accuracy, train, {"alpha": alpha}, model.transduction_[:len(pool_x)])


def manifold_probe(method: str, embedding: str):
  """The probe ``fn(train, val, test, *, num_classes, cfg, pool, pool_labels=False)`` of one
  method on one embedding of the pool's codes; with ``pool_labels`` its result also holds
  ``pool_predictions``: the method's label of every pool image (what ``labels_from``
  strategies train on)."""

  def fitted(cfg, pool: ProbePool, train, val, test_codes, settings) -> Fit:
    """The method's fit on one embedding (its choices include the embedding's settings)."""
    mode = cfg.manifold_mode
    pool_x, test_x = embed(embedding, pool.features, test_codes, dim=cfg.manifold_dim,
                           mode=mode, cache=pool.cache, **settings)
    args = (pool_x, pool.train_at, np.asarray(train[1]), pool.val_at, np.asarray(val[1]), test_x)
    if method == "knn":
      out = knn(*args, k_grid=tuple(cfg.manifold_k_grid))
    else:
      out = spread(*args, alpha_grid=tuple(cfg.spreading_alpha_grid),
                   neighbors=cfg.spreading_neighbors, transductive=mode == "transductive")
    return out._replace(chosen={**out.chosen, **{k: list(v) for k, v in settings.items()}})

  def probe(train, val, test, *, num_classes: int, cfg, pool: ProbePool,
            pool_labels: bool = False) -> dict:
    del num_classes
    grid = ([{"umap": tuple(u)} for u in cfg.get("umap_grid", (UMAP_DEFAULT,))]
            if embedding == "umap" else [{}])
    runs = {}

    def score(i):
      runs[i] = fitted(cfg, pool, train, val, test[0], grid[i])
      return runs[i].val_accuracy

    best, _ = select(list(range(len(grid))), score, len(pool.val_at) > 0)
    fit = runs[best]
    out = {"test_accuracy": float(np.mean(fit.test == np.asarray(test[1]))),
           "val_accuracy": fit.val_accuracy, "train_accuracy": fit.train_accuracy,
           "manifold_mode": cfg.manifold_mode, "embedding": embedding, **fit.chosen}
    return {**out, "pool_predictions": np.asarray(fit.pool)} if pool_labels else out

  return probe


def _check_umap(t) -> None:
  del t
  try:
    import umap  # noqa: F401
  except ImportError:
    require(False, "transfer.strategies", "the *_umap probes need umap-learn; pip install "
                                          "'aetl_jax[cluster]', or use the *_pca ones")
  except Exception as e:  # noqa: BLE001 - a broken install (e.g. numba against numpy)
    require(False, "transfer.strategies", f"umap-learn is installed but does not import here "
                                          f"({type(e).__name__}); repair it, or use *_pca")


DEFAULTS = dict(
    manifold_mode=Key("inductive", "inductive (fitted on the pool only) or transductive (pool + test images)",
                      one_of(*MODES)),
    manifold_dim=Key(10, "dimensions of the PCA / UMAP embedding", count(1)),
    manifold_k_grid=Key((1, 3, 5, 10), "k-NN's neighbour counts tried on validation",
                        each(positive(integer=True), "positive integers")),
    spreading_alpha_grid=Key((0.2, 0.5, 0.8, 0.99), "label spreading's clamping factors tried on validation",
                             each(within(0, 1, closed="()"), "numbers in (0, 1)")),
    spreading_neighbors=Key(10, "neighbours per node of label spreading's graph", count(1)),
    umap_grid=Key((UMAP_DEFAULT,), "UMAP's (n_neighbors, min_dist) pairs tried on validation",
                  each(Check(lambda u: isinstance(u, (tuple, list)) and len(u) == 2
                             and is_number(u[0], integer=True) and u[0] >= 2
                             and is_number(u[1]) and 0 <= u[1] <= 1,
                             lambda u: f"must be (n_neighbors >= 2, 0 <= min_dist <= 1), got {u!r}"),
                       "(n_neighbors, min_dist) pairs")))


POOL_PROBES: list[str] = []  # the probes above, by name: they label every pool image too


def _register(name: str, method: str, embedding: str, doc: str, inputs: str = "codes") -> None:
  PROBES.register(name, pool=True, inputs=inputs)(manifold_probe(method, embedding))
  POOL_PROBES.append(name)

  def strategy(ctx):
    return Strategy(ctx.name, "pretrained" if inputs == "codes" else "random", probe=name)

  strategy.__doc__ = doc
  STRATEGIES.register(name, defaults=DEFAULTS, validate=_check_umap if embedding == "umap" else None,
                      unlabelled=True)(strategy)


_register("knn_pca", "knn", "pca", "k-NN on a PCA embedding of the pool's codes (manifold_dim).")
_register("knn_umap", "knn", "umap", "k-NN on a UMAP embedding of the pool's codes (manifold_dim).")
_register("spreading", "spreading", "none", "Label spreading over a k-NN graph of the pool's codes.")
_register("spreading_pca", "spreading", "pca", "Label spreading over the PCA-embedded pool's codes.")
_register("spreading_umap", "spreading", "umap", "Label spreading over the UMAP-embedded pool's codes.")
# The same on the images' pixels: what the graph owes to the autoencoder (no checkpoint read).
_register("knn_umap_pixels", "knn", "umap", "k-NN on a UMAP embedding of the pool's pixels.", "pixels")
_register("spreading_umap_pixels", "spreading", "umap",
          "Label spreading over the UMAP-embedded pool's pixels.", "pixels")
