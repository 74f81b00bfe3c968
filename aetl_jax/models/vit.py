"""A small Vision Transformer encoder and the light MAE decoder (He et al. 2021).

Encoder blocks: ``block_0`` = patch embedding (+ learned positions),
``block_1..block_depth`` = transformer layers, ``block_{depth+1}`` = final
LayerNorm. Features for transfer are the mean of all patch tokens.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn

from aetl_jax.models.family import DROPOUT, FAMILIES
from aetl_jax.core.registry import Key, positive
import jax
import jax.numpy as jnp


def check_patches(image_shape: Sequence[int], patch: int) -> tuple[int, int]:
  h, w = image_shape[0], image_shape[1]
  for name, size in (("height", h), ("width", w)):
    if size % patch:
      divisors = [p for p in range(1, size + 1) if size % p == 0 and p <= 16]
      raise ValueError(f"vit: patch size {patch} does not divide image {name} {size}; patch sizes "
                       f"that fit: {', '.join(map(str, divisors))} (or pad/resize the image)")
  return h // patch, w // patch


def patchify(x, patch: int):
  """(B, H, W, C) → (B, N, patch·patch·C), patches in row-major order."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(p, patch: int, image_shape: Sequence[int]):
  h, w, c = image_shape
  b = p.shape[0]
  x = p.reshape(b, h // patch, w // patch, patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, w, c)


class PatchEmbed(nn.Module):
  patch: int
  dim: int

  @nn.compact
  def __call__(self, x):
    gh, gw = check_patches(x.shape[1:], self.patch)
    x = nn.Conv(self.dim, (self.patch, self.patch), strides=(self.patch, self.patch),
                padding="VALID", name="projection")(x)
    x = x.reshape(x.shape[0], gh * gw, self.dim)
    pos = self.param("position", nn.initializers.normal(0.02), (1, gh * gw, self.dim))
    return x + pos


class TransformerBlock(nn.Module):
  dim: int
  heads: int
  mlp_ratio: int = 4
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    y = nn.LayerNorm()(x)
    y = nn.MultiHeadDotProductAttention(num_heads=self.heads, dropout_rate=self.dropout_rate,
                                        deterministic=not train)(y, y)
    x = x + y
    y = nn.LayerNorm()(x)
    y = nn.Dense(self.mlp_ratio * self.dim)(y)
    y = nn.gelu(y)
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    return x + nn.Dense(self.dim)(y)


class ViTEncoder(nn.Module):
  patch: int = 4
  dim: int = 64
  depth: int = 4
  heads: int = 4
  dropout_rate: float = 0.0

  def setup(self):
    self.block_0 = PatchEmbed(self.patch, self.dim)
    self.layers = [TransformerBlock(self.dim, self.heads, dropout_rate=self.dropout_rate,
                                    name=f"block_{i + 1}") for i in range(self.depth)]
    self.final_norm = nn.LayerNorm(name=f"block_{self.depth + 1}")

  def embed(self, x):
    """Patch tokens with positions, (B, N, dim)."""
    return self.block_0(x)

  def transform(self, tokens, *, train: bool = False):
    for layer in self.layers:
      tokens = layer(tokens, train=train)
    return self.final_norm(tokens)

  def __call__(self, x, *, train: bool = False):
    """Mean of all patch tokens: the features transfer and probes use."""
    return jnp.mean(self.transform(self.embed(x), train=train), axis=1)


class MAEDecoder(nn.Module):
  """Light transformer over visible tokens + mask tokens; predicts every patch's pixels."""

  num_patches: int
  patch_pixels: int
  dim: int = 64
  depth: int = 2
  heads: int = 4

  @nn.compact
  def __call__(self, visible, ids_restore):
    b, n_keep, _ = visible.shape
    x = nn.Dense(self.dim, name="embed")(visible)
    mask_token = self.param("mask_token", nn.initializers.normal(0.02), (1, 1, self.dim))
    x = jnp.concatenate([x, jnp.broadcast_to(mask_token, (b, self.num_patches - n_keep, self.dim))],
                        axis=1)
    x = jnp.take_along_axis(x, ids_restore[..., None], axis=1)
    x = x + self.param("position", nn.initializers.normal(0.02), (1, self.num_patches, self.dim))
    for i in range(self.depth):
      x = TransformerBlock(self.dim, self.heads, name=f"block_{i}")(x)
    x = nn.LayerNorm()(x)
    return nn.Dense(self.patch_pixels, name="predict")(x)


def random_masking(rng, batch: int, num_patches: int, mask_ratio: float):
  """Per-example random shuffles: (ids_keep, ids_restore, mask) with exactly
  ``round(mask_ratio · N)`` patches masked (mask = 1) in every example."""
  num_masked = int(round(mask_ratio * num_patches))
  if not 0 < num_masked < num_patches:
    raise ValueError(f"mask_ratio {mask_ratio} masks {num_masked} of {num_patches} patches; it must "
                     f"mask at least one and keep at least one")
  noise = jax.random.uniform(rng, (batch, num_patches))
  ids_shuffle = jnp.argsort(noise, axis=1)
  ids_restore = jnp.argsort(ids_shuffle, axis=1)
  ids_keep = ids_shuffle[:, : num_patches - num_masked]
  mask = jnp.ones((batch, num_patches)).at[:, : num_patches - num_masked].set(0.0)
  mask = jnp.take_along_axis(mask, ids_restore, axis=1)
  return ids_keep, ids_restore, mask


def _validate(m) -> None:
  from aetl_jax.core.config import require
  require(m.vit_dim % m.vit_heads == 0, "model.vit_heads",
          f"must divide model.vit_dim={m.vit_dim}, got {m.vit_heads}")


@FAMILIES.register("vit", defaults=dict(
    patch=Key(4, "patch side in pixels", positive(integer=True)),
    vit_dim=Key(64, "token width", positive(integer=True)),
    vit_depth=Key(4, "transformer blocks", positive(integer=True)),
    vit_heads=Key(4, "attention heads", positive(integer=True)),
    dropout_rate=DROPOUT),
                   validate=_validate, decoder=None,
                   check=lambda m, shape: check_patches(shape, m.patch))
def vit(m, code_dim: int):
  """ViT encoder over ``model.patch`` patches (pretrained as a masked autoencoder)."""
  del code_dim  # the class token is the code
  return ViTEncoder(patch=m.patch, dim=m.vit_dim, depth=m.vit_depth, heads=m.vit_heads,
                    dropout_rate=m.dropout_rate)
