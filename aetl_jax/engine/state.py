"""The training state: a plain pytree (step, params, optimiser state)."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax.numpy as jnp
import optax

from aetl_jax.core.rules import split_by_mask


@flax.struct.dataclass
class TrainState:
  step: Any
  params: Any
  opt_state: Any

  @classmethod
  def create(cls, params, tx: optax.GradientTransformation, trainable_mask=None):
    """Optimizer state covers only the trainable leaves (None = all)."""
    trainable = params if trainable_mask is None else split_by_mask(params, trainable_mask)[0]
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(trainable))
