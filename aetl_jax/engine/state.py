"""The training state: a plain pytree (step, params, optimiser state, run-time values)."""

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
  # The loss's run-time values by name (an objective's weights: see engine.step.VALUES). Not
  # checkpointed: they come from the phase, as its learning rate does.
  values: Any = flax.struct.field(default_factory=dict)

  @classmethod
  def create(cls, params, tx: optax.GradientTransformation, trainable_mask=None, values=None):
    """Optimizer state covers only the trainable leaves (None = all)."""
    trainable = params if trainable_mask is None else split_by_mask(params, trainable_mask)[0]
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(trainable),
               values={k: jnp.asarray(v, jnp.float32) for k, v in (values or {}).items()})
