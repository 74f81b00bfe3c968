"""Task ``one_class``: anomaly detection with one autoencoder per normal class.

The standard protocol: for each normal class, an autoencoder is trained on
that class's training images only (a seeded ``data.val_fraction`` of them is
held out to pick decision thresholds), then scores the whole test set — that
class is normal, every other class is an anomaly. AUROC and average
precision per class and their mean over classes, over ``one_class.seeds``
seeds, beside pixel-space baselines on the same splits.

The models of all normal classes train as **one program**: parameters and
per-class training sets are stacked and the phase runs under ``jax.vmap``
(:func:`aetl_jax.engine.driver.run_phases_vmapped`). ``one_class.vmap=False``
trains them one by one (the same result; on 2 CPU cores 5% faster for the
dense model, BENCHMARKS.md), as does a runner that resolves to per-batch
steps (conv families on CPU). Classes of unequal size
are padded by repeating their own images (:func:`pad_by_repeating`). Each
seed's stacked parameters are an Orbax checkpoint and each seed's scores one
block of ``results/cells.jsonl``: a rerun resumes seed by seed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from aetl_jax.core.config import ConfigError, require
from aetl_jax.data.one_class import check_normal_classes, normal_split, pad_by_repeating
from aetl_jax.data.preprocessing import to_unit
from aetl_jax.data.sources import load_configured
from aetl_jax.data.splits import stratified_split
from aetl_jax.engine.driver import run_phases, run_phases_vmapped
from aetl_jax.engine.metrics_log import JsonlLog, TensorBoard
from aetl_jax.engine.phase import Optim, Phase
from aetl_jax.engine.runtime import runtime_from_config
from aetl_jax.engine.store import CheckpointStore
from aetl_jax.evaluation import anomaly
from aetl_jax.models.registry import build_autoencoder
from aetl_jax.objectives.registry import make_loss, model_kind
from aetl_jax.reporting import anomaly_figures
from aetl_jax.reporting.application_tables import auroc_table, class_means
from aetl_jax.reporting.tables import summarise
from aetl_jax.tasks.pretrain import check_unlabelled_autoencoder
from aetl_jax.tasks.registry import TASKS
from aetl_jax.tasks.transfer import pretrain_section
from aetl_jax.models.variables import tree_of

log = logging.getLogger(__name__)


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "one_class"
  c.data = dict(name="digits", data_dir="", manual_dir="", split_seed=0, val_fraction=0.1,
                test_fraction=0.3, max_train_per_class=0, max_test=0)
  c.model = dict(family="mlp", widths=(256, 128), code_dim=32)
  c.objective = dict(name="reconstruction")
  c.pretrain = pretrain_section()
  c.pretrain.update(epochs=30, batch_size=64, learning_rate=1e-3)
  c.one_class = dict(normal_classes=(), seeds=3, vmap=True,
                     scores=("reconstruction_mse", "latent_knn"), knn_k=5, elbo_samples=10,
                     fpr=0.05, baselines=("pca", "isolation_forest", "ocsvm"), pca_components=32,
                     ocsvm_nu=0.1)
  c.report = dict(reference_name="", reference=(), num_top_images=8)
  c.launch = dict(launcher="jit", num_devices=0, distributed=False)
  return c


@dataclasses.dataclass(frozen=True)
class OneClassData:
  """The loaded dataset and what the config derives from it: the normal classes and, for
  each, its training and held-out (threshold) indices into ``train``."""

  name: str
  route: str
  train: tuple  # (images in [0, 1] NHWC, labels)
  test: tuple
  normal: tuple[int, ...]
  splits: dict  # class -> (train idx, val idx)

  @property
  def shape(self) -> tuple:
    return tuple(self.train[0].shape[1:])


def load(config, *, progress: bool = True) -> OneClassData:
  d = config.data
  ds = load_configured(d, progress=progress)
  x, y = ds.splits["train"]
  if "test" in ds.splits:
    train, test = (x, y), ds.splits["test"]
  else:  # a dataset with one split (digits, npz:): a stratified test split
    a, b = stratified_split(y, d.test_fraction, d.split_seed)
    train, test = (x[a], y[a]), (x[b], y[b])
  if d.max_test and d.max_test < len(test[1]):
    keep = np.sort(np.random.default_rng(d.split_seed).permutation(len(test[1]))[: d.max_test])
    test = (test[0][keep], test[1][keep])
  unit = lambda xy: (to_unit(xy[0], ds.max_value), np.asarray(xy[1]))
  train = unit(train)
  normal, splits = normal_splits(config, train[1])
  return OneClassData(d.name, ds.route, train, unit(test), normal, splits)


def normal_splits(config, labels) -> tuple[tuple[int, ...], dict]:
  """(normal classes, class -> (training indices, held-out indices)) of the training labels."""
  oc, d = config.one_class, config.data
  try:
    normal = check_normal_classes(labels, oc.normal_classes, d.name)
    return normal, {c: normal_split(labels, c, val_fraction=d.val_fraction, seed=d.split_seed,
                                    max_train=d.max_train_per_class) for c in normal}
  except ValueError as e:
    raise ConfigError(f"config key 'one_class.normal_classes' / 'data': {e}") from None


def check(config, data: OneClassData) -> None:
  """Everything the run will need, before anything trains (reads ``config`` and ``data``)."""
  check_unlabelled_autoencoder(config, data.shape, "one-class models learn")
  _check_section(config, data)


def _check_section(config, data: OneClassData) -> None:
  oc = config.one_class
  require(len(oc.scores) > 0, "one_class.scores",
          f"must name at least one of: {', '.join(anomaly.SCORES.names())}")
  kind = model_kind(config.objective.name)
  for name in oc.scores:
    needs = anomaly.SCORES.get(name).info.get("model")
    require(needs in (None, kind), "one_class.scores",
            f"score {name!r} needs a {needs} model; objective {config.objective.name!r} "
            f"trains a {kind} (use objective.name='vae')")
  for name in oc.baselines:
    anomaly.BASELINES.get(name)
  require(isinstance(oc.seeds, int) and oc.seeds >= 1, "one_class.seeds", f"must be >= 1, got {oc.seeds}")
  smallest = min(len(t) for t, _ in data.splits.values())
  require(1 <= oc.knn_k <= smallest, "one_class.knn_k",
          f"must be in [1, {smallest}] (the smallest normal training set), got {oc.knn_k}")
  require(0 < oc.fpr < 1, "one_class.fpr", f"must be in (0, 1), got {oc.fpr}")
  require(0 < oc.ocsvm_nu <= 1, "one_class.ocsvm_nu", f"must be in (0, 1], got {oc.ocsvm_nu}")
  require(oc.pca_components >= 1, "one_class.pca_components", f"must be >= 1, got {oc.pca_components}")
  require(oc.elbo_samples >= 1, "one_class.elbo_samples", f"must be >= 1, got {oc.elbo_samples}")


# ---------------------------------------------------------------------------
# Training: the models of every normal class, one seed at a time.


def stacked_training_sets(data: OneClassData, seed: int) -> np.ndarray:
  """(classes, N, H, W, C): each class's training images, padded to the largest."""
  size = max(len(t) for t, _ in data.splits.values())
  return np.stack([data.train[0][pad_by_repeating(data.splits[c][0], size, seed)]
                   for c in data.normal])


def init_models(model, shape, classes, seed: int):
  """Stacked initial parameters and training keys, one per class (seeded by (seed, class))."""
  keys = jnp.stack([jax.random.fold_in(jax.random.PRNGKey(seed), c) for c in classes])
  init_keys, train_keys = jax.vmap(jax.random.split, out_axes=1)(keys)
  params = jax.vmap(lambda k: tree_of(model.init(k, jnp.zeros((1, *shape)), method="reconstruct"))
                    )(init_keys)
  return params, train_keys


def train_models(phase, params, images, rngs, *, runtime, vmap: bool):
  """Trains the stacked models on their stacked training sets; (params, per-class rows)."""
  if vmap:
    return run_phases_vmapped([phase], params, {"source": {"image": jnp.asarray(images)}}, rngs,
                              runtime=runtime)
  outs = [run_phases([phase], jax.tree.map(lambda a: a[i], params),
                     {"source": {"image": jnp.asarray(images[i])}}, rngs[i], runtime=runtime)
          for i in range(len(images))]
  return jax.tree.map(lambda *a: jnp.stack(a), *[p for p, _ in outs]), [r for _, r in outs]


def vmapped(config, runtime) -> bool:
  """The one-program form runs the scan body; where the runner resolves to per-batch steps
  (conv families on CPU: convolutions inside a scan are ~20× slower, BENCHMARKS.md) the
  models train one by one, as the transfer sweep does with its seeds."""
  return bool(config.one_class.vmap) and runtime.runner == "scan"


def _trained(config, model, data, seed: int, workdir: Path):
  """(stacked models of ``seed``, training seconds, whether vmapped): restored from its
  checkpoint (seconds and mode None), or trained and saved."""
  pcfg = config.pretrain
  params, rngs = init_models(model, data.shape, data.normal, pcfg.seed * 1000 + seed)
  store = CheckpointStore(workdir / "one_class" / "checkpoints" / f"seed{seed}", keep=1)
  found = store.restore(lambda _: params)
  if found is not None:
    store.close()
    return found[1], None, None
  loss, values = make_loss(config.objective.name, model, config.objective)
  phase = Phase("one_class", loss, (("images", "source", pcfg.batch_size),), pcfg.epochs,
                Optim.from_config(pcfg), values=values)
  images = stacked_training_sets(data, data_seed(config, seed))
  runtime = runtime_from_config(config, "pretrain", tuple(data.shape))
  together = vmapped(config, runtime)
  start = time.perf_counter()
  params, rows = train_models(phase, params, images, rngs, runtime=runtime, vmap=together)
  jax.block_until_ready(params)
  seconds = time.perf_counter() - start
  _log_training(workdir, seed, data.normal, rows)
  store.save(pcfg.epochs, params)
  store.close()
  return params, seconds, together


def data_seed(config, seed: int) -> int:
  return config.data.split_seed * 1000 + seed


def _log_training(workdir: Path, seed: int, classes, rows) -> None:
  log_ = JsonlLog(workdir / "metrics" / "one_class" / f"seed{seed}.jsonl")
  log_.extend([{**r, "class": c, "seed": seed} for c, rs in zip(classes, rows) for r in rs])
  for c, rs in zip(classes, rows):
    tb = TensorBoard(workdir / "tensorboard" / "one_class" / f"class{c}_seed{seed}")
    for r in rs:
      tb.scalars(r, int(r["epoch"]))
    tb.close()


# ---------------------------------------------------------------------------
# Scoring and the protocol's metrics.


def score_models(config, model, params, data: OneClassData, seed: int) -> tuple[list, dict]:
  """(rows, test scores): every registered score of every class's model on the test set."""
  oc = config.one_class
  x_test, y_test = data.test
  rows, scores = [], {}
  for i, c in enumerate(data.normal):
    train, val = data.splits[c]
    ctx = anomaly.ScoreContext(model, jax.tree.map(lambda a: a[i], params), data.train[0][train],
                               jax.random.fold_in(jax.random.PRNGKey(seed), c), oc.knn_k,
                               oc.elbo_samples)
    for name in oc.scores:
      fn = anomaly.SCORES.get(name).fn
      test_scores = fn(ctx, x_test)
      rows.append(_row(c, seed, name, "autoencoder", test_scores, y_test != c,
                       fn(ctx, data.train[0][val]), oc.fpr))
      scores[f"{name}/{c}"] = test_scores.astype(np.float32)
  return rows, scores


def _row(c, seed, method, kind, test_scores, is_anomaly, val_scores, fpr) -> dict:
  threshold = anomaly.threshold_at_fpr(val_scores, fpr)
  return {"class": int(c), "seed": int(seed), "method": method, "kind": kind,
          **anomaly.detection_metrics(test_scores, is_anomaly),
          **anomaly.decision_metrics(test_scores, is_anomaly, threshold), "threshold": threshold}


def score_baselines(config, data: OneClassData, seed: int) -> tuple[list, dict]:
  oc = config.one_class
  flat = lambda x: x.reshape(len(x), -1)
  x_test, y_test = flat(data.test[0]), data.test[1]
  rows, scores = [], {}
  for name in oc.baselines:
    entry = anomaly.BASELINES.get(name)
    if seed > 0 and not entry.info.get("seeded"):
      continue  # deterministic: one run
    for c in data.normal:
      train, val = data.splits[c]
      both = entry.fn(flat(data.train[0][train]), np.concatenate([x_test, flat(data.train[0][val])]),
                      seed, oc)
      test_scores, val_scores = both[: len(x_test)], both[len(x_test):]
      rows.append(_row(c, seed, name, "baseline", test_scores, y_test != c, val_scores, oc.fpr))
      scores[f"{name}/{c}"] = test_scores.astype(np.float32)
  return rows, scores


# ---------------------------------------------------------------------------
# The run.


@TASKS.register("one_class", load=load, check=check, default_config=default_config)
def run(config, workdir, data: OneClassData, *, progress: bool = True) -> dict:
  """One autoencoder per normal class (vmapped), scored on the whole test set; tables, figures."""
  workdir = Path(workdir)
  model = build_autoencoder(config.model, data.shape, model_kind(config.objective.name))
  cells = JsonlLog(workdir / "results" / "cells.jsonl")
  cells.repair()
  scores_dir = workdir / "results" / "scores"
  scores_dir.mkdir(parents=True, exist_ok=True)
  timing = _read_json(workdir / "results" / "timing.json")
  done = {(r["seed"], r["kind"]) for r in cells.read()}
  for seed in range(config.one_class.seeds):
    if (seed, "autoencoder") not in done:
      params, seconds, together = _trained(config, model, data, seed, workdir)
      if seconds is not None:
        timing[f"seed{seed}"] = {"seconds": seconds, "vmap": together,
                                 "models": len(data.normal), "epochs": config.pretrain.epochs}
        (workdir / "results" / "timing.json").write_text(json.dumps(timing, indent=2))
      rows, scores = score_models(config, model, params, data, seed)
      np.savez(scores_dir / f"autoencoder_seed{seed}.npz", **scores)
      cells.extend(rows)
      log.info("one-class seed %d: mean AUROC %s", seed, _mean_by_method(rows))
    if (seed, "baseline") not in done and config.one_class.baselines:
      rows, scores = score_baselines(config, data, seed)
      if rows:
        np.savez(scores_dir / f"baselines_seed{seed}.npz", **scores)
        cells.extend(rows)
  return _report(config, workdir, data, cells.read(), model, timing)


def _read_json(path: Path) -> dict:
  return json.loads(path.read_text()) if path.exists() else {}


def _mean_by_method(rows) -> dict:
  out = {}
  for r in rows:
    out.setdefault(r["method"], []).append(r["auroc"])
  return {k: round(float(np.mean(v)) * 100, 2) for k, v in out.items()}


def _report(config, workdir: Path, data: OneClassData, rows, model, timing) -> dict:
  oc, classes = config.one_class, list(data.normal)
  methods = list(oc.scores) + list(oc.baselines)
  rows = [r for r in rows if r["seed"] < oc.seeds and r["method"] in methods and r["class"] in classes]
  reference = ({config.report.reference_name: list(config.report.reference)}
               if config.report.reference_name and len(config.report.reference) == len(classes)
               else None)
  caption = (f"One-class anomaly detection on {data.name} ({data.route}): test AUROC × 100 per "
             f"normal class (mean over {oc.seeds} seeds) and the mean over classes ± 95% CI over "
             f"seeds. Autoencoder: {config.model.family}/{config.objective.name}, "
             f"{config.pretrain.epochs} epochs per class; baselines on raw pixels. "
             f"Test set: {len(data.test[1])} images.")
  table = caption + "\n\n" + auroc_table(rows, classes, methods, reference)
  ap = auroc_table([{**r, "auroc": r["average_precision"]} for r in rows], classes, methods)
  table_ap = "Average precision × 100 (anomalies positive):\n\n" + ap
  out = workdir / "results"
  (out / "results.md").write_text(table + "\n\n" + table_ap + "\n")
  summary = summarise(rows, metric="auroc", keys=("method", "class")) + summarise(
      class_means(rows, classes), metric="auroc", keys=("method",))
  (out / "results.json").write_text(json.dumps({"summary": summary, "timing": timing}, indent=2))
  _figures(config, workdir, data, model)
  return {"table": table, "summary": summary, "rows": rows, "timing": timing,
          "artifacts": ["results/results.md", "results/results.json", "results/cells.jsonl",
                        "results/scores/*.npz", "results/{roc,histograms,strangest}.png",
                        "metrics/one_class/", "tensorboard/one_class/", "one_class/checkpoints/"]}


def _figures(config, workdir: Path, data: OneClassData, model) -> None:
  path = workdir / "results" / "scores" / "autoencoder_seed0.npz"
  if not path.exists():
    return
  scores = np.load(path)
  name = config.one_class.scores[0]
  by_class = {c: scores[f"{name}/{c}"] for c in data.normal}
  y = data.test[1]
  anomaly_figures.roc_curves(workdir / "results" / "roc.png", by_class, y, title=f"{data.name}: {name}")
  anomaly_figures.score_histograms(workdir / "results" / "histograms.png", by_class, y, title=name)
  anomaly_figures.strangest(workdir / "results" / "strangest.png", by_class, data.test[0], y,
                            k=config.report.num_top_images)
