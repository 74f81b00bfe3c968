"""Epoch runners: a whole epoch in one compiled call, or one call per batch.

An epoch reads one or several named data streams. A :data:`Feed` says which:
``((role, stream, batch_size), ...)``; every step gets ``{role: batch}`` with
a batch of each role. The first role sets the epoch length (its stream is
shuffled and cut into batches, the remainder dropped); the others are drawn
from their own reshuffled orders, cycled when shorter (a few labelled
examples beside many unlabelled ones). Without a feed the data is one stream
and each step gets its batch directly.

A stream may be :class:`Padded`: held in arrays longer than it is (a label budget padded
to its size bucket, :func:`bucket`), its real size a value. Its shuffle ranks each example
by random bits of its own index, so the order of the real examples does not depend on the
padding; an epoch over a padded first stream is a loop over its own steps (a count every
vmapped seed shares), so the rows past them are not run at all. Budgets of one bucket so
share their compiled programs and give the numbers of the unpadded run.

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
import numpy as np
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


class Padded(NamedTuple):
  """A stream whose first ``size`` examples are the stream, the rest of its arrays padding
  that no step reads. ``size`` is an argument of the compiled programs (an int32 scalar),
  so streams padded to the same length share them."""
  data: object
  size: object


# A padded stream's arrays hold the next power of SIZE_RATIO examples (:func:`bucket`).
SIZE_RATIO = 4


def bucket(n: int) -> int:
  """The length a stream of ``n`` examples is padded to: the next power of
  :data:`SIZE_RATIO` (budgets of 100 and 200 labels share 256)."""
  b = 1
  while b < n:
    b *= SIZE_RATIO
  return b


def bucket_floor(length: int) -> int:
  """The smallest stream padded to ``length`` (:func:`bucket`)."""
  return length // SIZE_RATIO + 1 if length > 1 else 1


def unpadded(stream):
  return stream.data if isinstance(stream, Padded) else stream


def num_examples(data) -> int:
  """The examples a stream's arrays hold (a :class:`Padded` stream's padding included)."""
  sizes = {x.shape[0] for x in jax.tree.leaves(unpadded(data))}
  if len(sizes) != 1:
    raise ValueError(f"data arrays disagree on the number of examples: {sorted(sizes)}")
  return sizes.pop()


def _nonfinite(metrics, xp=jnp):
  bad = ~xp.isfinite(metrics["loss"])
  if "grad_norm" in metrics:
    bad = bad | ~xp.isfinite(metrics["grad_norm"])
  return bad


def summarise(metrics, xp=jnp):
  """Mean of each per-step metric, plus the index of the first step whose loss
  or gradient norm was non-finite (-1 if none), so a NaN is located exactly. ``xp``: the
  array module (numpy for metrics on the host)."""
  bad = _nonfinite(metrics, xp)
  summary = jax.tree.map(lambda m: xp.mean(m, axis=0), metrics)
  summary["first_nonfinite_step"] = xp.where(bad.any(), xp.argmax(bad), -1)
  return summary


def _summarise_steps(history):
  """:func:`summarise` of per-step metrics returned one call at a time, on the host (on the
  device every number of steps, every label budget, would compile its own reductions)."""
  return summarise(jax.tree.map(lambda *xs: np.stack(xs), *jax.device_get(history)), np)


# Token streams are batched by length within windows of this many batches.
BUCKET_WINDOW = 32


def is_tokens(stream) -> bool:
  """Whether a stream's ``image`` is integer token ids (batch, max_len) (arrays or shapes)."""
  x = stream.get("image") if isinstance(stream, dict) else None
  return x is not None and len(x.shape) == 2 and jnp.issubdtype(x.dtype, jnp.integer)


def _token_lengths(stream):
  """Sequence lengths when a stream is token ids (:func:`is_tokens`), else None: such streams
  are batched by length (:func:`_bucket`)."""
  return jnp.sum(stream["image"] != 0, axis=-1) if is_tokens(stream) else None


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


def _order(rng, length: int, count=None):
  """A shuffle of the first ``count`` (default all) of ``length`` indices, the others after
  them. Each index is ranked by random bits of its own (``fold_in(rng, index)``), so the
  order of the first ``count`` is the same whatever ``length`` (a padded stream shuffles as
  its unpadded self)."""
  index = jnp.arange(length)
  bits = jax.vmap(lambda i: jax.random.bits(jax.random.fold_in(rng, i), dtype=jnp.uint32))(index)
  if count is None:
    return jnp.lexsort((index, bits))
  return jnp.lexsort((index, bits, index >= count))


def _plan(rng, sizes: Sequence[int], batch_sizes: Sequence[int], lengths=None, counts=None):
  """Per stream (num_batches, batch) indices, and one rng per step.

  Stream 0 is shuffled and cut (remainder dropped), or, with its sequence
  ``lengths``, bucketed by length; stream i > 0 draws its indices from fresh
  permutations of its own, concatenated as often as the epoch needs. ``sizes`` are the
  streams' array lengths; ``counts`` their real sizes where they are :class:`Padded`
  (traced; None elsewhere): then num_batches is what the arrays' length allows, and only
  the first ``counts[0] // batch`` rows are steps (:meth:`_Reader.steps`).
  """
  counts = tuple(counts or (None,) * len(sizes))
  n = sizes[0]
  if n < 1:
    raise ValueError("cannot run an epoch over an empty dataset")
  bs = min(batch_sizes[0], n)
  num_batches = n // bs
  perm_rng, step_rng = jax.random.split(rng)
  order = _order(perm_rng, n, counts[0])
  if lengths is None:
    idx = [order[: num_batches * bs].reshape(num_batches, bs)]
  else:
    idx = [_bucket(order, lengths, bs, num_batches, jax.random.fold_in(perm_rng, 2**31 - 1))]
  for i, (m, b, count) in enumerate(zip(sizes[1:], batch_sizes[1:], counts[1:]), 1):
    if m < 1:
      raise ValueError("cannot draw batches from an empty stream")
    need = num_batches * b
    r = jax.random.fold_in(perm_rng, i)
    # One vmapped draw of every permutation the epoch needs (a Python loop here put one sort
    # per permutation into the program: ~1,500 of them for 10 labels beside 60,000 images).
    cycles = -(-need // (m if count is None else bucket_floor(m)))
    perms = jax.vmap(lambda k: _order(jax.random.fold_in(r, k), m, count))(jnp.arange(cycles))
    if count is None:
      flat = perms.reshape(-1)[:need]
    else:  # the first ``count`` of each permutation, concatenated
      j = jnp.arange(need)
      flat = perms[j // count, j % count]
    idx.append(flat.reshape(num_batches, b))
  steps = jax.vmap(lambda k: jax.random.fold_in(step_rng, k))(jnp.arange(num_batches))
  return tuple(idx), steps


def _first_steps(run, state, idx, rngs, steps):
  """``run(state, batch_idx, rng)`` over the first ``steps`` rows of the plan (a traced
  count: a loop of that many steps, not a scan over every row), summarised as
  :func:`summarise` does."""
  shapes = jax.eval_shape(run, state, tuple(x[0] for x in idx), rngs[0])[1]

  def body(i, carry):
    state, sums, bad = carry
    state, metrics = run(state, tuple(x[i] for x in idx), rngs[i])
    bad = jnp.where((bad < 0) & _nonfinite(metrics), i, bad)
    return state, jax.tree.map(jnp.add, sums, metrics), bad

  zeros = jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), shapes)
  state, sums, bad = jax.lax.fori_loop(0, steps, body, (state, zeros, jnp.int32(-1)))
  summary = jax.tree.map(lambda m: m / steps, sums)
  summary["first_nonfinite_step"] = bad
  return state, summary


def when(pred, step, state, *args):
  """``step(state, *args)`` where ``pred``, else ``state`` as it is and zero metrics (a
  ``lax.cond``: with ``pred`` the same for every vmapped seed, the skipped step costs
  nothing)."""
  metrics = jax.eval_shape(step, state, *args)[1]
  skip = lambda state, *_: (state, jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), metrics))
  return jax.lax.cond(pred, step, skip, state, *args)


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

  def _streams(self, data) -> list:
    return [data] if self.feed is None else [data[f.stream] for f in self.feed]

  def counts(self, data) -> tuple | None:
    """The real sizes of the :class:`Padded` streams (None for the others), or None."""
    counts = tuple(s.size if isinstance(s, Padded) else None for s in self._streams(data))
    return None if all(c is None for c in counts) else counts

  def steps(self, data):
    """The epoch's steps: None when they are all the plan's rows, else their number (the
    first stream is :class:`Padded`; traced in a program, a number on the host)."""
    first = self._streams(data)[0]
    if not isinstance(first, Padded):
      return None
    return first.size // min(self.batch_sizes[0], num_examples(first))

  def plan(self, rng, data):
    first = self._streams(data)[0]
    lengths = None if isinstance(first, Padded) else _token_lengths(first)
    return _plan(rng, self.sizes(data), self.batch_sizes, lengths, self.counts(data))

  def gather(self, data, idx):
    """idx: one index array per stream (any leading shape)."""
    if self.feed is None:
      return jax.tree.map(lambda a: a[idx[0]], unpadded(data))
    return {role: jax.tree.map(lambda a, i=i: a[i], unpadded(data[stream]))
            for (role, stream, _), i in zip(self.feed, idx)}


def epoch_body(step, *, batch_size: int | None = None, feed: Feed | None = None):
  """The pure single-device epoch ``(state, data, rng) -> (state, metrics)``.

  Exposed unjitted so callers can transform it (``jax.vmap`` over seeds).
  """
  reader = _Reader(feed, batch_size)

  def epoch(state, data, rng):
    idx, rngs = reader.plan(rng, data)
    steps = reader.steps(data)
    run = lambda state, batch_idx, r: step(state, reader.gather(data, batch_idx), r)
    if steps is not None:  # a padded stream: its own steps, however many the arrays allow
      return _first_steps(run, state, idx, rngs, steps)
    state, metrics = jax.lax.scan(lambda state, xs: run(state, *xs), state, (idx, rngs))
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
    steps = reader.steps(data)
    history = []
    for i in range(rngs.shape[0] if steps is None else int(steps)):
      state, metrics = step_jit(state, data, tuple(x[i] for x in idx), rngs[i])
      history.append(metrics)
    return state, _summarise_steps(history)

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
    return state, _summarise_steps(history)

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
    return state, _summarise_steps(history)
  return epoch

