"""Contractive autoencoder (Rifai et al. 2011): reconstruction + λ‖∂h/∂x‖²_F.

Registered here: this function and its decorator are the whole addition (a built-in is imported
by its package's __init__; your own module is imported by your config file).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from aetl_jax.objectives.reconstruction import (LOSS_KEY, mean_squared_error,
                                                reconstruction_error)
from aetl_jax.objectives.registry import OBJECTIVES
from aetl_jax.core.registry import Key, at_least


def jacobian_penalty(encode, x):
  """Mean over the batch of the squared Frobenius norm of ∂code/∂input, per example.

  Computed exactly with one vector-Jacobian product per code unit (``jax.jacrev``
  of the per-example encoder), vmapped over the batch.
  """
  def one(xi):
    jac = jax.jacrev(lambda v: encode(v[None])[0])(xi)  # (code, *image)
    return jnp.sum(jac ** 2)
  return jnp.mean(jax.vmap(one)(x))


@OBJECTIVES.register("contractive",
                     defaults=dict(
                         loss=LOSS_KEY,
                         contractive_weight=Key(0.1, "weight of the encoder Jacobian's Frobenius norm",
                                                at_least(0), value=True)))
def contractive(model, o):
  """Reconstruction + ``contractive_weight`` × ‖∂code/∂x‖²_F (encoder Jacobian)."""

  def loss_fn(params, batches, rng):
    x = batches["images"]["image"]
    logits = model.apply({"params": params}, x, train=True, rngs={"dropout": rng})
    recon = jnp.mean(reconstruction_error(logits, x, o.loss))
    encode = lambda v: model.apply({"params": params}, v, method="encode")
    penalty = jacobian_penalty(encode, x)
    return recon + o.contractive_weight * penalty, {
        "mse": mean_squared_error(logits, x), "reconstruction": recon, "contractive": penalty}

  return loss_fn
