"""Label budgets × strategies × seeds, resumable cell by cell.

Each finished cell is one JSON line in ``results/cells.jsonl``; a rerun skips
cells already there. The pretrained encoder is read once from the Orbax
checkpoint (encoder subtree only) and transplanted into every classifier.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from aetl_jax.data.splits import class_counts
from aetl_jax.data.transfer_split import TransferSplit, draw_target_labels
from aetl_jax.engine.driver import is_shared
from aetl_jax.engine.metrics_log import JsonlLog, TensorBoard
from aetl_jax.engine.phase import Optim
from aetl_jax.engine.runtime import Runtime
from aetl_jax.strategies.registry import (StrategyContext, build_strategy, needs_target_labels,
                                          target_model_kind)
from aetl_jax.transfer.cell import propagated_labels, run_cell, run_cells_vmapped, run_probe
from aetl_jax.transfer.encoder import load_encoder, load_head, strategy_model
from aetl_jax.models.registry import init_method
from aetl_jax.models.variables import tree_of

log = logging.getLogger(__name__)


def cells_log(workdir) -> JsonlLog:
  return JsonlLog(Path(workdir) / "results" / "cells.jsonl")


@dataclasses.dataclass
class SweepData:
  """The target task: images in [0, 1], labels, and where the pool and test are."""

  images: object
  labels: object
  split: TransferSplit
  num_classes: int
  # The labelled source, for strategies that train on it (domain adaptation); None: none.
  source_images: object = None
  source_labels: object = None


class Done(NamedTuple):
  cell: "_Cell"
  result: dict
  history: list
  seconds: float
  params: dict | None  # the trained classifier (None for closed-form probes)


@dataclasses.dataclass
class _Cell:
  seed: int
  strategy: object
  model: object
  params: dict
  data: dict  # streams
  splits: dict  # name -> (images, labels)
  rng: object
  info: dict
  labelled_at: tuple = ()  # (train, val) positions of the cell's labelled images in the pool


class Sweep:
  """Runs the cells of ``config.transfer`` that ``workdir`` does not hold yet."""

  def __init__(self, config, workdir, data: SweepData, ckpt_dir, runtime: Runtime):
    self.config, self.tcfg, self.workdir, self.d = config, config.transfer, Path(workdir), data
    self.runtime = runtime
    self.input_shape = tuple(data.images.shape[1:])
    self.ckpt_dir = ckpt_dir
    self.encoder = {}  # model kind -> (step, encoder, reinit)
    self._head = None  # the source classifier's head (strategies with init 'source')
    self.test = (jax.device_put(data.images[data.split.test]), data.labels[data.split.test])
    self.unlabelled = jax.device_put(data.images[data.split.target_pool])
    self._source = None  # the labelled source on the device, once a strategy reads it
    self._pool_at = np.full(len(data.labels), -1, np.int64)  # dataset index -> pool position
    self._pool_at[data.split.target_pool] = np.arange(len(data.split.target_pool))
    self.probe_cache = {}  # what probes fit on the pool without labels (embeddings), shared

  def model_for(self, name: str):
    return strategy_model(self.config, name, self.d.num_classes, self.input_shape)

  def pretrained(self, name: str, model, template):
    kind = target_model_kind(name)
    if kind not in self.encoder:
      self.encoder[kind] = load_encoder(self.config, self.ckpt_dir, template)
    return self.encoder[kind]

  def labelled_source(self) -> dict:
    if self._source is None:
      self._source = {"image": jax.device_put(self.d.source_images),
                      "label": jax.device_put(self.d.source_labels)}
    return self._source

  def source_head(self, template):
    if self._head is None:
      self._head = load_head(self.ckpt_dir, template)
    return self._head

  def cell_inputs(self, budget: int, name: str, seed: int) -> _Cell:
    """Labelled data, initial params and rng of one cell."""
    t, d = self.tcfg, self.d
    train_idx, val_idx = draw_target_labels(d.labels, d.split, per_class=budget,
                                            val_per_class=t.val_per_class,
                                            seed=t.label_seed + 1000 * seed + budget,
                                            num_classes=d.num_classes, validation=t.validation)
    init_key, train_key = jax.random.split(jax.random.PRNGKey(t.seed_offset + seed))
    model = self.model_for(name)
    params = tree_of(model.init(init_key, jnp.zeros((1, *self.input_shape)),
                                 method=init_method(model)))
    ctx = StrategyContext(name, t, model, params, Optim.from_config(t), budget=budget)
    strategy = build_strategy(name, ctx)
    step = reinit = None
    if strategy.init in ("pretrained", "source"):
      step, encoder, reinit = self.pretrained(name, model, params)
      params = {**params, "encoder": encoder}
    if strategy.init == "source":
      params = {**params, "head": self.source_head(params)}
    if strategy.start is not None:
      params = strategy.start(params)
    splits = {"train": (d.images[train_idx], d.labels[train_idx]),
              "val": (d.images[val_idx], d.labels[val_idx]), "test": self.test}
    data = {"target_labelled": {"image": d.images[train_idx], "label": d.labels[train_idx]},
            "target_unlabelled": {"image": self.unlabelled}}
    if "source_labelled" in _streams(strategy):
      data["source_labelled"] = self.labelled_source()
    info = {"train_per_class": class_counts(d.labels, train_idx, d.num_classes),
            "val_size": int(len(val_idx)), "checkpoint_step": step, "reinit": reinit}
    labelled_at = (self._pool_at[train_idx], self._pool_at[val_idx])
    if strategy.labels_from is not None:
      data["target_labelled"], found = self.propagated(strategy.labels_from, name, model, params,
                                                       splits, labelled_at)
      info.update(found)
    return _Cell(seed, strategy, model, params, data, splits, train_key, info, labelled_at)

  def propagated(self, probe: str, name: str, model, params, splits, labelled_at):
    """The labelled stream of a ``labels_from`` strategy: every pool image with the label
    the pool probe ``probe`` gives it on the pretrained encoder's codes, and the probe's
    report (+ ``propagated_pool_accuracy``: the share of pool labels right, read after the
    fact from labels no choice sees)."""
    encoder = self.pretrained(name, model, params)[1]
    labels, report = propagated_labels(
        probe, model, {**params, "encoder": encoder}, splits,
        (self.unlabelled, *labelled_at, self.probe_cache), num_classes=self.d.num_classes,
        cfg=self.tcfg)
    truth = self.d.labels[self.d.split.target_pool]
    report["propagated_pool_accuracy"] = float(np.mean(labels == truth))
    # the pool's images already on the device, one copy for every seed and cell
    return {"image": self.unlabelled, "label": labels}, report

  def run_one(self, budget, name, seed):
    c = self.cell_inputs(budget, name, seed)
    start = time.perf_counter()
    if c.strategy.probe is not None:
      pool = (self.d.images[self.d.split.target_pool], *c.labelled_at, self.probe_cache)
      result = run_probe(c.strategy, c.model, c.params, c.splits, num_classes=self.d.num_classes,
                         cfg=self.tcfg, pool=pool)
      return [Done(c, result, [], time.perf_counter() - start, None)]
    cell_dir = None
    if self.tcfg.checkpoint_every:
      cell_dir = self.workdir / "transfer" / f"budget{budget}_{name}_seed{seed}"
    data = {k: jax.device_put(v) for k, v in c.data.items() if k in _streams(c.strategy)}
    params, result, history = run_cell(c.strategy, c.model, c.params, data, c.splits, c.rng,
                                       runtime=self.runtime, cell_dir=cell_dir,
                                       checkpoint_every=self.tcfg.checkpoint_every,
                                       pad=_padded_streams(c.strategy),
                                       val_points=self.tcfg.val_points)
    return [Done(c, result, history, time.perf_counter() - start, params)]

  def run_group(self, budget, name, seeds):
    """The seeds of one (budget, strategy) as one vmapped program."""
    cells = [self.cell_inputs(budget, name, seed) for seed in seeds]
    strategy = cells[0].strategy
    if strategy.probe is not None:
      return [r for seed in seeds for r in self.run_one(budget, name, seed)]
    stack = lambda trees: jax.tree.map(_stacked, *trees)
    streams = _streams(strategy)
    shared = tuple(s for s in SHARED_STREAMS if s in streams)
    if strategy.labels_from is not None:  # one relabelled pool: its images, per-seed labels
      shared += ("target_labelled/image",)
    data = {k: _seeds_of(k, [c.data[k] for c in cells], shared, stack) for k in streams}
    splits = {k: stack([c.splits[k] for c in cells]) for k in ("train", "val")}
    splits["test"] = self.test
    start = time.perf_counter()
    params, results, rows = run_cells_vmapped(
        strategy, cells[0].model, stack([c.params for c in cells]), data, splits,
        jnp.stack([c.rng for c in cells]), runtime=self.runtime, shared=shared,
        pad=_padded_streams(strategy), val_points=self.tcfg.val_points)
    seconds = (time.perf_counter() - start) / len(seeds)
    return [Done(c, r, h, seconds, jax.tree.map(lambda a, k=k: a[k], params))
            for k, (c, r, h) in enumerate(zip(cells, results, rows))]


def _stacked(*xs):
  """The seeds' arrays stacked: host arrays on the host (a device stack compiles for every
  size: every label budget), device arrays on the device."""
  return np.stack(xs) if isinstance(xs[0], np.ndarray) else jnp.stack(xs)


# Streams every seed of a cell group reads alike (not stacked per seed).
SHARED_STREAMS = ("target_unlabelled", "source_labelled")


def _padded_streams(strategy) -> tuple:
  """The streams whose size is the label budget, padded to their size bucket so that budgets
  of one bucket share their compiled programs (``engine.loop.bucket``); a ``labels_from``
  strategy's labelled stream is the whole pool, whatever the budget."""
  return () if strategy.labels_from is not None else ("target_labelled",)


def _seeds_of(name: str, streams: list, shared: tuple, stack):
  """One stream for a group of seeds: the first seed's when ``name`` is shared, else each
  leaf stacked over the seeds, except the leaves shared as ``name/leaf``."""
  if is_shared(shared, name):
    return streams[0]
  return {n: streams[0][n] if is_shared(shared, name, n) else stack([s[n] for s in streams])
          for n in streams[0]}


def _streams(strategy) -> set:
  return {s for p in strategy.phases for s in p.streams}


def run_sweep(config, workdir, data: SweepData, *, ckpt_dir, runtime: Runtime,
              progress: bool = True, save=None) -> list[dict]:
  """Runs the cells ``workdir`` does not hold; ``save(budget, strategy, seed, model, params,
  result)`` receives every trained classifier before its cell is recorded."""
  tcfg = config.transfer
  sweep = Sweep(config, workdir, data, ckpt_dir, runtime)
  results = cells_log(workdir)
  histories = JsonlLog(Path(workdir) / "metrics" / "finetune.jsonl")
  results.repair()
  done = {(r["budget"], r["strategy"], r["seed"]) for r in unique_cells(results.read())}
  # A history written just before a kill whose cell result was not: drop it.
  histories.keep(lambda r: (r["budget"], r["strategy"], r["seed"]) in done)
  cells = [(b, s, seed) for b in tcfg.budgets for s in tcfg.strategies for seed in range(tcfg.seeds)
           if b > 0 or not needs_target_labels(s)]  # budget 0: strategies that need no labels
  todo = [c for c in cells if c not in done]
  if done:
    log.info("sweep: %d of %d cells already finished, running %d", len(cells) - len(todo),
             len(cells), len(todo))
  groups = {}
  for budget, name, seed in todo:
    groups.setdefault((budget, name), []).append(seed)
  # The vmapped program is one scan; where the runner resolves to per-batch
  # (conv families on CPU: convolutions inside a scan are ~20x slower there,
  # BENCHMARKS.md) the seeds run one after another instead.
  together = tcfg.vmap_seeds and not tcfg.checkpoint_every and runtime.runner == "scan"
  bar = tqdm(total=len(todo), desc="transfer", disable=not progress, leave=False)
  for (budget, name), seeds in groups.items():
    bar.set_postfix_str(f"{name} k={budget} seeds={seeds}", refresh=False)
    if together and len(seeds) > 1:
      _record(results, histories, budget, name, sweep.run_group(budget, name, seeds), workdir, save)
    else:
      for seed in seeds:
        _record(results, histories, budget, name, sweep.run_one(budget, name, seed), workdir, save)
    bar.update(len(seeds))
  bar.close()
  return unique_cells(results.read())


def unique_cells(rows: list[dict]) -> list[dict]:
  """One row per (budget, strategy, seed): a duplicate (a second writer, a replayed log) is
  dropped with a warning instead of being counted as another seed."""
  seen, out = set(), []
  for r in rows:
    key = (r["budget"], r["strategy"], r["seed"])
    if key in seen:
      log.warning("sweep: cell %s appears twice in results/cells.jsonl; counting it once", key)
      continue
    seen.add(key)
    out.append(r)
  return out


def _tensorboard(workdir, budget, name, seed, history, result) -> None:
  """The cell's curves (every phase, every term) and its final accuracies as TensorBoard events."""
  tb = TensorBoard(Path(workdir) / "tensorboard" / "transfer" / f"budget{budget}_{name}_seed{seed}")
  for row in history:
    tb.scalars({f"{row['phase']}/{k}": v for k, v in row.items() if k != "phase"}, row["epoch"])
  last = history[-1]["epoch"] if history else 0
  tb.scalars({k: v for k, v in result.items() if k.endswith("_accuracy") and v is not None}, last)
  tb.close()


def _record(results: JsonlLog, histories: JsonlLog, budget, name, done, workdir, save) -> None:
  """Logs the cells of one group in one write each (and saves their classifiers first).

  A kill never splits a vmapped group, so a resumed run reruns whole groups
  with the same program and gets bitwise the numbers of an uninterrupted run.
  """
  for d in done:
    if save is not None and d.params is not None:
      save(budget, name, d.cell.seed, d.cell.model, d.params, d.result)
  histories.extend([{"budget": budget, "strategy": name, "seed": d.cell.seed, "history": d.history}
                    for d in done])
  results.extend([{"budget": budget, "strategy": name, "seed": d.cell.seed, **d.cell.info,
                   "seconds": round(d.seconds, 3), **d.result} for d in done])
  for d in done:
    _tensorboard(workdir, budget, name, d.cell.seed, d.history, d.result)
