"""Autoencoder and classifier wrappers sharing one encoder module."""

from __future__ import annotations

import flax.linen as nn


class Autoencoder(nn.Module):
  encoder: nn.Module
  decoder: nn.Module

  def __call__(self, x, *, train: bool = False):
    """Returns reconstruction logits shaped like ``x``."""
    return self.decoder(self.encoder(x, train=train), train=train)

  def encode(self, x, *, train: bool = False):
    return self.encoder(x, train=train)


class Classifier(nn.Module):
  """Encoder + linear head: the target-task model the encoder is moved into."""

  encoder: nn.Module
  num_classes: int

  def setup(self):
    self.head = nn.Dense(self.num_classes)

  def __call__(self, x, *, train: bool = False):
    return self.head(self.encoder(x, train=train))

  def encode(self, x, *, train: bool = False):
    return self.encoder(x, train=train)

  def classify_features(self, features):
    """Head only: used when the encoder is frozen and features are cached."""
    return self.head(features)


def encode(model: nn.Module, params, x):
  """The one encoder interface: features of ``x`` (deterministic, no dropout)."""
  return model.apply({"params": params}, x, method="encode")
