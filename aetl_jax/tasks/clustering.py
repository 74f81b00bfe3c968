"""Task ``clustering``: cluster the autoencoder's codes of every image, score against the labels.

An autoencoder is pretrained (``config.objective``, any variant) on all
images of ``data.splits`` without labels — the usual protocol of DEC and its
successors, which cluster MNIST's 70,000 images — then its codes are
clustered by every method of ``clustering.methods`` after every embedding of
``clustering.embeddings`` (``none``; ``umap`` is N2D's manifold step). The
same methods run on raw pixels and on PCA features (``clustering.baselines``,
embedded by ``clustering.baseline_embeddings``) and, optionally, on the
features of fine-tuned encoders saved by transfer runs
(``clustering.classifiers``: ``WORKDIR/classifiers/CELL`` folders). Seeds
vary the clustering (and embedding) initialisation; the pretraining is one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import ml_collections
import numpy as np

from aetl_jax.core.config import ConfigError, require
from aetl_jax.core.errors import described
from aetl_jax.data.preprocessing import to_unit
from aetl_jax.data.sources import load_configured
from aetl_jax.engine.metrics_log import JsonlLog
from aetl_jax.evaluation import clustering as cl
from aetl_jax.evaluation.anomaly import codes
from aetl_jax.reporting import anomaly_figures
from aetl_jax.reporting.application_tables import cluster_label, clustering_table
from aetl_jax.tasks.pretrain import check_unlabelled_autoencoder, pretrain
from aetl_jax.tasks.registry import TASKS
from aetl_jax.tasks.transfer import pretrain_section
from aetl_jax.transfer.classifiers import load_classifier

log = logging.getLogger(__name__)
BASELINE_FEATURES = ("pixels", "pca")


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "clustering"
  c.data = dict(name="digits", data_dir="", manual_dir="", splits=("train", "test"), max_examples=0,
                split_seed=0)
  c.model = dict(family="mlp", widths=(256, 128), code_dim=10)
  c.objective = dict(name="reconstruction")
  c.pretrain = pretrain_section()
  c.pretrain.update(epochs=50, batch_size=256, learning_rate=1e-3)
  c.clustering = dict(k=0, methods=("kmeans", "gmm"), embeddings=("none",),
                      baselines=BASELINE_FEATURES, baseline_embeddings=("none",),
                      baseline_methods=("kmeans",), seeds=3,
                      pca_components=10, embedding_dim=10, umap_neighbors=20, classifiers=())
  c.report = dict(map_points=10000, map="pca")  # the 2-D map of codes: pca or umap
  c.launch = dict(launcher="jit", num_devices=0, distributed=False)
  return c


@dataclasses.dataclass
class ClusteringData:
  name: str
  route: str
  images: np.ndarray  # [0, 1], NHWC
  labels: np.ndarray

  @property
  def k(self) -> int:
    return len(np.unique(self.labels))


def load(config, *, progress: bool = True) -> ClusteringData:
  d = config.data
  ds = load_configured(d, splits=tuple(d.splits), progress=progress)
  images = np.concatenate([x for x, _ in ds.splits.values()])
  labels = np.concatenate([y for _, y in ds.splits.values()])
  if d.max_examples and d.max_examples < len(labels):
    keep = np.sort(np.random.default_rng(d.split_seed).permutation(len(labels))[: d.max_examples])
    images, labels = images[keep], labels[keep]
  return ClusteringData(d.name, f"{ds.route} ({'+'.join(ds.splits)})", to_unit(images, ds.max_value),
                        labels)


def check(config, data: ClusteringData) -> None:
  c = config.clustering
  k = c.k or data.k
  require(isinstance(k, int) and 2 <= k <= len(data.labels), "clustering.k",
          f"must be in [2, {len(data.labels)}] (the number of examples), or 0 for the number of "
          f"classes ({data.k}); got {c.k}")
  require(len(c.methods) > 0, "clustering.methods", f"must name one of {', '.join(cl.CLUSTERERS.names())}")
  for name in tuple(c.methods) + tuple(c.baseline_methods):
    cl.CLUSTERERS.get(name)
  for name in tuple(c.embeddings) + tuple(c.baseline_embeddings):
    cl.EMBEDDINGS.get(name)
  require(config.report.map in ("pca", "umap"), "report.map",
          f"must be pca or umap, got {config.report.map!r}")
  for name in c.baselines:
    require(name in BASELINE_FEATURES, "clustering.baselines",
            f"unknown baseline {name!r}; valid: {', '.join(BASELINE_FEATURES)}")
  require(isinstance(c.seeds, int) and c.seeds >= 1, "clustering.seeds", f"must be >= 1, got {c.seeds}")
  for key in ("pca_components", "embedding_dim", "umap_neighbors"):
    require(c[key] >= 1, f"clustering.{key}", f"must be >= 1, got {c[key]}")
  if "umap" in tuple(c.embeddings) + tuple(c.baseline_embeddings) + (config.report.map,):
    try:
      import umap  # noqa: F401
    except ImportError:
      raise ConfigError("config key 'clustering.embeddings': 'umap' needs umap-learn; "
                        "pip install 'aetl_jax[cluster]', or use: none, pca") from None
    except Exception as e:  # noqa: BLE001 - e.g. a torchvision that does not match torch
      raise ConfigError(f"config key 'clustering.embeddings': umap-learn is installed but does "
                        f"not import here ({described(e, 200)}); repair that install, "
                        f"or use: none, pca") from None
  check_unlabelled_autoencoder(config, data.images.shape[1:], "the clustering task pretrains")
  for path in c.classifiers:
    _classifier(path)


def _classifier(path):
  path = Path(path)
  try:
    return load_classifier(path.parent.parent, path.name)
  except (ValueError, FileNotFoundError) as e:
    raise ConfigError(f"config key 'clustering.classifiers': {path}: {e}") from None


def feature_sets(config, data: ClusteringData, model, params) -> dict:
  """name -> ((N, d) features, embeddings to apply, clustering methods)."""
  c = config.clustering
  flat = data.images.reshape(len(data.images), -1)
  mine = (tuple(c.embeddings), tuple(c.methods))
  out = {f"codes ({config.objective.name})": (codes(model, params, data.images), *mine)}
  for path in c.classifiers:
    out[f"fine-tuned encoder {Path(path).name}"] = (_classifier(path).features(data.images), *mine)
  # Baselines cluster with their own methods: a full-covariance GMM on 784 pixels is slow
  # and ill-conditioned.
  theirs = (tuple(c.baseline_embeddings), tuple(c.baseline_methods))
  if "pixels" in c.baselines:
    out["pixels"] = (flat, *theirs)
  if "pca" in c.baselines:
    out[f"PCA-{c.pca_components} of pixels"] = (cl.pca(flat, 0, ml_collections.ConfigDict(
        {"embedding_dim": c.pca_components})), *theirs)
  return out


def cluster_rows(config, features: dict, labels, done: set, sink) -> None:
  """Every (features, embedding, method, seed) not in ``done``: scores appended to ``sink``,
  predicted clusters of seed 0 saved for the figures."""
  c = config.clustering
  k = c.k or len(np.unique(labels))
  for name, (x, embeddings, wanted) in features.items():
    x = np.asarray(x, np.float32)
    for embedding in embeddings:
      for seed in range(c.seeds):
        methods = [m for m in wanted if (name, embedding, m, seed) not in done]
        if not methods:
          continue
        z = cl.EMBEDDINGS.get(embedding).fn(x, seed, c)
        rows = []
        for method in methods:
          pred = cl.CLUSTERERS.get(method).fn(z, k, seed)
          rows.append({"features": name, "embedding": embedding, "method": method, "seed": seed,
                       "k": k, **cl.cluster_scores(labels, pred),
                       **({"clusters": pred.astype(int).tolist()} if seed == 0 else {})})
        sink(rows)
        log.info("%s / %s / seed %d: %s", name, embedding, seed,
                 {r["method"]: round(r["accuracy"], 4) for r in rows})


@TASKS.register("clustering", load=load, check=check, default_config=default_config)
def run(config, workdir, data: ClusteringData, *, progress: bool = True) -> dict:
  """Pretrain on every image without labels, cluster codes and baselines, score, report."""
  workdir = Path(workdir)
  eval_images = data.images[np.random.default_rng(0).permutation(len(data.images))[:1000]]
  model, params, _ = pretrain(config, data.images, eval_images, workdir, progress=progress)
  cells = JsonlLog(workdir / "results" / "cells.jsonl")
  cells.repair()
  done = {(r["features"], r["embedding"], r["method"], r["seed"]) for r in cells.read()}
  features = feature_sets(config, data, model, params)
  cluster_rows(config, features, data.labels, done, cells.extend)
  return _report(config, workdir, data, cells.read(), features)


def _report(config, workdir: Path, data: ClusteringData, rows, features) -> dict:
  c = config.clustering
  rows = [r for r in rows if r["seed"] < c.seeds
          and r["method"] in tuple(c.methods) + tuple(c.baseline_methods)]
  table, summary = clustering_table(rows)
  caption = (f"Clustering {len(data.labels)} {data.name} images ({data.route}) into "
             f"k={c.k or data.k} clusters: accuracy (best one-to-one cluster→class matching), NMI "
             f"and ARI × 100, mean ± 95% CI over {c.seeds} clustering seeds (one pretraining: "
             f"{config.model.family}/{config.objective.name} autoencoder, code size "
             f"{config.model.get('code_dim', '?')}, {config.pretrain.epochs} epochs).")
  table = caption + "\n\n" + table
  out = workdir / "results"
  (out / "results.md").write_text(table + "\n")
  (out / "results.json").write_text(json.dumps(summary, indent=2))
  best = max((r for r in rows if "clusters" in r and r["features"].startswith("codes")),
             key=lambda r: r["accuracy"], default=None)
  if best is not None:
    _figures(config, workdir, data, features, best)
  return {"table": table, "summary": summary,
          "rows": [{k: v for k, v in r.items() if k != "clusters"} for r in rows],
          "artifacts": ["results/results.md", "results/results.json", "results/cells.jsonl",
                        "results/confusion.png", "results/codes_map.png", "metrics/pretrain.jsonl",
                        "pretrain/checkpoints/"]}


def _figures(config, workdir: Path, data: ClusteringData, features, best) -> None:
  clusters = np.asarray(best["clusters"])
  anomaly_figures.confusion(workdir / "results" / "confusion.png",
                            cl.contingency(data.labels, clusters), title=cluster_label(best))
  x = np.asarray(features[best["features"]][0], np.float32)
  show = np.random.default_rng(0).permutation(len(x))[: config.report.map_points]
  how = config.report.map
  points = cl.EMBEDDINGS.get(how).fn(x[show], 0, ml_collections.ConfigDict(
      {"embedding_dim": 2, "umap_neighbors": config.clustering.umap_neighbors}))
  anomaly_figures.code_map(workdir / "results" / "codes_map.png", points, data.labels[show],
                           cl.matched(data.labels, clusters)[show],
                           title=f"{best['features']}: 2-D {how} (clusters coloured as their "
                                 f"matched class)")
