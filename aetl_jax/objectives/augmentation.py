"""Data augmentation as pure, jittable, per-example transforms of images in [0, 1].

An augmentation is registered as ``fn(rng, image, strength) -> image`` on one
(H, W, C) image; :func:`augment` applies a chain of them to a batch with one
key per example (``jax.vmap``), so the same key gives the same batch and
labels are never touched. Built in: ``translate`` (integer shifts up to
``strength`` × the image side, zero fill), ``rotate`` (up to ``strength``
degrees, bilinear), ``noise`` (Gaussian, std ``strength``, clipped),
``cutout`` (a zeroed square of side ``strength`` × the image side), so one
chain suits 8×8 and 28×28 images alike::

    from aetl_jax.objectives.augmentation import AUGMENTATIONS

    @AUGMENTATIONS.register("flip")
    def flip(rng, image, strength):
      return jnp.where(jax.random.bernoulli(rng), image[:, ::-1], image)
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp

from aetl_jax.core.registry import Registry

AUGMENTATIONS = Registry("augmentation", "transfer.augment")


def _pixels(fraction, side: int) -> int:
  return int(round(float(fraction) * side))


@AUGMENTATIONS.register("translate")
def translate(rng, image, strength):
  """Shift by integers up to ``strength`` × the image side along each axis (zero fill)."""
  s = _pixels(strength, max(image.shape[:2]))
  dy, dx = jax.random.randint(rng, (2,), -s, s + 1)
  h, w, _ = image.shape
  padded = jnp.pad(image, ((s, s), (s, s), (0, 0)))
  return jax.lax.dynamic_slice(padded, (s - dy, s - dx, 0), (h, w, image.shape[2]))


@AUGMENTATIONS.register("rotate")
def rotate(rng, image, strength):
  """Rotate about the centre by an angle uniform in [-strength, strength] degrees."""
  return rotate_by(image, jax.random.uniform(rng, (), minval=-strength, maxval=strength))


def rotate_by(image, degrees):
  """``image`` (H, W, C) rotated about its centre by ``degrees`` (bilinear, zero fill);
  +90 on a square image is ``np.rot90(image, -1)``."""
  angle = degrees * math.pi / 180
  h, w, c = image.shape
  yy, xx = jnp.meshgrid(jnp.arange(h) - (h - 1) / 2, jnp.arange(w) - (w - 1) / 2, indexing="ij")
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  src_y = cos * yy - sin * xx + (h - 1) / 2
  src_x = sin * yy + cos * xx + (w - 1) / 2
  channel = lambda ch: jax.scipy.ndimage.map_coordinates(ch, [src_y, src_x], order=1, cval=0.0)
  return jnp.stack([channel(image[..., k]) for k in range(c)], -1)


@AUGMENTATIONS.register("noise")
def noise(rng, image, strength):
  """Add Gaussian noise of std ``strength``; clip to [0, 1]."""
  return jnp.clip(image + strength * jax.random.normal(rng, image.shape), 0.0, 1.0)


@AUGMENTATIONS.register("cutout")
def cutout(rng, image, strength):
  """Zero a square of side ``strength`` × the image side at a uniform position."""
  h, w, _ = image.shape
  s = _pixels(strength, max(h, w))
  cy, cx = jax.random.randint(rng, (2,), 0, jnp.array([h, w]))
  yy, xx = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  hole = (jnp.abs(yy - cy) <= s // 2) & (jnp.abs(xx - cx) <= s // 2)
  return jnp.where(hole[..., None], 0.0, image)


def augment(rng, images, chain: Sequence[tuple[str, float]]):
  """Applies ``chain`` (``((name, strength), ...)``, in order) to every image of the batch,
  each with its own key; an empty chain returns ``images``."""
  if not chain:
    return images
  fns = [(AUGMENTATIONS.get(name).fn, float(strength)) for name, strength in chain]

  def one(key, image):
    for k, (fn, strength) in zip(jax.random.split(key, len(fns)), fns):
      image = fn(k, image, strength)
    return image

  return jax.vmap(one)(jax.random.split(rng, images.shape[0]), images)


@functools.lru_cache(maxsize=64)
def augmenting(loss_fn, chain: tuple, roles: tuple = ("labelled",)):
  """``loss_fn`` with the images of ``roles`` augmented by ``chain`` at every step (a new
  draw per step from the step's rng; labels untouched). Cached: the same loss and chain give
  the same function, so phases that use it share their compilation."""

  def wrapped(params, batches, rng):
    aug_rng, rng = jax.random.split(rng)
    batches = {role: ({**b, "image": augment(jax.random.fold_in(aug_rng, i), b["image"], chain)}
                      if role in roles else b)
               for i, (role, b) in enumerate(batches.items())}
    return loss_fn(params, batches, rng)

  return wrapped


def check_chain(chain, key: str) -> tuple[tuple[str, float], ...]:
  """``chain`` as a tuple of (registered name, strength >= 0); ConfigError otherwise."""
  from aetl_jax.core.config import require
  out = []
  for item in chain:
    require(isinstance(item, (tuple, list)) and len(item) == 2, key,
            f"each augmentation is (name, strength), e.g. ('translate', 2); got {item!r}")
    name, strength = item
    AUGMENTATIONS.get(name)
    require(isinstance(strength, (int, float)) and strength >= 0, key,
            f"strength of {name!r} must be a number >= 0, got {strength!r}")
    out.append((str(name), float(strength)))
  return tuple(out)
