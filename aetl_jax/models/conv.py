"""Convolutional encoder/decoder and a residual conv encoder.

Encoders downsample with stride-2 convolutions; decoders upsample by 2 per
block with a transposed convolution ('transpose'), nearest-neighbour resize +
conv ('resize') or sub-pixel conv + depth-to-space ('subpixel'). Layers are
named ``block_<i>`` from input to code so path rules can address them.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from aetl_jax.models.conv_ops import (CONV_IMPLS, check_conv_impl, conv_class,
                                      conv_transpose_class, depth_to_space)
from aetl_jax.models.family import DROPOUT, FAMILIES
from aetl_jax.core.registry import Key, each, one_of, positive

UPSAMPLING = ("transpose", "resize", "subpixel")
NORMS = ("none", "layer", "group")


def _norm(kind: str, name: str | None = None):
  if kind == "none":
    return lambda x: x
  if kind == "layer":
    return nn.LayerNorm(name=name)
  if kind == "group":
    return nn.GroupNorm(num_groups=None, group_size=8, name=name)
  raise ValueError(f"unknown norm {kind!r}; valid: {', '.join(NORMS)}")


def check_downsampling(image_shape: Sequence[int], num_strides: int, what: str) -> tuple[int, int]:
  """Spatial size after ``num_strides`` halvings; a clear error when it does not fit."""
  h, w = image_shape[0], image_shape[1]
  factor = 2 ** num_strides
  for name, size in (("height", h), ("width", w)):
    if size % factor:
      fits = max(k for k in range(num_strides + 1) if size % (2 ** k) == 0)
      padded = math.ceil(size / factor) * factor
      raise ValueError(
          f"{what}: image {name} {size} is not divisible by 2^{num_strides}={factor} "
          f"({num_strides} stride-2 blocks); use at most {fits} strided blocks for this size, "
          f"or pad/resize the image to {padded}")
  return h // factor, w // factor


class ConvEncoder(nn.Module):
  """Stride-2 3×3 conv blocks, then a dense projection to the code.

  ``conv_impl``: 'xla' (``nn.Conv``), 'hybrid' (XLA's convolution for wide
  layers, the narrow formulation for narrow ones), 'onednn' ('hybrid' with oneDNN's
  convolutions for the wide layers), a matmul formulation with the same parameters
  ('im2col', 'shift_add', 'matmul' = per layer) or 'auto' ('onednn' on CPU where it
  builds, else 'hybrid'; 'xla' on GPU/TPU); see :mod:`aetl_jax.models.conv_ops`.
  """

  channels: Sequence[int] = (32, 64)
  code_dim: int = 32
  norm: str = "none"
  dropout_rate: float = 0.0
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    check_downsampling(x.shape[1:], len(self.channels), "conv encoder")
    conv = conv_class(self.conv_impl)
    for i, c in enumerate(self.channels):
      x = conv(c, (3, 3), strides=(2, 2), padding="SAME", name=f"block_{i}")(x)
      x = nn.relu(_norm(self.norm)(x))
      if self.dropout_rate:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(self.code_dim, name=f"block_{len(self.channels)}")(x)


class ConvDecoder(nn.Module):
  """Dense to a small feature map, then ×2 upsampling blocks, then 3×3 conv to logits."""

  image_shape: Sequence[int]
  channels: Sequence[int] = (64, 32)
  upsampling: str = "transpose"
  norm: str = "none"
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, z, *, train: bool = False):
    del train
    conv = conv_class(self.conv_impl)
    if self.upsampling not in UPSAMPLING:
      raise ValueError(f"unknown upsampling {self.upsampling!r}; valid: {', '.join(UPSAMPLING)}")
    h, w = check_downsampling(self.image_shape, len(self.channels), "conv decoder")
    x = nn.Dense(h * w * self.channels[0], name="block_0")(z)
    x = nn.relu(x).reshape((z.shape[0], h, w, self.channels[0]))
    for i, c in enumerate(self.channels):
      name = f"block_{i + 1}"
      if self.upsampling == "transpose":
        x = conv_transpose_class(self.conv_impl)(c, (4, 4), strides=(2, 2), padding="SAME",
                                                 name=name)(x)
      elif self.upsampling == "resize":
        b, hh, ww, cc = x.shape
        x = jax.image.resize(x, (b, 2 * hh, 2 * ww, cc), "nearest")
        x = conv(c, (3, 3), padding="SAME", name=name)(x)
      else:
        x = depth_to_space(conv(4 * c, (3, 3), padding="SAME", name=name)(x))
      x = nn.relu(_norm(self.norm)(x))
    out = conv(self.image_shape[-1], (3, 3), padding="SAME",
               name=f"block_{len(self.channels) + 1}")(x)
    return out


class ResidualBlock(nn.Module):
  channels: int
  stride: int = 1
  norm: str = "group"

  @nn.compact
  def __call__(self, x):
    y = nn.Conv(self.channels, (3, 3), strides=(self.stride, self.stride), padding="SAME")(x)
    y = nn.relu(_norm(self.norm)(y))
    y = nn.Conv(self.channels, (3, 3), padding="SAME")(y)
    y = _norm(self.norm)(y)
    if self.stride != 1 or x.shape[-1] != self.channels:
      x = nn.Conv(self.channels, (1, 1), strides=(self.stride, self.stride), name="projection")(x)
    return nn.relu(x + y)


class ResNetEncoder(nn.Module):
  """3×3 stem, residual stages (stride 2 between stages), global average pool, dense code."""

  channels: Sequence[int] = (32, 64)
  blocks_per_stage: int = 1
  code_dim: int = 32
  norm: str = "group"

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    del train
    check_downsampling(x.shape[1:], len(self.channels) - 1, "resnet encoder")
    x = nn.relu(nn.Conv(self.channels[0], (3, 3), padding="SAME", name="block_0")(x))
    i = 1
    for stage, c in enumerate(self.channels):
      for j in range(self.blocks_per_stage):
        stride = 2 if (stage > 0 and j == 0) else 1
        x = ResidualBlock(c, stride, self.norm, name=f"block_{i}")(x)
        i += 1
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.code_dim, name=f"block_{i}")(x)


def _conv_decoder(m, image_shape):
  return ConvDecoder(image_shape=tuple(image_shape), channels=tuple(reversed(tuple(m.channels))),
                     upsampling=m.upsampling, norm=m.norm, conv_impl=m.conv_impl)


def _check_conv(m, image_shape) -> None:
  check_downsampling(image_shape, len(m.channels), "conv encoder")


def _check_resnet(m, image_shape) -> None:
  check_downsampling(image_shape, len(m.channels) - 1, "resnet encoder")
  check_downsampling(image_shape, len(m.channels), "conv decoder")


_CONV = dict(
    channels=Key((32, 64), "channels of the conv blocks, input to code",
                 each(positive(integer=True), "positive integers")),
    code_dim=Key(32, "size of the code (0: the trunk's own features)"),
    norm=Key("none", "normalisation after each conv: none, layer or group", one_of(*NORMS)),
    dropout_rate=DROPOUT,
    upsampling=Key("transpose", "the decoder's upsampling: transpose, resize or subpixel",
                   one_of(*UPSAMPLING)),
    conv_impl=Key("auto", f"convolution formulation: {', '.join(CONV_IMPLS)} ('onednn': "
                  f"oneDNN's convolutions, CPU; auto's choice there where they build)",
                  one_of(*CONV_IMPLS)))


@FAMILIES.register("conv", defaults=_CONV, decoder=_conv_decoder,
                   check=_check_conv, validate=check_conv_impl)
def conv(m, code_dim: int):
  """Stride-2 conv blocks ``model.channels`` → dense code; a mirrored decoder."""
  return ConvEncoder(channels=tuple(m.channels), code_dim=code_dim, norm=m.norm,
                     dropout_rate=m.dropout_rate, conv_impl=m.conv_impl)


@FAMILIES.register("resnet", defaults={
    **_CONV,
    "blocks_per_stage": Key(1, "residual blocks per stage", positive(integer=True))},
                   decoder=_conv_decoder, check=_check_resnet, validate=check_conv_impl)
def resnet(m, code_dim: int):
  """Residual conv stages ``model.channels`` (``blocks_per_stage`` each) → dense code."""
  return ResNetEncoder(channels=tuple(m.channels), blocks_per_stage=m.blocks_per_stage,
                       code_dim=code_dim, norm="group" if m.norm == "none" else m.norm)
