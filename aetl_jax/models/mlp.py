"""Dense (MLP) encoder and decoder."""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLPEncoder(nn.Module):
  """Flattens the image, applies ``widths`` hidden layers, projects to the code."""

  widths: Sequence[int] = (256, 128)
  code_dim: int = 32
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = x.reshape((x.shape[0], -1))
    for i, width in enumerate(self.widths):
      x = nn.relu(nn.Dense(width, name=f"block_{i}")(x))
      if self.dropout_rate:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.code_dim, name=f"block_{len(self.widths)}")(x)


class MLPDecoder(nn.Module):
  """Mirror of :class:`MLPEncoder`; returns per-pixel logits of ``image_shape``."""

  image_shape: Sequence[int]
  widths: Sequence[int] = (128, 256)

  @nn.compact
  def __call__(self, z, *, train: bool = False):
    del train
    for i, width in enumerate(self.widths):
      z = nn.relu(nn.Dense(width, name=f"block_{i}")(z))
    z = nn.Dense(math.prod(self.image_shape), name=f"block_{len(self.widths)}")(z)
    return z.reshape((z.shape[0], *self.image_shape))
