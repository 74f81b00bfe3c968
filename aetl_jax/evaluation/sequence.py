"""Reconstruction quality of a sequence autoencoder on held-out sentences."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from aetl_jax.evaluation.batched import batched_apply
from aetl_jax.models.sequence import PAD


@functools.lru_cache(maxsize=None)
def _per_example_fn(model):
  @jax.jit
  def fn(params, tokens):
    nll, correct = model.apply({"params": params}, tokens)
    mask = (tokens != PAD).astype(nll.dtype)
    return {"nll": jnp.sum(nll * mask, -1), "correct": jnp.sum(correct * mask, -1),
            "tokens": jnp.sum(mask, -1)}
  return fn


def token_metrics(model, params, tokens, *, batch_size: int = 512) -> dict:
  """Token-level negative log-likelihood (nats per token), perplexity and accuracy of the
  teacher-forced reconstruction, pooled over every non-padding token."""
  out = batched_apply(_per_example_fn(model), params, tokens, batch_size=batch_size)
  n = max(float(np.sum(out["tokens"])), 1.0)
  nll = float(np.sum(out["nll"])) / n
  return {"token_nll": nll, "perplexity": float(np.exp(nll)),
          "token_accuracy": float(np.sum(out["correct"])) / n}
