"""Builds models from config: the one place that knows every family and variant.

``model.family`` picks the encoder (mlp, conv, resnet, vit) and
``model.variant`` the autoencoder (plain, denoising, sparse, vae, mae). The
classifier built for transfer uses the same encoder so the Orbax transplant is
a subtree copy.
"""

from __future__ import annotations

from typing import Sequence

from aetl_jax.models.autoencoder import (Autoencoder, Classifier, MaskedAutoencoder,
                                         VariationalAutoencoder)
from aetl_jax.models.conv import ConvDecoder, ConvEncoder, ResNetEncoder, check_downsampling
from aetl_jax.models.mlp import MLPDecoder, MLPEncoder
from aetl_jax.models.vit import MAEDecoder, ViTEncoder, check_patches

MODEL_FAMILIES = ("mlp", "conv", "resnet", "vit")
VARIANTS = ("plain", "denoising", "sparse", "vae", "mae")


def check_model_config(m) -> None:
  if m.family not in MODEL_FAMILIES:
    raise ValueError(f"unknown model family {m.family!r}; valid: {', '.join(MODEL_FAMILIES)}")
  if m.variant not in VARIANTS:
    raise ValueError(f"unknown model variant {m.variant!r}; valid: {', '.join(VARIANTS)}")
  if m.variant == "mae" and m.family != "vit":
    raise ValueError(f"variant 'mae' needs family 'vit' (patch tokens), got {m.family!r}")
  if m.family == "vit" and m.variant not in ("mae",):
    raise ValueError(f"family 'vit' is pretrained as a masked autoencoder: use variant 'mae', "
                     f"got {m.variant!r}")


def _code_dim(m) -> int:
  return 2 * m.latent_dim if m.variant == "vae" else m.code_dim


def build_encoder(m):
  check_model_config(m)
  if m.family == "mlp":
    return MLPEncoder(widths=tuple(m.widths), code_dim=_code_dim(m), dropout_rate=m.dropout_rate)
  if m.family == "conv":
    return ConvEncoder(channels=tuple(m.channels), code_dim=_code_dim(m), norm=m.norm,
                       dropout_rate=m.dropout_rate, conv_impl=m.get("conv_impl", "xla"))
  if m.family == "resnet":
    return ResNetEncoder(channels=tuple(m.channels), blocks_per_stage=m.blocks_per_stage,
                         code_dim=_code_dim(m), norm="group" if m.norm == "none" else m.norm)
  return ViTEncoder(patch=m.patch, dim=m.vit_dim, depth=m.vit_depth, heads=m.vit_heads,
                    dropout_rate=m.dropout_rate)


def check_input_shape(m, image_shape: Sequence[int]) -> None:
  """Raises ValueError naming the dimension when the encoder cannot take this image."""
  check_model_config(m)
  if len(image_shape) != 3:
    raise ValueError(f"images must be (height, width, channels), got shape {tuple(image_shape)}")
  if m.family == "conv":
    check_downsampling(image_shape, len(m.channels), "conv encoder")
  elif m.family == "resnet":
    check_downsampling(image_shape, len(m.channels) - 1, "resnet encoder")
    check_downsampling(image_shape, len(m.channels), "conv decoder")
  elif m.family == "vit":
    check_patches(image_shape, m.patch)


def build_autoencoder(m, image_shape: Sequence[int]):
  check_input_shape(m, image_shape)
  image_shape = tuple(image_shape)
  encoder = build_encoder(m)
  if m.family == "vit":
    gh, gw = check_patches(image_shape, m.patch)
    decoder = MAEDecoder(num_patches=gh * gw, patch_pixels=m.patch * m.patch * image_shape[-1],
                         dim=m.decoder_dim, depth=m.decoder_depth, heads=m.vit_heads)
    return MaskedAutoencoder(encoder=encoder, decoder=decoder, patch=m.patch,
                             image_shape=image_shape, mask_ratio=m.mask_ratio,
                             norm_pix_loss=m.norm_pix_loss)
  if m.family == "mlp":
    decoder = MLPDecoder(image_shape=image_shape, widths=tuple(reversed(tuple(m.widths))))
  else:
    decoder = ConvDecoder(image_shape=image_shape, channels=tuple(reversed(tuple(m.channels))),
                          upsampling=m.upsampling, norm=m.norm,
                          conv_impl=m.get("conv_impl", "xla"))
  if m.variant == "vae":
    return VariationalAutoencoder(encoder=encoder, decoder=decoder, latent_dim=m.latent_dim)
  return Autoencoder(encoder=encoder, decoder=decoder)


def build_classifier(m, num_classes: int) -> Classifier:
  return Classifier(encoder=build_encoder(m), num_classes=num_classes,
                    feature_dim=m.latent_dim if m.variant == "vae" else None)
