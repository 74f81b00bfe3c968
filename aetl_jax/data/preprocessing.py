"""Preprocessing as pure functions on (N, H, W, C) arrays.

They let domains of different sizes and channel counts (28×28 grey, 8×8 grey,
32×32 RGB) share one encoder: scale to [0, 1], bring to a common (H, W, C) by
zero-padding (centred) or resizing, convert grey↔RGB, standardise.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

RESIZE_MODES = ("pad", "resize")


def to_unit(images, max_value: float) -> np.ndarray:
  """uint8 (or 0..max_value) pixels → float32 in [0, 1]."""
  return (np.asarray(images, np.float32) / float(max_value)).astype(np.float32)


def to_channels(images, channels: int) -> np.ndarray:
  c = images.shape[-1]
  if c == channels:
    return images
  if c == 1 and channels == 3:
    return np.repeat(images, 3, axis=-1)
  if c == 3 and channels == 1:
    weights = np.asarray([0.299, 0.587, 0.114], images.dtype)
    return (images @ weights)[..., None].astype(images.dtype)
  raise ValueError(f"cannot convert {c} channels to {channels}; valid: 1 (grey) or 3 (RGB)")


def pad_to(images, height: int, width: int) -> np.ndarray:
  h, w = images.shape[1:3]
  if h > height or w > width:
    raise ValueError(f"cannot pad {h}×{w} images to the smaller {height}×{width}; use "
                     f"resize mode 'resize'")
  top, left = (height - h) // 2, (width - w) // 2
  return np.pad(images, ((0, 0), (top, height - h - top), (left, width - w - left), (0, 0)))


def resize_to(images, height: int, width: int) -> np.ndarray:
  out = jax.image.resize(images, (images.shape[0], height, width, images.shape[-1]), "linear")
  return np.clip(np.asarray(out), 0.0, 1.0).astype(np.float32)


def to_shape(images, shape: Sequence[int], mode: str = "pad") -> np.ndarray:
  """Brings [0, 1] images to ``shape`` = (H, W, C)."""
  if mode not in RESIZE_MODES:
    raise ValueError(f"unknown resize mode {mode!r}; valid: {', '.join(RESIZE_MODES)}")
  height, width, channels = shape
  images = to_channels(images, channels)
  if images.shape[1:3] == (height, width):
    return images
  return pad_to(images, height, width) if mode == "pad" else resize_to(images, height, width)


def standardise(images, mean=None, std=None):
  """Per-channel standardisation; statistics from ``images`` unless given."""
  mean = images.mean(axis=(0, 1, 2)) if mean is None else mean
  std = images.std(axis=(0, 1, 2)) if std is None else std
  return (images - mean) / np.maximum(std, 1e-6), mean, std


def common_shape(shapes: dict, requested: Sequence[int] | None) -> tuple[int, int, int]:
  """The shape every domain is brought to; an error when they differ and none is set."""
  distinct = {tuple(s) for s in shapes.values()}
  if requested:
    if len(requested) != 3:
      raise ValueError(f"data.common_shape must be (height, width, channels), got {tuple(requested)}")
    return tuple(int(v) for v in requested)
  if len(distinct) > 1:
    desc = ", ".join(f"{k} {tuple(v)}" for k, v in shapes.items())
    largest = max(distinct)
    raise ValueError(f"domains have different shapes ({desc}); set data.common_shape, e.g. "
                     f"--config.data.common_shape='{largest}' (with data.resize='pad' or 'resize')")
  return distinct.pop()
