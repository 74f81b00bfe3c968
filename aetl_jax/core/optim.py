"""Optax pieces that turn path-rule values into per-leaf optimiser behaviour.

Frozen leaves never reach the optimiser (see ``training.step``): the optimiser
is built over the trainable subtree only, so it keeps no state for them. What
remains per leaf is *how fast* it trains (learning-rate multipliers) and *how
hard it is pulled to zero* (weight-decay multipliers). Both are stateless,
tree-shaped scalings composed with ``optax.chain``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class _Empty(NamedTuple):
  pass


def scale_by_tree(multipliers) -> optax.GradientTransformation:
  """Multiplies each update leaf by the matching leaf of ``multipliers``.

  Applied after the base optimiser, so with Adam the step size of a leaf is
  exactly its multiplier times the global learning rate.
  """

  def init_fn(params):
    del params
    return _Empty()

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates, multipliers), state

  return optax.GradientTransformation(init_fn, update_fn)


def add_scaled_weight_decay(weight_decay: float, multipliers) -> optax.GradientTransformation:
  """Decoupled weight decay ``wd * m_leaf * param`` with a per-leaf factor."""

  def init_fn(params):
    del params
    return _Empty()

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("add_scaled_weight_decay needs params in update()")
    return jax.tree.map(lambda u, p, m: u + weight_decay * m * p, updates, params,
                        multipliers), state

  return optax.GradientTransformation(init_fn, update_fn)


def add_l1_decay(l1: float) -> optax.GradientTransformation:
  """Decoupled L1 weight decay: adds ``l1 * sign(param)`` to the update."""

  def init_fn(params):
    del params
    return _Empty()

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("add_l1_decay needs params in update()")
    return jax.tree.map(lambda u, p: u + l1 * jnp.sign(p), updates, params), state

  return optax.GradientTransformation(init_fn, update_fn)


def learning_rate_schedule(learning_rate: float, total_steps: int, *, schedule: str = "cosine",
                           warmup_steps: int = 0):
  """Named schedules: 'constant' or 'cosine' (with optional linear warm-up)."""
  if schedule == "constant":
    if warmup_steps:
      return optax.join_schedules(
          [optax.linear_schedule(0.0, learning_rate, warmup_steps),
           optax.constant_schedule(learning_rate)], [warmup_steps])
    return optax.constant_schedule(learning_rate)
  if schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0 if warmup_steps else learning_rate, learning_rate, warmup_steps,
        max(total_steps, warmup_steps + 1), end_value=0.0)
  raise ValueError(f"unknown schedule {schedule!r}; valid: 'constant', 'cosine'")


def make_optimizer(*, learning_rate, optimizer: str = "adam", weight_decay: float = 0.0,
                   lr_multipliers=None, wd_multipliers=None, grad_clip_norm: float | None = None,
                   momentum: float = 0.9, nesterov: bool = True,
                   l1_decay: float = 0.0) -> optax.GradientTransformation:
  """Base optimiser + per-leaf (L2) weight decay, L1 decay and learning-rate multipliers.

  ``learning_rate`` may be a float or an Optax schedule. The multiplier trees
  must be shaped like the (trainable) parameters the optimiser is given.
  """
  parts = []
  if grad_clip_norm:
    parts.append(optax.clip_by_global_norm(grad_clip_norm))
  if optimizer == "adam":
    parts.append(optax.scale_by_adam())
  elif optimizer == "sgd":
    parts.append(optax.trace(decay=momentum, nesterov=nesterov))
  else:
    raise ValueError(f"unknown optimizer {optimizer!r}; valid: 'adam', 'sgd'")
  if weight_decay:
    if wd_multipliers is None:
      parts.append(optax.add_decayed_weights(weight_decay))
    else:
      parts.append(add_scaled_weight_decay(weight_decay, wd_multipliers))
  if l1_decay:
    parts.append(add_l1_decay(l1_decay))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  if lr_multipliers is not None:
    parts.append(scale_by_tree(lr_multipliers))
  return optax.chain(*parts)
