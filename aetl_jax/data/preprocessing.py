"""Preprocessing as pure functions on (N, H, W, C) arrays.

They let domains of different sizes and channel counts (28×28 grey, 8×8 grey,
32×32 RGB) share one encoder: scale to [0, 1], bring to a common (H, W, C) by
zero-padding (centred) or resizing, convert grey↔RGB, standardise.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

RESIZE_MODES = ("pad", "resize", "bbox")
# 'bbox': each image's ink cropped to its bounding box and rescaled (aspect ratio kept) to fit
# a box of BOX_FRACTION of the frame, placed with its centre of mass at the frame's centre:
# how MNIST was made from NIST (a 20×20 box in a 28×28 frame; LeCun et al. 1998).
BOX_FRACTION = 20 / 28
INK = 0.1  # a pixel is ink above this fraction of its image's maximum


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


def _box_one(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """One (h, w) image in [0, 1] → its ink box rescaled into a (height, width) frame, centred
  by mass (see :data:`BOX_FRACTION`)."""
  from PIL import Image
  ink = image > INK * image.max() if image.max() > 0 else np.zeros(image.shape, bool)
  if not ink.any():
    return np.zeros((height, width), np.float32)
  rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
  crop = image[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
  box = max(1, int(round(BOX_FRACTION * min(height, width))))
  scale = box / max(crop.shape)
  h, w = max(1, int(round(crop.shape[0] * scale))), max(1, int(round(crop.shape[1] * scale)))
  small = np.asarray(Image.fromarray(crop.astype(np.float32), mode="F").resize(
      (w, h), Image.BILINEAR), np.float32).clip(0.0, 1.0)
  mass = small.sum()
  cy = (small.sum(1) @ np.arange(h)) / mass if mass > 0 else (h - 1) / 2
  cx = (small.sum(0) @ np.arange(w)) / mass if mass > 0 else (w - 1) / 2
  top = int(np.clip(round((height - 1) / 2 - cy), 0, height - h))
  left = int(np.clip(round((width - 1) / 2 - cx), 0, width - w))
  out = np.zeros((height, width), np.float32)
  out[top: top + h, left: left + w] = small
  return out


def bounding_box(images, height: int, width: int) -> np.ndarray:
  """(N, h, w, C) [0, 1] images → (N, height, width, C) with each image's ink box rescaled
  and centred by mass (channels share the box of their mean)."""
  images = np.asarray(images, np.float32)
  out = np.zeros((len(images), height, width, images.shape[-1]), np.float32)
  for i, image in enumerate(images):
    if images.shape[-1] == 1:
      out[i, ..., 0] = _box_one(image[..., 0], height, width)
    else:  # the box of the mean channel, each channel cropped and placed alike
      for c in range(images.shape[-1]):
        out[i, ..., c] = _box_one(image[..., c] * (image.mean(-1) > 0), height, width)
  return out


def ink_statistics(images) -> dict:
  """Mean pixel and the share of ink pixels (> :data:`INK` of the maximum) of [0, 1] images."""
  images = np.asarray(images, np.float32)
  return {"mean_pixel": float(images.mean()), "ink_fraction": float((images > INK).mean())}


def to_shape(images, shape: Sequence[int], mode: str = "pad") -> np.ndarray:
  """Brings [0, 1] images to ``shape`` = (H, W, C)."""
  if mode not in RESIZE_MODES:
    raise ValueError(f"unknown resize mode {mode!r}; valid: {', '.join(RESIZE_MODES)}")
  height, width, channels = shape
  images = to_channels(images, channels)
  if mode == "bbox":  # every image, also those already of the frame's size (one layout)
    return bounding_box(images, height, width)
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
