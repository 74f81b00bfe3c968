"""Reconstruction quality on held-out images: MSE, BCE and PSNR."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from aetl_jax.evaluation.batched import batched_apply
from aetl_jax.evaluation.sequence import token_metrics
from aetl_jax.models.sequence import SequenceAutoencoder
from aetl_jax.objectives.reconstruction import reconstruction_error
from aetl_jax.models.variables import variables


@functools.lru_cache(maxsize=None)
def _per_example_fn(model):
  @jax.jit
  def fn(params, x):
    logits = model.apply(variables(params), x, method="reconstruct")
    mse = reconstruction_error(logits, x, "mse")
    return {"mse": mse, "bce": reconstruction_error(logits, x, "bce"),
            "psnr": -10.0 * jnp.log10(jnp.maximum(mse, 1e-12))}
  return fn


def per_example_metrics(model, params, images, *, batch_size: int = 1024) -> dict:
  """Per-image MSE, BCE (means over pixels) and PSNR, each (N,)."""
  return batched_apply(_per_example_fn(model), params, images, batch_size=batch_size)


def reconstruction_metrics(model, params, images, *, batch_size: int = 1024) -> dict:
  """Mean per-image MSE and BCE, and mean PSNR (dB, peak 1.0); for a sequence autoencoder
  the token metrics of :func:`aetl_jax.evaluation.sequence.token_metrics`."""
  if isinstance(model, SequenceAutoencoder):
    return token_metrics(model, params, images)
  per_example = per_example_metrics(model, params, images, batch_size=batch_size)
  return {k: float(np.mean(v)) for k, v in per_example.items()}


def reconstruct(model, params, images):
  """Reconstructions in [0, 1] (for figures)."""
  return np.asarray(jax.nn.sigmoid(model.apply(variables(params), images, method="reconstruct")))
