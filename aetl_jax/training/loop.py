"""Epoch runners: a whole epoch in one compiled call, or one call per batch.

Both take the same pure step and the same data (a pytree of arrays, leading
axis = examples) and consume the rng identically, so they give the same
result; which one is faster depends on model family and backend
(convolutions inside ``scan`` are slow on XLA:CPU, jax#12868). Either runs on
any :mod:`launcher <aetl_jax.training.launchers>`: the global batch is split
over the devices and the step averages gradients over the data axis.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from aetl_jax.training.launchers import DATA_AXIS, Launcher, make_launcher

from aetl_jax.training.compiler import CONV_FAMILIES

RUNNERS = ("scan", "per_batch", "auto")


def resolve_runner(runner: str, family: str) -> str:
  """'auto': one call per batch for conv families on XLA:CPU, where convolutions
  inside a scan lose their fast backward layouts (jax#12868); scan otherwise."""
  if runner != "auto":
    return runner
  return "per_batch" if family in CONV_FAMILIES and jax.default_backend() == "cpu" else "scan"


def num_examples(data) -> int:
  sizes = {x.shape[0] for x in jax.tree.leaves(data)}
  if len(sizes) != 1:
    raise ValueError(f"data arrays disagree on the number of examples: {sorted(sizes)}")
  return sizes.pop()


def _summarise(metrics):
  """Mean of each per-step metric, plus the index of the first step whose loss
  or gradient norm was non-finite (-1 if none), so a NaN is located exactly."""
  bad = ~jnp.isfinite(metrics["loss"])
  if "grad_norm" in metrics:
    bad = bad | ~jnp.isfinite(metrics["grad_norm"])
  summary = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
  summary["first_nonfinite_step"] = jnp.where(bad.any(), jnp.argmax(bad), -1)
  return summary


def _plan(rng, n: int, batch_size: int):
  """Shuffled indices (num_batches, batch_size), remainder dropped, and step rngs."""
  if n < 1:
    raise ValueError("cannot run an epoch over an empty dataset")
  bs = min(batch_size, n)
  num_batches = n // bs
  perm_rng, step_rng = jax.random.split(rng)
  idx = jax.random.permutation(perm_rng, n)[: num_batches * bs].reshape(num_batches, bs)
  return idx, jax.random.split(step_rng, num_batches)


def _gather(data, idx):
  return jax.tree.map(lambda a: a[idx], data)


def epoch_body(step, *, batch_size: int):
  """The pure single-device epoch ``(state, data, rng) -> (state, metrics)``.

  Exposed unjitted so callers can transform it (``jax.vmap`` over seeds).
  """

  def epoch(state, data, rng):
    idx, rngs = _plan(rng, num_examples(data), batch_size)

    def body(state, xs):
      batch_idx, r = xs
      return step(state, _gather(data, batch_idx), r)

    state, metrics = jax.lax.scan(body, state, (idx, rngs))
    return state, _summarise(metrics)

  return epoch


def make_epoch_fn(step, *, batch_size: int, runner: str = "scan", launcher: Launcher | None = None,
                  compiler_options: dict | None = None):
  """Returns ``epoch(state, data, rng) -> (state, metrics)``.

  ``metrics`` holds the epoch mean of each step metric and
  ``first_nonfinite_step`` (index within the epoch, -1 when all finite). The
  batch size is global (split over the launcher's devices) and capped at the
  dataset size; the incomplete last batch is dropped, a different one each
  epoch since the order is reshuffled. The state passed in is donated; with a
  pmap or shard_map launcher it must come from ``launcher.replicate``, and the
  step must be built with ``axis_name=launcher.axis_name``. ``compiler_options``
  (see :func:`aetl_jax.training.compiler.train_compiler_options`) reach every
  ``jax.jit`` that compiles the step (``jax.pmap`` takes none).
  """
  if runner not in RUNNERS[:2]:
    raise ValueError(f"unknown runner {runner!r}; valid: scan, per_batch (resolve 'auto' with "
                     f"resolve_runner first)")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  launcher = launcher or make_launcher("jit")
  launcher.check_batch_size(batch_size)
  jit = functools.partial(jax.jit, compiler_options=compiler_options or None)
  if launcher.kind == "jit":
    if runner == "scan":
      return jit(epoch_body(step, batch_size=batch_size), donate_argnums=0)
    return _per_batch(step, batch_size, jit(
        lambda state, data, idx, r: step(state, _gather(data, idx), r), donate_argnums=0))
  return _multi_device(step, batch_size, runner, launcher, jit)


def _per_batch(step, batch_size, step_jit):
  plan = jax.jit(_plan, static_argnums=(1, 2))

  def epoch(state, data, rng):
    idx, rngs = plan(rng, num_examples(data), batch_size)
    history = []
    for i in range(idx.shape[0]):
      state, metrics = step_jit(state, data, idx[i], rngs[i])
      history.append(metrics)
    return state, _summarise(jax.tree.map(lambda *xs: jnp.stack(xs), *history))

  return epoch


def _multi_device(step, batch_size, runner, launcher: Launcher, jit):
  """pmap or shard_map epochs.

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
    return state, _summarise(metrics)

  @functools.partial(jax.jit, static_argnums=2)
  def shuffled_batches(data, rng, n):
    """The epoch's batches (num_batches, global_batch, ...) and step rngs."""
    idx, rngs = _plan(rng, n, batch_size)
    if idx.shape[1] % n_dev:
      raise ValueError(f"the dataset ({n} examples) is smaller than the global batch and its size "
                       f"is not divisible by the {n_dev} devices")
    return _gather(data, idx), rngs

  if launcher.kind == "pmap":
    per_device = NamedSharding(launcher.mesh, P(DATA_AXIS))
    everywhere = NamedSharding(launcher.mesh, P())

    def to_devices(batches):  # (nb, B, ...) -> (n_dev, nb, B / n_dev, ...), one slice per device
      return jax.device_put(jax.tree.map(lambda a: jnp.swapaxes(
          a.reshape(a.shape[0], n_dev, a.shape[1] // n_dev, *a.shape[2:]), 0, 1), batches),
          per_device)

    if runner == "scan":
      run = jax.pmap(scan_body, axis_name=DATA_AXIS, in_axes=(0, 0, None), donate_argnums=0,
                     devices=launcher.devices)

      def epoch(state, data, rng):
        batches, rngs = shuffled_batches(data, rng, num_examples(data))
        state, metrics = run(state, to_devices(batches), jax.device_put(rngs, everywhere))
        return state, jax.tree.map(lambda m: m[0], metrics)
      return epoch

    run_step = jax.pmap(step, axis_name=DATA_AXIS, in_axes=(0, 0, None), donate_argnums=0,
                        devices=launcher.devices)

    def split(batch):
      return jax.device_put(jax.tree.map(
          lambda a: a.reshape(n_dev, a.shape[0] // n_dev, *a.shape[1:]), batch), per_device)

    def epoch(state, data, rng):
      batches, rngs = shuffled_batches(data, rng, num_examples(data))
      history = []
      for i in range(rngs.shape[0]):
        state, metrics = run_step(state, split(jax.tree.map(lambda a: a[i], batches)),
                                  jax.device_put(rngs[i], everywhere))
        history.append(jax.tree.map(lambda m: m[0], metrics))
      return state, _summarise(jax.tree.map(lambda *xs: jnp.stack(xs), *history))
    return epoch

  mesh = launcher.mesh
  replicated = NamedSharding(mesh, P())

  def on_mesh(data):
    """In-memory data lives replicated on the mesh; a no-op once it is there."""
    return jax.device_put(data, replicated)

  if runner == "scan":
    sharded = jax.shard_map(scan_body, mesh=mesh, in_specs=(P(), P(None, DATA_AXIS), P()),
                            out_specs=(P(), P()), check_vma=False)

    def _epoch(state, data, rng):
      batches, rngs = shuffled_batches(data, rng, num_examples(data))
      batches = jax.lax.with_sharding_constraint(
          batches, NamedSharding(mesh, P(None, DATA_AXIS)))
      return sharded(state, batches, rngs)
    epoch_jit = jit(_epoch, donate_argnums=0)
    return lambda state, data, rng: epoch_jit(state, on_mesh(data), rng)

  run_step = jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P()),
                                   out_specs=(P(), P()), check_vma=False), donate_argnums=0)
  batch_sharding = NamedSharding(mesh, P(DATA_AXIS))

  def epoch(state, data, rng):
    batches, rngs = shuffled_batches(on_mesh(data), rng, num_examples(data))
    history = []
    for i in range(rngs.shape[0]):
      batch = jax.device_put(jax.tree.map(lambda a: a[i], batches), batch_sharding)
      state, metrics = run_step(state, batch, rngs[i])
      history.append(metrics)
    return state, _summarise(jax.tree.map(lambda *xs: jnp.stack(xs), *history))
  return epoch
