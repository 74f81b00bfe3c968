"""The one driver: runs a list of phases over named data streams.

Pretraining is one phase; a transfer strategy is a function that returns
phases; both run here. :func:`run_phases` goes epoch by epoch (NaN guard,
evaluation hook, JSON-lines log, Orbax checkpoints and resume);
:func:`run_phases_vmapped` runs the same programs as one pure function of
``(params, data, rng)``, ``jax.vmap``-ed over seeds. Epoch ``e`` (counted
over all phases) uses ``fold_in(rng, e)`` in both, so they agree.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from aetl_jax.engine.guard import check_finite, first_nonfinite
from aetl_jax.engine.metrics_log import JsonlLog
from aetl_jax.engine.phase import (Phase, Program, build_program, compile_key, merge_subtree,
                                   steps_per_epoch, tree_spec)
from aetl_jax.engine.runtime import Runtime
from aetl_jax.engine.store import CheckpointStore
from aetl_jax.engine.loop import (Padded, bucket, bucket_floor, is_tokens, num_examples, when)


class HostStream:
  """A stream read from disk: ``epoch(e)`` yields device batches; ``size`` examples."""

  def __init__(self, epoch: Callable[[int], object], size: int):
    self.epoch = epoch
    self.size = size


def _size(stream) -> int:
  return stream.size if isinstance(stream, HostStream) else num_examples(stream)


def check_streams(phases: Sequence[Phase], data: dict) -> None:
  """Every stream a phase reads is provided (before anything compiles)."""
  for phase in phases:
    missing = [s for s in phase.streams if s not in data]
    if missing:
      raise ValueError(f"phase '{phase.name}' reads stream(s) {', '.join(missing)} but the "
                       f"experiment provides: {', '.join(data) or 'none'}")


def resolve_lengths(phases: Sequence[Phase], data: dict) -> tuple[Phase, ...]:
  """The phases with their lengths for these data streams (see :meth:`Phase.for_size`)."""
  return tuple(p.for_size(_size(data[p.streams[0]])) for p in phases)


def paddable(phases: Sequence[Phase], data: dict, streams: Sequence[str],
             runtime: Runtime) -> dict:
  """``{stream: its size}`` of the ``streams`` to pad to their :func:`bucket
  <aetl_jax.engine.loop.bucket>` (streams whose size varies between calls: a label budget):
  those the phases read from memory, not token ids (batched by length), at least a batch
  long where they come first, on one device."""
  if runtime.launcher.kind != "jit":
    return {}
  out = {}
  for name in streams:
    stream = data.get(name)
    if stream is None or isinstance(stream, HostStream) or not any(
        name in p.streams for p in phases):
      continue
    n = _size(stream)
    if is_tokens(stream) or any(
        p.streams[0] == name and n < p.feed[0].batch_size for p in phases):
      continue
    out[name] = n
  return out


def _padded(tree, length: int, axis: int = 0):
  """Every leaf of ``tree`` with zeros appended along ``axis`` to ``length`` (on the host: a
  label budget's stream is small, and a device pad would compile for every size)."""
  def pad(a):
    a = np.asarray(a)
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, length - a.shape[axis])
    return np.pad(a, widths)
  return jax.tree.map(pad, tree)


def _pad_streams(phases, data: dict, pad: Sequence[str], runtime: Runtime):
  """(``data`` with the streams of ``pad`` that :func:`paddable` allows padded to their
  bucket, ``{stream: its real size}``)."""
  counts = {k: np.int32(n) for k, n in paddable(phases, data, pad, runtime).items()}
  return _pad_to_buckets(data, tuple((k, None) for k in counts), counts), counts


def with_counts(data: dict, counts: dict) -> dict:
  """``data`` with its streams named in ``counts`` as :class:`Padded` (their real sizes)."""
  return {k: Padded(v, counts[k]) if k in counts else v for k, v in data.items()}


def programs(phases, params, data, runtime: Runtime) -> list[Program]:
  spec = tree_spec(params)
  return [build_program(p, spec, _size(data[p.streams[0]]), runtime) for p in phases]


def _spans(phases):
  start = 0
  for phase in phases:
    yield phase, start, start + phase.epochs
    start += phase.epochs


def _row(phase, epoch, metrics: dict, prefix: str) -> dict:
  return {"phase": phase.name, "epoch": epoch, **{prefix + k: v for k, v in metrics.items()}}


def curve_due(epoch, epochs, points):
  """Whether the curve of ``epoch_metrics`` is read after ``epoch`` (0-based) of a phase of
  ``epochs``: after at most ``points`` epochs spread evenly over the phase, the last always
  (``points`` 0: every epoch). Python ints on the sequential path, arrays in the vmapped
  cell: the same rows on both."""
  return (points == 0) | (epochs <= points) | ((epoch + 1) * points // epochs
                                               > epoch * points // epochs)


def run_phases(phases: Sequence[Phase], params, data: dict, rng, *, runtime: Runtime,
               store: CheckpointStore | None = None, log: JsonlLog | None = None,
               evaluate: Callable[[dict], dict] | None = None, eval_every: int = 0,
               metric_prefix: str = "", label: str = "",
               on_phase_end: Callable | None = None, on_epoch: Callable | None = None,
               epoch_metrics: Callable | None = None, epoch_data=None, curve_points: int = 0,
               pad: Sequence[str] = ()):
  """Trains ``params`` through ``phases``; returns (params, per-epoch rows).

  ``data`` maps stream names to pytrees of arrays (or :class:`HostStream`).
  With ``store``, a rerun resumes from its latest intact checkpoint; ``log``
  is truncated to the epochs before that point and receives every new row.
  ``evaluate(params, epoch)`` adds keys to the row every ``eval_every``
  epochs and after the last one; ``epoch_metrics(params, epoch_data)`` (pure, jittable: a
  cell's validation loss and accuracy) adds its keys to the rows of at most ``curve_points``
  epochs per phase, the last included (:func:`curve_due`; 0: every row), on both paths.
  ``on_phase_end(name, params_at_start, params_at_end)`` sees every phase boundary this run
  trains through; ``on_epoch(row)`` every epoch.
  The streams named in ``pad`` are padded to their size bucket (:func:`paddable`): runs
  over budgets of one bucket share their compiled programs, with the unpadded run's numbers.
  """
  check_streams(phases, data)
  phases = resolve_lengths(phases, data)
  progs = programs(phases, params, data, runtime)
  data, counts = _pad_streams(phases, data, pad, runtime)
  total = sum(p.epochs for p in phases)
  per_epoch = _jitted(epoch_metrics)
  start, params, state = _resume_run(store, log, progs, params)
  rows = []
  for prog, (phase, first, last) in zip(progs, _spans(phases)):
    if last <= start:
      continue
    pdata = with_counts(phase.prepare(params, data) if phase.prepare else data, counts)
    start_params = params
    # The epoch runner donates its state: train on a copy so the caller's trees survive.
    state = runtime.launcher.replicate(
        state if state is not None else prog.init_state(jax.tree.map(jnp.copy, params)))
    lo = max(first, start)
    stops = (eval_every if evaluate else 0, store.every if store is not None else 0)
    curve = (per_epoch, epoch_data, curve_points)
    for epoch, metrics, state in _phase_epochs(prog, state, pdata, params, rng, lo, first, last,
                                               runtime, stops, curve,
                                               f"{label}/{phase.name}" if label else phase.name):
      done = epoch + 1
      rows.append(_row(phase, epoch, metrics, metric_prefix))
      if evaluate and (done == total or (eval_every and done % eval_every == 0)):
        rows[-1].update({f"eval_{k}": v for k, v in
                         evaluate(_merged(prog, params, state, runtime), epoch).items()})
      if log is not None:
        log.append(rows[-1])
      if on_epoch is not None:
        on_epoch(rows[-1])
      if store is not None and store.due(done, done == last):
        store.save(done, _snapshot(prog, params, state, runtime))
    params, state = _merged(prog, params, state, runtime), None
    if on_phase_end is not None:
      on_phase_end(phase.name, start_params, params)
  if store is not None:
    store.close()
  return params, rows


# Epochs of at most this many steps run several to a call (:func:`_phase_epochs`).
_CHUNK_STEPS = 256


def _phase_epochs(prog: Program, state, data, params, rng, lo: int, first: int, last: int,
                  runtime: Runtime, stops: tuple, curve: tuple, label: str):
  """Trains epochs [lo, last) of the phase spanning [first, last); yields (epoch, its row's
  metrics, the state after it, or None where it is not at hand). Short epochs (a 1,000-step
  phase over 20 labels is 1,000 one-step epochs) run up to :data:`_CHUNK_STEPS` steps' worth
  to a call (:func:`_chunk_program`: no host round trip per epoch), each call ending where
  the caller needs the state: every ``stops`` epochs (evaluation, checkpoints; 0: none) and
  at the phase's end. The rows are those of one epoch to a call (the same programs' numbers,
  the non-finite guard, the validation curve ``curve = (epoch_metrics, its data, points)``)."""
  per_epoch, epoch_data, points = curve
  lead = data[prog.phase.streams[0]]
  chunk = 0
  if runtime.launcher.kind == "jit" and runtime.runner == "scan" and not any(
      isinstance(data[s], HostStream) for s in prog.phase.streams):
    chunk = _CHUNK_STEPS // steps_per_epoch(_size(lead), prog.phase.feed[0].batch_size)
  keys = _epoch_keys(rng, lo, last)
  if chunk < 2:
    for epoch, key in zip(range(lo, last), keys):
      state, metrics = _epoch(prog, state, data, key, epoch, runtime, label)
      if per_epoch is not None and curve_due(epoch - first, last - first, points):
        metrics.update(_floats(per_epoch(_merged(prog, params, state, runtime), epoch_data)))
      yield epoch, metrics, state
    return
  run = _chunk_program(prog.body, prog.phase.subtree, chunk, curve[0], runtime)
  epoch = lo
  while epoch < last:
    n = min(chunk, _next_stop(epoch, last, stops) - epoch)
    start_step = int(state.step)
    batch_keys = np.zeros((chunk, *keys[0].shape), keys[0].dtype)
    batch_keys[:n] = keys[epoch - lo: epoch - lo + n]
    state, out = run(state, data, batch_keys, np.int32(n), params, epoch_data,
                     np.int32(epoch - first), np.int32(last - first), np.int32(points))
    metrics, values, steps = jax.device_get(out)
    lrs = _learning_rates(prog, steps)  # every row: one shape
    for i in range(n):
      row = {k: float(v[i]) for k, v in metrics.items()}
      check_finite(row, phase=label, epoch=epoch + i,
                   first_step=start_step if i == 0 else int(steps[i - 1]))
      row.pop("first_nonfinite_step")
      row["learning_rate"] = float(lrs[i])
      if per_epoch is not None and curve_due(epoch + i - first, last - first, points):
        row.update({k: float(v[i]) for k, v in values.items()})
      yield epoch + i, row, state if i == n - 1 else None
    epoch += n


def _next_stop(epoch: int, last: int, every: tuple) -> int:
  """The first epoch count after ``epoch`` that is a multiple of one of ``every`` (0: none), or
  ``last``."""
  return min([last] + [(epoch // k + 1) * k for k in every if k])


@functools.lru_cache(maxsize=32)
def _chunk_program(body, subtree, length: int, epoch_metrics, runtime: Runtime):
  """``(state, data, keys, n, params, epoch_data, e0, epochs, points) -> (state, (metrics,
  curve, steps))``: the first ``n`` of ``length`` epochs of ``body`` (a value: one program for
  every count), each with its key; per epoch its metrics, the validation curve where
  :func:`curve_due` (epoch ``e0 + i`` of ``epochs``) and the optimiser step after it."""
  def chunk(state, data, keys, n, params, epoch_data, e0, epochs, points):
    def one_epoch(state, i):
      state, metrics = body(state, data, keys[i])
      values = _curve(epoch_metrics, curve_due(e0 + i, epochs, points),
                      merge_subtree(subtree, params, state.params), epoch_data)
      return state, (metrics, values, state.step)

    return jax.lax.scan(lambda s, i: when(i < n, one_epoch, s, i), state, jnp.arange(length))

  return jax.jit(chunk, donate_argnums=0, compiler_options=runtime.options)


def _curve(epoch_metrics, due, params, epoch_data) -> dict:
  """Inside a compiled loop over epochs: ``epoch_metrics(params, epoch_data)`` where ``due``,
  zeros elsewhere (a ``lax.cond``: skipped, not computed); {} without ``epoch_metrics``."""
  if epoch_metrics is None:
    return {}
  return when(due, lambda _, p: ((), epoch_metrics(p, epoch_data)), (), params)[1]


def _learning_rates(prog: Program, steps: np.ndarray) -> np.ndarray:
  """The player's learning rate after each of an array of optimiser step counts, in one call
  (one program per length of ``steps``)."""
  h = prog.hyper[0]
  unit = _schedules(prog.unit)(steps, np.float32(h["total_steps"]), np.float32(h["warmup_steps"]))
  return prog.learning_rate * np.asarray(unit)


@functools.lru_cache(maxsize=32)
def _schedules(unit):
  """The schedule at learning rate 1 after each of an array of step counts."""
  return jax.jit(jax.vmap(unit, in_axes=(0, None, None)))


@functools.lru_cache(maxsize=32)
def _jitted(fn):
  return None if fn is None else jax.jit(fn)


_KEY_CHUNK = 64


@jax.jit
def _key_chunk(rng, start):
  return jax.vmap(lambda e: jax.random.fold_in(rng, start + e))(jnp.arange(_KEY_CHUNK))


def _epoch_keys(rng, lo: int, hi: int):
  """``fold_in(rng, epoch)`` for every epoch of [lo, hi), in a dispatch per 64 epochs (many
  short epochs otherwise pay one host round trip each), one program whatever the number."""
  chunks = [np.asarray(_key_chunk(rng, np.int32(s))) for s in range(lo, hi, _KEY_CHUNK)]
  return list(np.concatenate(chunks)[: hi - lo]) if chunks else []


def _schedule(prog: Program, steps):
  """The player's schedule at learning rate 1 after ``steps`` optimiser steps."""
  h = prog.hyper[0]
  return _jitted(prog.unit)(steps, h["total_steps"], h["warmup_steps"])


def _floats(tree: dict) -> dict:
  """A dict of scalars from the device, in one transfer."""
  return {k: float(v) for k, v in jax.device_get(tree).items()}


def _epoch(prog: Program, state, data, rng, epoch, runtime, label):
  first_step = int(runtime.launcher.unreplicate(state.step))
  stream = data[prog.phase.streams[0]]
  if isinstance(stream, HostStream):
    role = prog.phase.feed[0].role
    batches = ({role: b} for b in stream.epoch(epoch))
    state, metrics = prog.stream_epoch_fn(state, batches, rng)
  else:
    state, metrics = prog.epoch_fn(state, data, rng)
  step = runtime.launcher.unreplicate(state.step)
  metrics = _floats({**metrics, "learning_rate": _schedule(prog, step)})
  metrics["learning_rate"] *= prog.learning_rate
  check_finite(metrics, phase=label, epoch=epoch, first_step=first_step)
  metrics.pop("first_nonfinite_step")
  return state, metrics


def _merged(prog: Program, params, state, runtime):
  return prog.merge(params, runtime.launcher.unreplicate(state).params)


def _snapshot(prog: Program, params, state, runtime) -> dict:
  """What a checkpoint holds. Several processes save the global (replicated) arrays together;
  one process saves its single-device copy."""
  launcher = runtime.launcher
  if jax.process_count() > 1 and launcher.kind == "shard_map":
    return {"params": prog.merge(launcher.replicate(params), state.params),
            "opt_state": state.opt_state, "step": state.step}
  state = launcher.unreplicate(state)
  return {"params": prog.merge(params, state.params), "opt_state": state.opt_state,
          "step": state.step}


def _resume_run(store: CheckpointStore | None, log: JsonlLog | None, progs, params):
  """(first epoch to run, params, state of the phase to continue or None) after ``store``'s
  latest intact checkpoint (without one, or without a store: from the start); ``log`` keeps
  the rows of the epochs before that point only."""
  start, params, state = _resume(store, progs, params) if store else (0, params, None)
  if log is not None:
    log.repair()
    log.keep(lambda r: r.get("epoch", -1) < start)
  return start, params, state


def _resume(store: CheckpointStore, progs, params):
  """(first epoch to run, params, state of the phase to continue or None)."""
  spans = list(zip(progs, _spans([p.phase for p in progs])))

  def locate(epoch):
    for prog, (_, first, last) in spans:
      if first < epoch <= last:
        return prog, last
    raise ValueError(f"checkpoint at epoch {epoch} in {store.directory} is past the "
                     f"{spans[-1][1][2] if spans else 0} epochs of these phases")

  def template(epoch):
    fresh = locate(epoch)[0].init_state(params)
    return {"params": params, "opt_state": fresh.opt_state, "step": fresh.step}

  found = store.restore(template)
  if found is None:
    return 0, params, None
  epoch, tree = found
  prog, last = locate(epoch)
  if epoch == last:
    return epoch, tree["params"], None
  state = prog.init_state(tree["params"]).replace(opt_state=tree["opt_state"], step=tree["step"])
  return epoch, tree["params"], state


# ---------------------------------------------------------------------------
# Seeds as one program: the same phases, as a pure function, vmapped.


@functools.lru_cache(maxsize=32)
def _vmapped_cell(phases: tuple, spec: tuple, loops: tuple, runtime: Runtime, data_axes: tuple,
                  epoch_metrics=None):
  """The jitted, vmapped cell of ``phases`` (compile keys): per phase a scan over ``cap``
  epochs (``loops``, :func:`_loop`) that runs only its first ``epochs[i]`` (a value: budgets
  of one size bucket, and lengths of one epoch bucket, share the program; a skipped epoch is
  the empty branch of a ``lax.cond`` every seed shares)."""
  progs = [build_program(p, spec, 1, runtime) for p in phases]

  def cell(params, data, rng, epoch_data, hyper, values, counts, epochs, points):
    history = []
    offset = 0
    for prog, h, v, cap, n in zip(progs, hyper, values, loops, epochs):
      prog = prog.with_hyper(h, v)  # arguments, not constants: one program for any values
      phase = prog.phase
      pdata = with_counts(phase.prepare(params, data) if phase.prepare else data, counts)

      def one_epoch(state, e, prog=prog, pdata=pdata, params=params, offset=offset, n=n):
        state, metrics = prog.body(state, pdata, jax.random.fold_in(rng, offset + e))
        return state, (metrics, _curve(epoch_metrics, curve_due(e, n, points),
                                       prog.merge(params, state.params), epoch_data))

      body = lambda state, e, one_epoch=one_epoch, n=n: when(e < n, one_epoch, state, e)
      state, metrics = jax.lax.scan(body, prog.init_state(params), jnp.arange(cap))
      params = prog.merge(params, state.params)
      history.append(metrics)
      offset = offset + n
    return params, history

  axes = {k: dict(a) if isinstance(a, tuple) else a for k, a in data_axes}
  return jax.jit(jax.vmap(cell, in_axes=(0, axes, 0, 0, None, None, None, None, None)),
                 compiler_options=runtime.options)


def _loop(given: Phase, resolved: Phase, counts: dict) -> int:
  """The epochs the vmapped cell's scan over a phase holds (it runs the phase's own, a
  value): its longest length rounded up to a :func:`bucket <aetl_jax.engine.loop.bucket>`,
  so phases that differ only in their epochs share a program (a sweep over
  ``transfer.epochs``). The longest is the phase's epochs, or, when its first stream is
  padded and its epochs follow its size (``min_steps``), those of the smallest stream of
  that stream's bucket (budgets of one bucket share a program)."""
  longest = resolved.epochs
  lead = resolved.streams[0]
  if lead in counts and given.min_steps:
    floor = max(bucket_floor(bucket(counts[lead])), resolved.feed[0].batch_size)
    longest = max(given.for_size(floor).epochs, longest)
  return bucket(longest)


def _pad_to_buckets(data: dict, axes: tuple, counts: dict) -> dict:
  """The streams named in ``counts`` padded to their bucket along the example axis of each
  leaf: after the seed axis where ``axes`` (as :func:`seed_axes` gives them) say the seeds
  have their own, the first axis where they say None."""
  out = dict(data)
  for k, ax in axes:
    if k not in counts:
      continue
    length = bucket(counts[k])
    if isinstance(ax, tuple):
      out[k] = {n: _padded(data[k][n], length, 0 if a is None else 1) for n, a in ax}
    else:
      out[k] = _padded(data[k], length, 0 if ax is None else 1)
  return out


def is_shared(shared: Sequence[str], stream: str, leaf: str | None = None) -> bool:
  """Whether every vmapped seed reads ``stream`` (or its ``leaf``) alike: the stream, or
  ``stream/leaf``, is named in ``shared``."""
  return stream in shared or (leaf is not None and f"{stream}/{leaf}" in shared)


def seed_axes(data: dict, shared: Sequence[str] = ()) -> tuple:
  """The vmap axes of ``data`` as a hashable tuple: per stream None (every seed reads it
  alike: ``stream`` in ``shared``), 0, or per leaf of a dict stream (``stream/leaf`` in
  ``shared``: e.g. one pool of images under per-seed labels)."""
  def axes(k, v):
    if k in shared:
      return None
    if isinstance(v, dict) and any(is_shared(shared, k, n) for n in v):
      return tuple(sorted((n, None if is_shared(shared, k, n) else 0) for n in v))
    return 0
  return tuple(sorted((k, axes(k, v)) for k, v in data.items()))


def seed_shapes(data: dict, shared: Sequence[str] = ()) -> dict:
  """One seed's view of vmapped ``data`` (:func:`seed_axes`) as shapes
  (``jax.ShapeDtypeStruct``): shared streams and leaves as they are, the others without
  their seed axis. (Shapes, not slices: a slice would compile for every size.)"""
  shape = lambda x, drop: jax.ShapeDtypeStruct(x.shape[drop:], x.dtype)
  out = {}
  for k, ax in seed_axes(data, shared):
    if isinstance(ax, tuple):
      out[k] = {n: jax.tree.map(lambda x, a=a: shape(x, a is not None), data[k][n])
                for n, a in ax}
    else:
      out[k] = jax.tree.map(lambda x: shape(x, ax is not None), data[k])
  return out


def run_phases_vmapped(phases: Sequence[Phase], params, data: dict, rngs, *, runtime: Runtime,
                       metric_prefix: str = "", label: str = "", shared: Sequence[str] = (),
                       epoch_metrics: Callable | None = None, epoch_data=None,
                       curve_points: int = 0, pad: Sequence[str] = ()):
  """K seeds at once: every leaf of ``params``, ``rngs`` and of the streams of
  ``data`` (except the streams, or ``stream/leaf`` leaves, named in ``shared``) has a
  leading seed axis, and so has every leaf of ``epoch_data`` (what ``epoch_metrics`` reads,
  as in :func:`run_phases`, at the same ``curve_points``). The streams named in ``pad`` are
  padded to their size bucket, as in :func:`run_phases`.

  Returns (stacked params, K lists of per-epoch rows). Raises NonFiniteError
  naming the seed, phase, epoch and step of the first non-finite loss.
  """
  check_streams(phases, data)
  one = jax.tree.map(lambda a: a[0], params)
  one_data = seed_shapes(data, shared)
  given, phases = phases, resolve_lengths(phases, one_data)
  runtime = runtime.single_device()
  progs = programs(phases, one, one_data, runtime)
  counts = paddable(phases, one_data, pad, runtime)
  axes = seed_axes(data, shared)
  loops = tuple(_loop(g, p, counts) for g, p in zip(given, phases))
  cell = _vmapped_cell(tuple(compile_key(p) for p in phases), tree_spec(one), loops, runtime,
                       axes, epoch_metrics)
  hyper = tuple(jax.tree.map(jnp.float32, prog.hyper) for prog in progs)
  values = tuple({k: jnp.float32(v) for k, v in p.values} for p in phases)
  params, history = cell(params, _pad_to_buckets(data, axes, counts), rngs, epoch_data, hyper,
                         values, {k: np.int32(n) for k, n in counts.items()},
                         tuple(np.int32(p.epochs) for p in phases), np.int32(curve_points))
  rows = [[] for _ in range(int(rngs.shape[0]))]
  for prog, (metrics, curve), cap, (phase, first, _) in zip(progs, history, loops,
                                                          _spans(phases)):
    metrics, curve = jax.tree.map(lambda m: np.asarray(m)[:, :phase.epochs], (metrics, curve))
    due = [bool(curve_due(e, phase.epochs, curve_points)) for e in range(phase.epochs)]
    steps = _epoch_steps(prog, one_data)
    # after each epoch, in one call over the scan's length (one program, as the cell's)
    epoch_lrs = _learning_rates(prog, steps * np.arange(1, cap + 1, dtype=np.int32))
    for k, seed_rows in enumerate(rows):
      where = first_nonfinite(metrics["first_nonfinite_step"][k])
      if where is not None:
        e, index = where
        check_finite({"first_nonfinite_step": index},
                     phase=(f"{label}/{phase.name}" if label else phase.name) + f" (seed {k})",
                     epoch=first + e, first_step=e * steps)
      seed_rows.extend(_row(phase, first + e, {
          **{n: float(v[k, e]) for n, v in metrics.items() if n != "first_nonfinite_step"},
          "learning_rate": float(epoch_lrs[e]),
          **({n: float(v[k, e]) for n, v in curve.items()} if due[e] else {})}, metric_prefix)
          for e in range(phase.epochs))
  return params, rows


def _epoch_steps(prog: Program, data) -> int:
  return steps_per_epoch(num_examples(data[prog.phase.streams[0]]), prog.phase.feed[0].batch_size)

