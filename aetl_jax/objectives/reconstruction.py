"""Reconstruction objectives for pretraining."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

RECONSTRUCTION_LOSSES = ("bce", "mse")


def reconstruction_error(logits, target, kind: str):
  """Per-example mean error over pixels. ``logits`` are pre-sigmoid outputs."""
  axes = tuple(range(1, target.ndim))
  if kind == "bce":
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, target), axis=axes)
  if kind == "mse":
    return jnp.mean((jax.nn.sigmoid(logits) - target) ** 2, axis=axes)
  raise ValueError(f"unknown reconstruction loss {kind!r}; valid: {', '.join(RECONSTRUCTION_LOSSES)}")


def make_reconstruction_loss(model, kind: str = "bce"):
  """Plain autoencoder objective on ``batch['image']`` in [0, 1]."""
  if kind not in RECONSTRUCTION_LOSSES:
    raise ValueError(f"unknown reconstruction loss {kind!r}; valid: {', '.join(RECONSTRUCTION_LOSSES)}")

  def loss_fn(params, batch, rng):
    x = batch["image"]
    logits = model.apply({"params": params}, x, train=True, rngs={"dropout": rng})
    loss = jnp.mean(reconstruction_error(logits, x, kind))
    mse = jnp.mean((jax.nn.sigmoid(logits) - x) ** 2)
    return loss, {"mse": mse}

  return loss_fn
