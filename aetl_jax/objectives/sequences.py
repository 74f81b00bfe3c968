"""Sequence-autoencoder objectives (text), each registered by name.

seq_reconstruction  masked token cross-entropy of the teacher-forced decoder
                    (Dai & Le 2015): padding never counts
seq_denoising       the same, with the encoder reading a corrupted copy: a
                    ``corruption_level`` fraction of the tokens replaced by the
                    mask token (word dropout); the decoder predicts the clean text
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from aetl_jax.models.sequence import EOS, MASK, PAD, by_width, masked_mean
from aetl_jax.objectives.registry import OBJECTIVES
from aetl_jax.core.registry import Key, within


def mask_tokens(tokens, rng, level: float):
  """Replaces a ``level`` fraction of the word tokens (not padding, not the end token) by
  the mask token."""
  hit = jax.random.bernoulli(rng, level, tokens.shape) & (tokens != PAD) & (tokens != EOS)
  return jnp.where(hit, MASK, tokens)


def token_loss(model, corrupt_fn=None):
  """Pure loss ``(params, batches, rng)``: mean per-token negative log-likelihood over the
  non-padding tokens of ``batches['images']['image']``; logs token accuracy and perplexity."""

  def on_width(tokens, params, drop_rng, noise_rng):
    inputs = None if corrupt_fn is None else corrupt_fn(tokens, noise_rng)
    mask = (tokens != PAD).astype(jnp.float32)
    count = jnp.maximum(jnp.sum(mask), 1.0)
    # The mean over the non-padding tokens as a weighted sum: the decoder's readout then
    # takes its gradient in one pass (models.kernels.linear_cross_entropy). The batch is cut
    # to its width already: every step runs, ungated.
    loss, correct = model.apply({"params": params}, tokens, inputs=inputs, weights=mask / count,
                                train=True, gated=False, rngs={"dropout": drop_rng})
    return loss, {"token_accuracy": masked_mean(correct, tokens), "perplexity": jnp.exp(loss)}

  def loss_fn(params, batches, rng):
    tokens = batches["images"]["image"].astype(jnp.int32)
    # The batch is cut to a static width that holds its longest sentence (batches are
    # length-bucketed by the epoch), so a short phrase does not pay for the longest one.
    return by_width(on_width, tokens, params, *jax.random.split(rng))

  return loss_fn


@OBJECTIVES.register("seq_reconstruction", model="seq_autoencoder", defaults={})
def seq_reconstruction(model, o):
  """Reconstruct the token sequence with teacher forcing (masked cross-entropy)."""
  del o
  return token_loss(model)


@OBJECTIVES.register("seq_denoising", model="seq_autoencoder",
                     defaults=dict(
                         corruption_level=Key(0.2, "share of the tokens masked",
                                              within(0, 1, closed="[)"))))
def seq_denoising(model, o):
  """Reconstruct the clean sequence from one with masked tokens (word dropout)."""
  return token_loss(model, lambda t, rng: mask_tokens(t, rng, o.corruption_level))
