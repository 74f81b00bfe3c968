"""Epoch runners: a whole epoch in one compiled call, or one call per batch.

An epoch reads one or several named data streams. A :data:`Feed` says which:
``((role, stream, batch_size), ...)``; every step gets ``{role: batch}`` with
a batch of each role. The first role sets the epoch length (its stream is
shuffled and cut into batches, the remainder dropped); the others are drawn
from their own reshuffled orders, cycled when shorter (a few labelled
examples beside many unlabelled ones). Without a feed the data is one stream
and each step gets its batch directly.

Both runners take the same pure step and consume the rng identically, so they
give the same result; which one is faster depends on model family and backend
(convolutions inside ``scan`` are slow on XLA:CPU, jax#12868). Either runs on
any :mod:`launcher <aetl_jax.engine.launchers>`: the global batch is split
over the devices and the step averages gradients over the data axis.
"""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from aetl_jax.engine.launchers import DATA_AXIS, Launcher, make_launcher

class Source(NamedTuple):
  """One entry of a :data:`Feed`: each step's batch under ``role`` is ``batch_size`` examples
  of ``data[stream]``. A plain ``(role, stream, batch_size)`` tuple is the same thing."""
  role: str
  stream: str
  batch_size: int


# (Source, ...): the first one sets the epoch length.
Feed = tuple[Source, ...]


def as_feed(feed) -> Feed:
  """A feed of :class:`Source` entries from any ``((role, stream, batch_size), ...)``."""
  return tuple(Source(*entry) for entry in feed)


def num_examples(data) -> int:
  sizes = {x.shape[0] for x in jax.tree.leaves(data)}
  if len(sizes) != 1:
    raise ValueError(f"data arrays disagree on the number of examples: {sorted(sizes)}")
  return sizes.pop()


def summarise(metrics):
  """Mean of each per-step metric, plus the index of the first step whose loss
  or gradient norm was non-finite (-1 if none), so a NaN is located exactly."""
  bad = ~jnp.isfinite(metrics["loss"])
  if "grad_norm" in metrics:
    bad = bad | ~jnp.isfinite(metrics["grad_norm"])
  summary = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
  summary["first_nonfinite_step"] = jnp.where(bad.any(), jnp.argmax(bad), -1)
  return summary


def _stack(history):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *history)


# Token streams are batched by length within windows of this many batches.
BUCKET_WINDOW = 32


def _token_lengths(stream):
  """Sequence lengths when a stream's ``image`` is integer token ids (batch, max_len), else
  None: such streams are batched by length (:func:`_bucket`)."""
  x = stream.get("image") if isinstance(stream, dict) else None
  if x is None or x.ndim != 2 or not jnp.issubdtype(x.dtype, jnp.integer):
    return None
  return jnp.sum(x != 0, axis=-1)


def _bucket(order, lengths, bs: int, num_batches: int, rng):
  """The classic bucket iterator: the shuffled ``order`` sorted by length within windows of
  ``BUCKET_WINDOW`` batches, cut into batches, the batches shuffled. A batch then holds
  sequences of similar length, so a model that skips the steps past its longest sequence
  (:mod:`aetl_jax.models.sequence`) does not pay for the longest sentence of the data."""
  n = num_batches * bs
  order = order[:n]
  window = jnp.arange(n) // (BUCKET_WINDOW * bs)
  order = order[jnp.lexsort((lengths[order], window))]
  return order.reshape(num_batches, bs)[jax.random.permutation(rng, num_batches)]


def _plan(rng, sizes: Sequence[int], batch_sizes: Sequence[int], lengths=None):
  """Per stream (num_batches, batch) indices, and one rng per step.

  Stream 0 is shuffled and cut (remainder dropped), or, with its sequence
  ``lengths``, bucketed by length; stream i > 0 draws its indices from fresh
  permutations of its own, concatenated as often as the epoch needs.
  """
  n = sizes[0]
  if n < 1:
    raise ValueError("cannot run an epoch over an empty dataset")
  bs = min(batch_sizes[0], n)
  num_batches = n // bs
  perm_rng, step_rng = jax.random.split(rng)
  order = jax.random.permutation(perm_rng, n)
  if lengths is None:
    idx = [order[: num_batches * bs].reshape(num_batches, bs)]
  else:
    idx = [_bucket(order, lengths, bs, num_batches, jax.random.fold_in(perm_rng, 2**31 - 1))]
  for i, (m, b) in enumerate(zip(sizes[1:], batch_sizes[1:]), 1):
    if m < 1:
      raise ValueError("cannot draw batches from an empty stream")
    need = num_batches * b
    r = jax.random.fold_in(perm_rng, i)
    # One vmapped draw of every permutation the epoch needs (a Python loop here put one sort
    # per permutation into the program: ~1,500 of them for 10 labels beside 60,000 images).
    perms = jax.vmap(lambda k: jax.random.permutation(jax.random.fold_in(r, k), m))(
        jnp.arange(-(-need // m)))
    idx.append(perms.reshape(-1)[:need].reshape(num_batches, b))
  return tuple(idx), jax.random.split(step_rng, num_batches)


class _Reader:
  """Turns (data, per-stream indices) into the step's batch under one feed."""

  def __init__(self, feed: Feed | None, batch_size: int | None):
    if feed is None and batch_size is None:
      raise ValueError("give a feed or a batch_size")
    if batch_size is not None and batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if feed is not None:
      feed = as_feed(feed)
      for role, stream, b in feed:
        if b < 1:
          raise ValueError(f"batch size of role {role!r} (stream {stream!r}) must be >= 1, got {b}")
    self.feed = feed
    self.batch_size = batch_size

  @property
  def batch_sizes(self) -> tuple[int, ...]:
    return (self.batch_size,) if self.feed is None else tuple(f.batch_size for f in self.feed)

  def sizes(self, data) -> tuple[int, ...]:
    if self.feed is None:
      return (num_examples(data),)
    missing = [f.stream for f in self.feed if f.stream not in data]
    if missing:
      raise ValueError(f"the epoch reads stream(s) {', '.join(missing)} but the data holds: "
                       f"{', '.join(data)}")
    return tuple(num_examples(data[f.stream]) for f in self.feed)

  def plan(self, rng, data):
    first = data if self.feed is None else data[self.feed[0].stream]
    return _plan(rng, self.sizes(data), self.batch_sizes, _token_lengths(first))

  def gather(self, data, idx):
    """idx: one index array per stream (any leading shape)."""
    if self.feed is None:
      return jax.tree.map(lambda a: a[idx[0]], data)
    return {role: jax.tree.map(lambda a, i=i: a[i], data[stream])
            for (role, stream, _), i in zip(self.feed, idx)}


def epoch_body(step, *, batch_size: int | None = None, feed: Feed | None = None):
  """The pure single-device epoch ``(state, data, rng) -> (state, metrics)``.

  Exposed unjitted so callers can transform it (``jax.vmap`` over seeds).
  """
  reader = _Reader(feed, batch_size)

  def epoch(state, data, rng):
    idx, rngs = reader.plan(rng, data)

    def body(state, xs):
      batch_idx, r = xs
      return step(state, reader.gather(data, batch_idx), r)

    state, metrics = jax.lax.scan(body, state, (idx, rngs))
    return state, summarise(metrics)

  return epoch


def make_epoch_fn(step, *, batch_size: int | None = None, feed: Feed | None = None,
                  runner: str = "scan", launcher: Launcher | None = None,
                  compiler_options: dict | None = None):
  """Returns ``epoch(state, data, rng) -> (state, metrics)``.

  ``metrics`` holds the epoch mean of each step metric and
  ``first_nonfinite_step`` (index within the epoch, -1 when all finite). The
  batch sizes are global (split over the launcher's devices) and the first
  stream's is capped at its size. The state passed in is donated; with a
  shard_map launcher it must come from ``launcher.replicate``, and the step
  must be built with ``axis_name=launcher.axis_name``. ``compiler_options``
  reach every ``jax.jit`` that compiles the step.
  """
  if runner not in ("scan", "per_batch"):
    raise ValueError(f"unknown runner {runner!r}; valid: scan, per_batch (resolve 'auto' with "
                     f"engine.runtime.resolve_runner first)")
  reader = _Reader(feed, batch_size)
  launcher = launcher or make_launcher("jit")
  for b in reader.batch_sizes:
    launcher.check_batch_size(b)
  jit = functools.partial(jax.jit, compiler_options=compiler_options or None)
  if launcher.kind == "jit":
    if runner == "scan":
      return jit(epoch_body(step, batch_size=batch_size, feed=feed), donate_argnums=0)
    return _per_batch(reader, jit(
        lambda state, data, idx, r: step(state, reader.gather(data, idx), r), donate_argnums=0))
  return _multi_device(step, reader, runner, launcher, jit)


def _per_batch(reader: _Reader, step_jit):
  plan = jax.jit(reader.plan)

  def epoch(state, data, rng):
    idx, rngs = plan(rng, data)
    history = []
    for i in range(rngs.shape[0]):
      state, metrics = step_jit(state, data, tuple(x[i] for x in idx), rngs[i])
      history.append(metrics)
    return state, summarise(_stack(history))

  return epoch


def make_stream_epoch_fn(step, compiler_options: dict | None = None):
  """``epoch(state, batches, rng) -> (state, metrics)`` over an iterator of device batches.

  One jitted step per batch (the state is donated); batch ``i`` uses
  ``fold_in(rng, i)``. For data streamed from disk (``data.streaming``).
  """
  step_jit = jax.jit(step, donate_argnums=0, compiler_options=compiler_options or None)

  def epoch(state, batches, rng):
    history = []
    for i, batch in zip(itertools.count(), batches):
      state, metrics = step_jit(state, batch, jax.random.fold_in(rng, i))
      history.append(metrics)
    if not history:
      raise ValueError("the stream yielded no batch (dataset smaller than one batch?)")
    return state, summarise(_stack(history))

  return epoch


def _multi_device(step, reader: _Reader, runner, launcher: Launcher, jit):
  """shard_map epochs over the launcher's data mesh.

  shard_map runs with ``check_vma=False``: with it on, JAX differentiates
  replicated parameters by inserting its own ``psum`` of the gradients, which
  would add to the step's explicit ``pmean`` (an ``n_devices``-times larger
  step). Off, the step's ``pmean`` is the one reduction, exactly as under pmap.
  """
  n_dev = launcher.num_devices

  def scan_body(state, batches, rngs):
    def body(state, xs):
      batch, r = xs
      return step(state, batch, r)
    state, metrics = jax.lax.scan(body, state, (batches, rngs))
    return state, summarise(metrics)

  @functools.partial(jax.jit, static_argnums=2)
  def shuffled_batches(data, rng, sizes):
    """The epoch's batches (num_batches, global_batch, ...) and step rngs."""
    idx, rngs = reader.plan(rng, data)
    if idx[0].shape[1] % n_dev:
      raise ValueError(f"the dataset ({sizes[0]} examples) is smaller than the global batch and "
                       f"its size is not divisible by the {n_dev} devices")
    return reader.gather(data, idx), rngs

  return _shard_map_epoch(step, scan_body, shuffled_batches, reader, runner, launcher, jit)


def _shard_map_epoch(step, scan_body, shuffled_batches, reader, runner, launcher, jit):
  mesh = launcher.mesh
  replicated = NamedSharding(mesh, P())

  def on_mesh(data):
    """In-memory data lives replicated on the mesh; a no-op once it is there."""
    return jax.device_put(data, replicated)

  if runner == "scan":
    sharded = jax.shard_map(scan_body, mesh=mesh, in_specs=(P(), P(None, DATA_AXIS), P()),
                            out_specs=(P(), P()), check_vma=False)

    def _epoch(state, data, rng, sizes):
      batches, rngs = shuffled_batches(data, rng, sizes)
      batches = jax.lax.with_sharding_constraint(
          batches, NamedSharding(mesh, P(None, DATA_AXIS)))
      return sharded(state, batches, rngs)
    epoch_jit = jit(_epoch, donate_argnums=0, static_argnums=3)
    return lambda state, data, rng: epoch_jit(state, on_mesh(data), rng, reader.sizes(data))

  run_step = jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P()),
                               out_specs=(P(), P()), check_vma=False), donate_argnums=0)
  batch_sharding = NamedSharding(mesh, P(DATA_AXIS))

  def epoch(state, data, rng):
    batches, rngs = shuffled_batches(on_mesh(data), rng, reader.sizes(data))
    history = []
    for i in range(rngs.shape[0]):
      batch = jax.device_put(jax.tree.map(lambda a: a[i], batches), batch_sharding)
      state, metrics = run_step(state, batch, rngs[i])
      history.append(metrics)
    return state, summarise(_stack(history))
  return epoch

