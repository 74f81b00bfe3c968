"""One sweep cell: a strategy trained on one labelled subset, then scored.

:func:`run_cell` trains one seed through the engine's driver (with Orbax
checkpoints when asked); :func:`run_cells_vmapped` trains K seeds of the same
(budget, strategy) as one vmapped program of the same phases. Both score
with :func:`score`, and probes fit on frozen features with
:func:`run_probe`.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax

from aetl_jax.core.rules import freeze_and_multipliers, tree_paths
from aetl_jax.core.statistics import statistics_mask
from aetl_jax.engine.driver import seed_shapes, resolve_lengths, run_phases, run_phases_vmapped
from aetl_jax.engine.loop import bucket
from aetl_jax.engine.metrics_log import JsonlLog
from aetl_jax.engine.store import CheckpointStore
from aetl_jax.evaluation.batched import batched_apply
from aetl_jax.strategies.probes import PROBES
from aetl_jax.strategies.registry import Strategy
from aetl_jax.models.variables import variables


log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=32)
def _predict(model):
  return jax.jit(jax.vmap(lambda params, x: model.apply(variables(params), x)))


@functools.lru_cache(maxsize=32)
def _val_metrics(model):
  """``(params, (images, labels)) -> {val_loss, val_accuracy}``: the cell's validation curve
  (pure: the vmapped seeds compute it inside their program)."""
  def metrics(params, val):
    x, y = val
    logits = model.apply(variables(params), x)
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
    return {"val_loss": loss, "val_accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}
  return metrics


def _validation(model, splits, points: int) -> dict:
  """The driver's validation-curve keywords (none without validation labels): read after at
  most ``points`` epochs of each phase, its last included (0: every epoch)."""
  x, y = splits["val"]
  if y.shape[-1] == 0:
    return {}
  return {"epoch_metrics": _val_metrics(model), "epoch_data": (jnp.asarray(x), jnp.asarray(y)),
          "curve_points": points}


@functools.lru_cache(maxsize=32)
def _encode(model):
  return jax.jit(lambda params, x: model.apply(variables(params), x, method="encode"))


def score(model, params, splits: dict) -> list[dict]:
  """Accuracy on each split for K stacked parameter trees: K dicts ``{split}_accuracy``, and
  the final ``train_loss`` (mean cross-entropy of the trained model on its labelled set, in
  inference mode).

  ``splits[name] = (images, labels)`` shared by every seed, or stacked with a
  leading seed axis (``labels.ndim == 2``); an empty split scores None.
  """
  k = jax.tree.leaves(params)[0].shape[0]
  out = [{} for _ in range(k)]
  for name, (x, y) in splits.items():
    if y.shape[-1] == 0:
      for o in out:
        o[f"{name}_accuracy"] = None
        if name == "train":
          o["train_loss"] = None
      continue
    n = y.shape[-1]
    if y.ndim == 1:
      x, y = jnp.broadcast_to(x, (k, *x.shape)), np.broadcast_to(y, (k, *y.shape))
    else:  # a seed's own images (its labelled set): padded on the host to their size bucket,
      # one program for every budget of the bucket
      x = np.pad(np.asarray(x), [(0, 0), (0, bucket(n) - n)] + [(0, 0)] * (x.ndim - 2))
    logits = np.asarray(_predict(model)(params, x), np.float64)[:, :n]
    y = np.asarray(y)
    acc = np.mean(np.argmax(logits, -1) == y, axis=1)
    for o, a in zip(out, acc):
      o[f"{name}_accuracy"] = float(a)
    if name == "train":
      logp = logits - logits.max(-1, keepdims=True)
      logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
      nll = -np.take_along_axis(logp, y[..., None], -1)[..., 0].mean(-1)
      for o, v in zip(out, nll):
        o["train_loss"] = float(v)
  return out


def _stack1(tree):
  return jax.tree.map(lambda a: jnp.asarray(a)[None], tree)


def parameter_counts(phase, params) -> dict:
  """How many parameters ``phase`` trains and how many it keeps frozen (running statistics
  count as frozen: they are never differentiated); the frozen paths go to the debug log."""
  mask = freeze_and_multipliers(params, phase.rules)[0]
  if phase.adversary is not None:
    other = freeze_and_multipliers(params, phase.adversary.rules)[0]
    mask = jax.tree.map(lambda a, b: bool(a) or bool(b), mask, other)
  stats = statistics_mask(params)
  sizes = [int(np.prod(np.shape(x))) for x in jax.tree.leaves(params)]
  trains = [bool(m) and not s for m, s in zip(jax.tree.leaves(mask), jax.tree.leaves(stats))]
  frozen = [p for p, t in zip(tree_paths(params), trains) if not t]
  log.debug("phase %s freezes %d of %d parameter arrays: %s (rules %s)", phase.name, len(frozen),
            len(sizes), ", ".join(frozen) or "none", phase.rules)
  trainable = sum(n for n, t in zip(sizes, trains) if t)
  return {"trainable_parameters": trainable, "frozen_parameters": sum(sizes) - trainable}


def _phase_log(phases, rows, params, resumed_from: int = 0) -> list[dict]:
  """Per phase (lengths resolved for the cell's data): its name, epochs, whether it trained on
  cached features, its trainable and frozen parameter counts, its last epoch's training loss."""
  out, first = [], 0
  for phase in phases:
    mine = [r for r in rows if r["phase"] == phase.name]
    entry = {"phase": phase.name, "epochs": phase.epochs,
             "cached_features": phase.subtree is not None, **parameter_counts(phase, params)}
    if mine:
      entry["final_train_loss"] = mine[-1]["loss"]
    if first + phase.epochs <= resumed_from:
      entry["resumed"] = True
    out.append(entry)
    first += phase.epochs
  return out


def run_cell(strategy: Strategy, model, params, data: dict, splits: dict, rng, *, runtime,
             cell_dir=None, checkpoint_every: int = 0, on_phase_end=None, on_epoch=None,
             pad=(), val_points: int = 0):
  """Trains one seed; returns (params, result, per-epoch history).

  The history's rows carry the validation curve (``val_loss``, ``val_accuracy``) at most
  ``val_points`` times per phase, at its last epoch always (0: every epoch).
  With ``cell_dir`` the cell checkpoints at every phase end and every
  ``checkpoint_every`` epochs, its history goes to ``cell_dir/history.jsonl``
  and a rerun resumes from both. The streams named in ``pad`` are padded to their size
  bucket (``engine.driver.run_phases``: budgets of one bucket share their programs).
  """
  store = log = None
  if cell_dir is not None:
    store = CheckpointStore(cell_dir / "checkpoints", every=checkpoint_every, keep=2)
    log = JsonlLog(cell_dir / "history.jsonl")
  params, rows = run_phases(strategy.phases, params, data, rng, runtime=runtime, store=store,
                            log=log, label=strategy.name, on_phase_end=on_phase_end,
                            on_epoch=on_epoch, pad=pad,
                            **_validation(model, splits, val_points))
  history = log.read() if log is not None else rows
  phases = resolve_lengths(strategy.phases, data)
  result = {**score(model, _stack1(params), splits)[0],
            "phases": _phase_log(phases, history, params)}
  return params, result, history


def run_cells_vmapped(strategy: Strategy, model, params, data: dict, splits: dict, rngs, *,
                      runtime, shared=(), pad=(), val_points: int = 0):
  """K seeds as one program; every leaf of ``params``/``rngs`` has a seed axis, and so
  does every stream of ``data`` except the streams (or ``stream/leaf``) named in ``shared``;
  ``pad`` and ``val_points`` as in :func:`run_cell` (the same rows)."""
  params, rows = run_phases_vmapped(strategy.phases, params, data, rngs, runtime=runtime,
                                    label=strategy.name, shared=shared, pad=pad,
                                    **_validation(model, splits, val_points))
  results = score(model, params, splits)
  phases = resolve_lengths(strategy.phases, seed_shapes(data, shared))
  first = jax.tree.map(lambda a: a[0], params)
  for result, seed_rows in zip(results, rows):
    result.update(phases=_phase_log(phases, seed_rows, first), vmapped_seeds=len(rows))
  return params, results, rows


def run_probe(strategy: Strategy, model, params, splits: dict, *, num_classes: int, cfg,
              pool=None, **probe_kw) -> dict:
  """Fits ``strategy.probe`` on frozen encoder features of each split (on the pixels for a
  probe registered with ``inputs='pixels'``); a probe that reads the pool gets ``pool = (pool images, train positions, val positions, cache)`` as features
  (``probe_kw``: further keywords of the probe)."""
  entry = PROBES.get(strategy.probe)
  pixels = entry.info.get("inputs") == "pixels"

  def features(x):
    if len(x) == 0:
      return None
    if pixels:
      return np.asarray(x, np.float32).reshape(len(x), -1)
    return np.asarray(batched_apply(_encode(model), params, jnp.asarray(x)))

  feats = {name: (features(x), np.asarray(y)) for name, (x, y) in splits.items()}
  dim = feats["train"][0].shape[1]
  feats = {n: (np.zeros((0, dim), np.float32) if f is None else f, y) for n, (f, y) in feats.items()}
  kw = {}
  if entry.info.get("pool"):
    from aetl_jax.strategies.manifold import ProbePool
    images, train_at, val_at, cache = pool
    kw["pool"] = ProbePool(features(images), train_at, val_at, cache)
  return entry.fn(feats["train"], feats["val"], feats["test"], num_classes=num_classes, cfg=cfg,
                  **kw, **probe_kw)


def propagated_labels(probe: str, model, params, splits: dict, pool, *, num_classes: int,
                      cfg) -> tuple[np.ndarray, dict]:
  """(a label for every pool image, what the probe reported): the pool probe ``probe``
  fitted on the codes of ``params``' encoder; the cell's labelled training images keep their
  own labels. The report's keys start with ``propagated_`` (its test accuracy: the probe's
  own score, before any training)."""
  result = run_probe(Strategy("propagation", "pretrained", probe=probe), model, params, splits,
                     num_classes=num_classes, cfg=cfg, pool=pool, pool_labels=True)
  labels = np.array(result.pop("pool_predictions"), dtype=np.asarray(splits["train"][1]).dtype)
  labels[pool[1]] = splits["train"][1]
  return labels, {f"propagated_{k}": v for k, v in result.items()}


def train_strategy(name: str, tcfg, model, params, splits: dict, rng, *, runtime=None,
                   cache_features: bool = True, cell_dir=None, checkpoint_every: int = 0,
                   num_classes: int | None = None, on_phase_end=None, on_epoch=None):
  """Builds strategy ``name`` from the transfer section ``tcfg`` and trains one seed.

  ``params`` already hold the encoder the strategy starts from; ``splits`` maps
  'train', 'val', 'test' to (images, labels). Returns (params, result, history).
  The sweep does the same for every cell; this is the entry point for one. Here the pool of
  probes and of ``labels_from`` strategies is the train and validation images, and the
  latter's labels come from the codes of ``params``' encoder.
  """
  from aetl_jax.engine.phase import Optim
  from aetl_jax.engine.runtime import make_runtime
  from aetl_jax.strategies.registry import StrategyContext, build_strategy
  runtime = runtime or make_runtime(runner="scan")
  classes = num_classes or model.num_classes
  ctx = StrategyContext(name, tcfg, model, params, Optim.from_config(tcfg), cache_features,
                        budget=len(splits["train"][1]) // classes)
  strategy = build_strategy(name, ctx)
  # The pool: the labelled images (no others are given here).
  n_train, n_val = len(splits["train"][1]), len(splits["val"][1])
  pool = (np.concatenate([splits["train"][0], splits["val"][0]]), np.arange(n_train),
          n_train + np.arange(n_val), {})
  if strategy.probe is not None:
    return params, run_probe(strategy, model, params, splits, cfg=tcfg, pool=pool,
                             num_classes=classes), []
  x, y = splits["train"]
  if strategy.labels_from is not None:
    y, _ = propagated_labels(strategy.labels_from, model, params, splits, pool,
                             num_classes=classes, cfg=tcfg)
    x = pool[0]
  data = {"target_labelled": {"image": jnp.asarray(x), "label": jnp.asarray(y)},
          "target_unlabelled": {"image": jnp.asarray(x)}}
  data = {k: v for k, v in data.items() if k in {s for p in strategy.phases for s in p.streams}}
  return run_cell(strategy, model, params, data, splits, rng, runtime=runtime, cell_dir=cell_dir,
                  checkpoint_every=checkpoint_every, on_phase_end=on_phase_end, on_epoch=on_epoch,
                  val_points=int(tcfg.get("val_points", 0)))
