"""Supervised objective for the target task."""

from __future__ import annotations

import jax.numpy as jnp
import optax


def make_classification_loss(apply_fn):
  """Softmax cross-entropy on ``batch['label']``.

  ``apply_fn(params, inputs, rng) -> logits`` lets the same objective train a
  full classifier on images or a head on cached features.
  """

  def loss_fn(params, batch, rng):
    logits = apply_fn(params, batch["input"], rng)
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]))
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return loss, {"accuracy": accuracy}

  return loss_fn
