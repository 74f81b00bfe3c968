"""Epoch runners: a whole epoch in one compiled call, or one call per batch.

Both take the same pure step and the same data (a pytree of arrays already on
device, leading axis = examples) and consume the rng identically, so they give
the same result; which one is faster depends on model family and backend
(convolutions inside ``scan`` are slow on XLA:CPU, jax#12868).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

RUNNERS = ("scan", "per_batch")


def num_examples(data) -> int:
  sizes = {x.shape[0] for x in jax.tree.leaves(data)}
  if len(sizes) != 1:
    raise ValueError(f"data arrays disagree on the number of examples: {sorted(sizes)}")
  return sizes.pop()


def _batch_indices(rng, n: int, batch_size: int):
  """Shuffled indices, remainder dropped, shaped (num_batches, batch_size)."""
  num_batches = n // batch_size
  perm = jax.random.permutation(rng, n)[: num_batches * batch_size]
  return perm.reshape(num_batches, batch_size)


def _summarise(metrics):
  """Mean of each per-step metric, plus the index of the first step whose loss
  or gradient norm was non-finite (-1 if none), so a NaN is located exactly."""
  bad = ~jnp.isfinite(metrics["loss"])
  if "grad_norm" in metrics:
    bad = bad | ~jnp.isfinite(metrics["grad_norm"])
  summary = jax.tree.map(jnp.mean, metrics)
  summary["first_nonfinite_step"] = jnp.where(bad.any(), jnp.argmax(bad), -1)
  return summary


def make_epoch_fn(step, *, batch_size: int, runner: str = "scan"):
  """Returns ``epoch(state, data, rng) -> (state, metrics)``.

  ``metrics`` holds the epoch mean of each step metric and
  ``first_nonfinite_step`` (index within the epoch, -1 when all finite). The
  batch size is capped at the dataset size; the incomplete last batch is
  dropped (a different one each epoch, since the order is reshuffled).
  """
  if runner not in RUNNERS:
    raise ValueError(f"unknown runner {runner!r}; valid: {', '.join(RUNNERS)}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")

  def effective_batch(n):
    if n < 1:
      raise ValueError("cannot run an epoch over an empty dataset")
    return min(batch_size, n)

  def gather(data, idx):
    return jax.tree.map(lambda a: a[idx], data)

  if runner == "scan":

    def _epoch(state, data, rng):
      n = num_examples(data)
      perm_rng, step_rng = jax.random.split(rng)
      idx = _batch_indices(perm_rng, n, effective_batch(n))
      step_rngs = jax.random.split(step_rng, idx.shape[0])

      def body(state, xs):
        batch_idx, r = xs
        return step(state, gather(data, batch_idx), r)

      state, metrics = jax.lax.scan(body, state, (idx, step_rngs))
      return state, _summarise(metrics)

    return jax.jit(_epoch, donate_argnums=0)

  def _plan(rng, n):
    perm_rng, step_rng = jax.random.split(rng)
    idx = _batch_indices(perm_rng, n, effective_batch(n))
    return idx, jax.random.split(step_rng, idx.shape[0])

  plan = jax.jit(_plan, static_argnums=1)
  step_jit = jax.jit(lambda state, data, batch_idx, r: step(state, gather(data, batch_idx), r),
                     donate_argnums=0)

  def epoch(state, data, rng):
    idx, rngs = plan(rng, num_examples(data))
    history = []
    for i in range(idx.shape[0]):
      state, metrics = step_jit(state, data, idx[i], rngs[i])
      history.append(metrics)
    return state, _summarise(jax.tree.map(lambda *xs: jnp.stack(xs), *history))

  return epoch
