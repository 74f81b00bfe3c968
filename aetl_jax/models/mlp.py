"""Dense (MLP) encoder and decoder."""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn

from aetl_jax.models.family import DROPOUT, FAMILIES
from aetl_jax.core.registry import Key, each, positive


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


def _check(m, image_shape) -> None:
  del m, image_shape  # a dense encoder takes any image shape


@FAMILIES.register("mlp", defaults=dict(
    widths=Key((128, 64), "hidden layer widths, input to code",
               each(positive(integer=True), "positive integers")),
    code_dim=Key(32, "size of the code (0: the trunk's own features)"),
    dropout_rate=DROPOUT),
                   decoder=lambda m, shape: MLPDecoder(image_shape=tuple(shape),
                                                       widths=tuple(reversed(tuple(m.widths)))),
                   check=_check)
def mlp(m, code_dim: int):
  """Dense layers ``model.widths`` → code (``block_<i>`` per layer)."""
  return MLPEncoder(widths=tuple(m.widths), code_dim=code_dim, dropout_rate=m.dropout_rate)
