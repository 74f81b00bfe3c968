"""Builds models from config: one place that knows every model family."""

from __future__ import annotations

from typing import Sequence

from aetl_jax.models.autoencoder import Autoencoder, Classifier
from aetl_jax.models.mlp import MLPDecoder, MLPEncoder

MODEL_FAMILIES = ("mlp",)


def _check_family(family: str):
  if family not in MODEL_FAMILIES:
    raise ValueError(f"unknown model family {family!r}; valid: {', '.join(MODEL_FAMILIES)}")


def build_encoder(model_config):
  _check_family(model_config.family)
  return MLPEncoder(widths=tuple(model_config.widths), code_dim=model_config.code_dim,
                    dropout_rate=model_config.get("dropout_rate", 0.0))


def build_autoencoder(model_config, image_shape: Sequence[int]) -> Autoencoder:
  encoder = build_encoder(model_config)
  decoder = MLPDecoder(image_shape=tuple(image_shape),
                       widths=tuple(reversed(tuple(model_config.widths))))
  return Autoencoder(encoder=encoder, decoder=decoder)


def build_classifier(model_config, num_classes: int) -> Classifier:
  return Classifier(encoder=build_encoder(model_config), num_classes=num_classes)
