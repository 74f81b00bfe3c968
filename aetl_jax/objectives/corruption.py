"""Input corruptions for denoising autoencoders (pure, explicit rng)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

CORRUPTIONS = ("gaussian", "masking", "salt_and_pepper")


def corrupt(x, rng, kind: str, level: float):
  """Returns a corrupted copy of ``x`` (pixels in [0, 1]).

  gaussian: add N(0, level²) noise, clipped to [0, 1]; masking: set a
  ``level`` fraction of pixels to 0; salt_and_pepper: set a ``level`` fraction
  to 0 or 1 with equal probability.
  """
  if kind == "gaussian":
    return jnp.clip(x + level * jax.random.normal(rng, x.shape), 0.0, 1.0)
  if kind == "masking":
    keep = jax.random.bernoulli(rng, 1.0 - level, x.shape)
    return jnp.where(keep, x, 0.0)
  if kind == "salt_and_pepper":
    r1, r2 = jax.random.split(rng)
    hit = jax.random.bernoulli(r1, level, x.shape)
    salt = jax.random.bernoulli(r2, 0.5, x.shape).astype(x.dtype)
    return jnp.where(hit, salt, x)
  raise ValueError(f"unknown corruption {kind!r}; valid: {', '.join(CORRUPTIONS)}")
