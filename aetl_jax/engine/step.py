"""One pure train step ``(state, batch, rng) -> (state, metrics)``.

The step differentiates only the trainable partition of the parameters: frozen
leaves are closed over as constants, so XLA computes no gradient for them and
the optimiser holds no state for them ("frozen means free"). BatchNorm running
statistics (``stats_mask``: the rules' trainable mask, for trees that hold
them) are never differentiated: those of frozen modules reach the loss marked
frozen (inference-mode normalisation), the others are replaced by the running
averages the loss reports in ``aux['batch_stats']``. With
``axis_name`` set, gradients and metrics are averaged over that named device
axis, so the same function runs under jit, pmap and shard_map.
"""

from __future__ import annotations

from typing import Callable

import jax
import optax
from jax import lax

from aetl_jax.core.rules import merge_split, split_by_mask
from aetl_jax.core.statistics import mark_frozen, merge_updates
from aetl_jax.engine.state import TrainState

# (params, batch, rng) -> (scalar loss, dict of scalar metrics)
LossFn = Callable[..., tuple[jax.Array, dict]]


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, trainable_mask=None,
                    *, axis_name: str | None = None, stats_mask=None):
  """Builds the pure step. ``trainable_mask`` is a static bool tree of the differentiated
  leaves (None = all); ``stats_mask`` (static, None = no statistics) says which running
  statistics are updated."""

  def step(state: TrainState, batch, rng):
    if axis_name is not None:  # independent dropout noise on every device
      rng = jax.random.fold_in(rng, lax.axis_index(axis_name))
    if trainable_mask is None:
      trainable, frozen = state.params, None
      combine = lambda t: t
    else:
      trainable, frozen = split_by_mask(state.params, trainable_mask)
      combine = lambda t: merge_split(t, frozen)

    def objective(t):
      params = combine(t)
      return loss_fn(params if stats_mask is None else mark_frozen(params, stats_mask), batch, rng)

    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(trainable)
    aux = dict(aux)
    stats = aux.pop("batch_stats", None)
    metrics = {"loss": loss, **aux}
    if axis_name is not None:  # one set of running statistics: averaged over devices
      grads, metrics, stats = lax.pmean((grads, metrics, stats), axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    metrics["grad_norm"] = optax.global_norm(grads)
    params = combine(trainable)
    if stats is not None:
      params = merge_updates(params, stats)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  return step
