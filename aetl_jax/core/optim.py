"""Optax pieces that turn path-rule values into per-leaf optimiser behaviour.

Frozen leaves never reach the optimiser (see ``aetl_jax.engine.step``): the optimiser
is built over the trainable subtree only, so it keeps no state for them. What
remains per leaf is *how fast* it trains (learning-rate multipliers) and *how
hard it is pulled to zero* (weight-decay multipliers). Both are stateless,
tree-shaped scalings composed with ``optax.chain``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def scale_by_tree(multipliers) -> optax.GradientTransformation:
  """Multiplies each update leaf by the matching leaf of ``multipliers``.

  Applied after the base optimiser, so with Adam the step size of a leaf is
  exactly its multiplier times the global learning rate.
  """

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates, multipliers), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def add_scaled_weight_decay(weight_decay: float, multipliers) -> optax.GradientTransformation:
  """Decoupled weight decay ``wd * m_leaf * param`` with a per-leaf factor."""

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("add_scaled_weight_decay needs params in update()")
    return jax.tree.map(lambda u, p, m: u + weight_decay * m * p, updates, params,
                        multipliers), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def add_l1_decay(l1: float) -> optax.GradientTransformation:
  """Decoupled L1 weight decay: adds ``l1 * sign(param)`` to the update."""

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("add_l1_decay needs params in update()")
    return jax.tree.map(lambda u, p: u + l1 * jnp.sign(p), updates, params), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


# 'linear_tail': constant, then linearly to 0 over this last share of the steps (the Ladder
# network's 100 + 50 epochs, Rasmus et al. 2015). 'inverse_power': lr / (1 + ALPHA p)^BETA over
# training progress p in [0, 1] (DANN's annealing, Ganin et al. 2016, section 5.2.2).
LINEAR_TAIL = 1 / 3
INVERSE_POWER = (10.0, 0.75)


SCHEDULES = ("constant", "cosine", "linear_tail", "inverse_power")


def schedule_factor(schedule: str, count, total_steps, warmup_steps=0):
  """The named schedule at learning rate 1, at optimiser step ``count`` of ``total_steps``
  with ``warmup_steps`` of linear warm-up ('constant' and 'cosine'). Every argument but the
  name may be a traced array: a phase's length is a value of its compiled program, so label
  budgets of different sizes share one (``engine.phase``). Optax's schedules check their
  step counts as Python numbers, hence these formulas (checked in tests/test_science.py)."""
  count = jnp.asarray(count, jnp.float32)
  total = jnp.asarray(total_steps, jnp.float32)
  warm = jnp.asarray(warmup_steps, jnp.float32)
  if schedule == "linear_tail":
    flat = jnp.round(total * (1 - LINEAR_TAIL))
    return 1.0 - jnp.clip((count - flat) / jnp.maximum(total - flat, 1.0), 0.0, 1.0)
  if schedule == "inverse_power":
    alpha, beta = INVERSE_POWER
    return 1.0 / (1.0 + alpha * count / jnp.maximum(total, 1.0)) ** beta
  ramp = jnp.clip(count / jnp.maximum(warm, 1.0), 0.0, 1.0)
  if schedule == "constant":
    return jnp.where(count < warm, ramp, 1.0)
  if schedule == "cosine":
    span = jnp.maximum(total, warm + 1.0) - warm
    cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.clip(count - warm, 0.0, span) / span))
    return jnp.where(count < warm, ramp, cosine)
  raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(map(repr, SCHEDULES))}")


def learning_rate_schedule(learning_rate: float, total_steps, *, schedule: str = "cosine",
                           warmup_steps=0):
  """Named schedules: 'constant', 'cosine' (with optional linear warm-up), 'linear_tail'
  and 'inverse_power' (see :data:`LINEAR_TAIL`, :data:`INVERSE_POWER`,
  :func:`schedule_factor`)."""
  if schedule not in SCHEDULES:
    raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(map(repr, SCHEDULES))}")
  return lambda count: learning_rate * schedule_factor(schedule, count, total_steps, warmup_steps)


def _given(value) -> bool:
  """A decay's term is in the chain unless it is None or a plain zero (an array is a value
  injected by ``optax.inject_hyperparams``: its term is there whatever the value)."""
  return value is not None and (not isinstance(value, (int, float)) or value != 0)


def make_optimizer(*, learning_rate, optimizer: str = "adam", weight_decay: float = 0.0,
                   lr_multipliers=None, wd_multipliers=None, grad_clip_norm: float | None = None,
                   momentum: float = 0.9, nesterov: bool = True, beta1: float = 0.9,
                   l1_decay: float = 0.0) -> optax.GradientTransformation:
  """Base optimiser + per-leaf (L2) weight decay, L1 decay and learning-rate multipliers.

  ``learning_rate`` may be a float or an Optax schedule. The multiplier trees
  must be shaped like the (trainable) parameters the optimiser is given.
  """
  parts = []
  if grad_clip_norm:
    parts.append(optax.clip_by_global_norm(grad_clip_norm))
  if optimizer == "adam":
    parts.append(optax.scale_by_adam(b1=beta1))
  elif optimizer == "sgd":
    parts.append(optax.trace(decay=momentum, nesterov=nesterov))
  else:
    raise ValueError(f"unknown optimizer {optimizer!r}; valid: 'adam', 'sgd'")
  if _given(weight_decay):
    if wd_multipliers is None:
      parts.append(optax.add_decayed_weights(weight_decay))
    else:
      parts.append(add_scaled_weight_decay(weight_decay, wd_multipliers))
  if _given(l1_decay):
    parts.append(add_l1_decay(l1_decay))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  if lr_multipliers is not None:
    parts.append(scale_by_tree(lr_multipliers))
  return optax.chain(*parts)
