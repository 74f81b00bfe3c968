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
import jax.numpy as jnp
import optax
from jax import lax

from aetl_jax.core.rules import merge_split, split_by_mask
from aetl_jax.core.statistics import mark_frozen, merge_updates
from aetl_jax.engine.state import TrainState

# (params, batch, rng) -> (scalar loss, dict of scalar metrics)
LossFn = Callable[..., tuple[jax.Array, dict]]


# How a two-player step orders its players (see make_two_player_step).
ORDERS = ("alternating", "simultaneous")

# The batch key under which a loss receives its run-time values (``TrainState.values``: an
# objective's weights, arguments of the compiled step rather than constants).
VALUES = "values"


def with_progress(batch, step, progress_steps):
  """``batch`` with ``'progress'``: the share of the phase's ``progress_steps`` done (for
  losses that ramp a weight over training); unchanged when None."""
  if progress_steps is None:
    return batch
  return {**batch, "progress": step.astype(jnp.float32) / progress_steps}


def total_steps(opt_state):
  """The phase's length in optimiser steps, a value in its (first) optimiser's state
  (``optax.inject_hyperparams``, see ``engine.phase.schedule_length``)."""
  first = opt_state if hasattr(opt_state, "hyperparams") else opt_state[0]  # (player, adversary)
  return first.hyperparams["total_steps"]


def _loss_batch(state: TrainState, batch, progress: bool):
  """What the loss reads: ``batch``, the phase's progress, the state's run-time values."""
  batch = with_progress(batch, state.step, total_steps(state.opt_state) if progress else None)
  return {**batch, VALUES: state.values} if state.values else batch


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, trainable_mask=None,
                    *, axis_name: str | None = None, stats_mask=None, progress: bool = False):
  """Builds the pure step. ``trainable_mask`` is a static bool tree of the differentiated
  leaves (None = all); ``stats_mask`` (static, None = no statistics) says which running
  statistics are updated; with ``progress`` the loss's batch carries ``'progress'``
  (see :func:`with_progress`; the total is the optimiser state's ``total_steps``)."""

  def step(state: TrainState, batch, rng):
    batch = _loss_batch(state, batch, progress)
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


def make_two_player_step(player_loss: LossFn, player_tx, player_mask, adversary_loss: LossFn,
                         adversary_tx, adversary_mask, *, order: str = "alternating",
                         axis_name: str | None = None, progress: bool = False):
  """A step of a two-player game ``(state, batch, rng) -> (state, metrics)``.

  Two disjoint groups of leaves (static bool masks over the full tree), each minimising its
  own loss with its own optimiser; ``state.opt_state`` is ``(player's, adversary's)``. With
  ``order='alternating'`` the adversary (a discriminator) steps first and the player
  steps against the updated adversary; with ``'simultaneous'`` both gradients are taken at
  the same parameters. Leaves in neither group stay as they are. Metrics: the player's
  ``loss`` and terms, ``adversary_loss`` and the adversary's terms prefixed ``adversary_``.
  """
  if order not in ORDERS:
    raise ValueError(f"unknown order {order!r}; valid: {', '.join(ORDERS)}")

  def descend(loss_fn, tx, mask, params, opt_state, batch, rng):
    trainable, frozen = split_by_mask(params, mask)
    (loss, aux), grads = jax.value_and_grad(
        lambda t: loss_fn(merge_split(t, frozen), batch, rng), has_aux=True)(trainable)
    aux = {"loss": loss, **aux}
    if axis_name is not None:
      grads, aux = lax.pmean((grads, aux), axis_name)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    aux["grad_norm"] = optax.global_norm(grads)
    return merge_split(optax.apply_updates(trainable, updates), frozen), opt_state, aux

  def step(state: TrainState, batch, rng):
    batch = _loss_batch(state, batch, progress)
    if axis_name is not None:
      rng = jax.random.fold_in(rng, lax.axis_index(axis_name))
    r_adv, r_player = jax.random.split(rng)
    player_opt, adversary_opt = state.opt_state
    after_adv, adversary_opt, adv = descend(adversary_loss, adversary_tx, adversary_mask,
                                            state.params, adversary_opt, batch, r_adv)
    start = after_adv if order == "alternating" else state.params
    after_player, player_opt, metrics = descend(player_loss, player_tx, player_mask, start,
                                                player_opt, batch, r_player)
    params = jax.tree.map(lambda m, a, p: a if m else p, adversary_mask, after_adv, after_player)
    metrics.update({f"adversary_{k}": v for k, v in adv.items()})
    return state.replace(step=state.step + 1, params=params,
                         opt_state=(player_opt, adversary_opt)), metrics

  return step
