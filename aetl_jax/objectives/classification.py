"""Supervised objectives: cross-entropy on labelled batches, alone or beside reconstruction."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from aetl_jax.objectives.reconstruction import (LOSS_KEY, mean_squared_error,
                                                reconstruction_error)
from aetl_jax.models.variables import apply_train
from aetl_jax.objectives.registry import OBJECTIVES
from aetl_jax.core.registry import Key, at_least


def cross_entropy(logits, labels):
  """(mean softmax cross-entropy, accuracy) for integer labels."""
  loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
  return loss, jnp.mean(jnp.argmax(logits, -1) == labels)


def make_classification_loss(apply_fn, role: str | None = "labelled"):
  """Softmax cross-entropy on ``batches[role]['label']`` (``role=None``: the batch itself).

  ``apply_fn(params, inputs, rng) -> logits`` lets the same objective train a
  full classifier on images or a head on cached features.
  """

  def loss_fn(params, batches, rng):
    batch = batches if role is None else batches[role]
    loss, accuracy = cross_entropy(apply_fn(params, batch["image"], rng), batch["label"])
    return loss, {"accuracy": accuracy}

  return loss_fn


@OBJECTIVES.register("classification", model="classifier", roles=("labelled",), defaults={},
                     batch_norm=True)
def classification(model, o):
  """Softmax cross-entropy of the classifier on labelled images."""
  del o

  def loss_fn(params, batches, rng):
    batch = batches["labelled"]
    logits, state = apply_train(model, params, batch["image"], rngs={"dropout": rng})
    loss, accuracy = cross_entropy(logits, batch["label"])
    return loss, {"accuracy": accuracy, **state}

  return loss_fn


@OBJECTIVES.register("joint", model="autoencoder_classifier", roles=("labelled", "images"),
                     defaults=dict(
                         loss=LOSS_KEY,
                         reconstruction_weight=Key(1.0, "weight of the reconstruction term beside classification",
                                                   at_least(0), value=True)))
def joint(model, o):
  """Cross-entropy on ``labelled`` + ``reconstruction_weight`` × reconstruction of ``images``.

  One step reads both batches; both terms are logged.
  """

  def loss_fn(params, batches, rng):
    r_cls, r_rec = jax.random.split(rng)
    labelled, images = batches["labelled"], batches["images"]["image"]
    logits = model.apply({"params": params}, labelled["image"], train=True,
                         rngs={"dropout": r_cls})
    ce, accuracy = cross_entropy(logits, labelled["label"])
    recon_logits, _ = model.apply({"params": params}, images, train=True, rngs={"dropout": r_rec},
                                  method="with_code")
    recon = jnp.mean(reconstruction_error(recon_logits, images, o.loss))
    return ce + o.reconstruction_weight * recon, {
        "accuracy": accuracy, "classification": ce, "reconstruction": recon,
        "mse": mean_squared_error(recon_logits, images)}

  return loss_fn
