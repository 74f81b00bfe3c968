"""Autoencoders (plain, variational, masked) and the classifier that receives
their encoder. Every model exposes ``encode`` (the features transfer uses) and
``reconstruct`` (deterministic reconstruction logits, for evaluation)."""

from __future__ import annotations

from typing import ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from aetl_jax.models.capabilities import Can
from aetl_jax.models.variables import variables
from aetl_jax.models.vit import patchify, random_masking, unpatchify


class Autoencoder(nn.Module):
  """Plain, denoising and sparse autoencoders (the objective differs, not the model)."""

  CAN: ClassVar[Can] = Can(reconstruct=True, init="reconstruct")

  encoder: nn.Module
  decoder: nn.Module

  def __call__(self, x, *, train: bool = False):
    """Reconstruction logits shaped like ``x``."""
    return self.decoder(self.encoder(x, train=train), train=train)

  def with_code(self, x, *, train: bool = False):
    code = self.encoder(x, train=train)
    return self.decoder(code, train=train), code

  def encode(self, x, *, train: bool = False):
    return self.encoder(x, train=train)

  def reconstruct(self, x):
    return self(x)


class VariationalAutoencoder(nn.Module):
  """Gaussian posterior q(z|x) = N(mean, exp(logvar)); the encoder emits both halves.

  ``encode`` returns the posterior mean, so the classifier that receives this
  encoder keeps the first ``latent_dim`` features (see :class:`Classifier`).
  """

  CAN: ClassVar[Can] = Can(reconstruct=True, init="reconstruct")

  encoder: nn.Module  # code_dim == 2 * latent_dim
  decoder: nn.Module
  latent_dim: int

  def posterior(self, x, *, train: bool = False):
    h = self.encoder(x, train=train)
    return h[..., : self.latent_dim], h[..., self.latent_dim:]

  def __call__(self, x, rng, *, train: bool = False):
    """(logits, mean, logvar, z) with z = mean + σ·ε drawn with the explicit ``rng``."""
    mean, logvar = self.posterior(x, train=train)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape)
    return self.decoder(z, train=train), mean, logvar, z

  def decode(self, z):
    return self.decoder(z)

  def encode(self, x, *, train: bool = False):
    return self.posterior(x, train=train)[0]

  def reconstruct(self, x):
    return self.decoder(self.encode(x))


class MaskedAutoencoder(nn.Module):
  """MAE: encode the visible patches only, decode every patch with a light decoder."""

  CAN: ClassVar[Can] = Can(reconstruct=True, init="reconstruct")

  encoder: nn.Module  # ViTEncoder
  decoder: nn.Module  # MAEDecoder
  patch: int
  image_shape: Sequence[int]
  mask_ratio: float = 0.75
  norm_pix_loss: bool = False

  def __call__(self, x, rng, *, train: bool = False):
    """(predicted patch pixels (B, N, P), mask (B, N) with 1 = masked)."""
    tokens = self.encoder.embed(x)
    b, n, _ = tokens.shape
    ids_keep, ids_restore, mask = random_masking(rng, b, n, self.mask_ratio)
    visible = jnp.take_along_axis(tokens, ids_keep[..., None], axis=1)
    encoded = self.encoder.transform(visible, train=train)
    return self.decoder(encoded, ids_restore), mask

  def encode(self, x, *, train: bool = False):
    return self.encoder(x, train=train)

  def reconstruct(self, x):
    """Logits of the masked-patch prediction with a fixed mask (PRNGKey(0)),
    visible patches pasted in. With per-patch normalised targets the
    prediction is de-normalised with the true patch statistics (as in the
    MAE paper's figures)."""
    pred, mask = self(x, jax.random.PRNGKey(0))
    target = patchify(x, self.patch)
    if self.norm_pix_loss:
      mean = target.mean(-1, keepdims=True)
      std = jnp.sqrt(target.var(-1, keepdims=True) + 1e-6)
      pred = pred * std + mean
    merged = jnp.where(mask[..., None] > 0, pred, target)
    image = unpatchify(merged, self.patch, self.image_shape)
    return jax.scipy.special.logit(jnp.clip(image, 1e-4, 1 - 1e-4))


class Classifier(nn.Module):
  """Encoder + linear head: the target-task model the encoder is moved into.

  ``feature_dim`` keeps the first features only (the posterior mean of a VAE
  encoder, whose output also holds the log-variances).
  """

  CAN: ClassVar[Can] = Can(classify=True)

  encoder: nn.Module
  num_classes: int
  feature_dim: int | None = None

  def setup(self):
    self.head = nn.Dense(self.num_classes)

  def __call__(self, x, *, train: bool = False):
    return self.head(self.encode(x, train=train))

  def encode(self, x, *, train: bool = False):
    h = self.encoder(x, train=train)
    return h if self.feature_dim is None else h[..., : self.feature_dim]

  def classify_features(self, features):
    """Head only: used when the encoder is frozen and features are cached."""
    return self.head(features)


class AutoencoderClassifier(nn.Module):
  """Encoder + decoder + linear head: one tree ``{'encoder', 'decoder', 'head'}`` for
  objectives that reconstruct and classify at once (joint and semi-supervised)."""

  CAN: ClassVar[Can] = Can(reconstruct=True, classify=True, init="init_all")

  encoder: nn.Module
  decoder: nn.Module
  num_classes: int

  def setup(self):
    self.head = nn.Dense(self.num_classes)

  def __call__(self, x, *, train: bool = False):
    return self.head(self.encoder(x, train=train))

  def encode(self, x, *, train: bool = False):
    return self.encoder(x, train=train)

  def with_code(self, x, *, train: bool = False):
    code = self.encoder(x, train=train)
    return self.decoder(code, train=train), code

  def reconstruct(self, x):
    return self.decoder(self.encoder(x))

  def classify_features(self, features):
    return self.head(features)

  def init_all(self, x):
    """Touches every submodule (for ``init``)."""
    code = self.encoder(x)
    return self.head(code), self.decoder(code)


class Discriminator(nn.Module):
  """A domain classifier on codes: dense ReLU layers ``hidden``, then one logit."""

  CAN: ClassVar[Can] = Can()

  hidden: Sequence[int] = (100,)

  @nn.compact
  def __call__(self, z):
    for i, width in enumerate(self.hidden):
      z = nn.relu(nn.Dense(width, name=f"layers_{2 * i}")(z))
    return nn.Dense(1, name=f"layers_{2 * len(self.hidden)}")(z)


class DomainClassifier(Classifier):
  """A :class:`Classifier` with a domain classifier on its codes (``domain_logits``), for
  adversarial domain adaptation; ``{'encoder', 'head', 'domain'}``."""

  CAN: ClassVar[Can] = Can(classify=True, init="init_all")

  domain_hidden: Sequence[int] = (100,)

  def setup(self):
    super().setup()
    self.domain = Discriminator(tuple(self.domain_hidden))

  def domain_logits(self, features):
    return self.domain(features)

  def init_all(self, x):
    """Touches every submodule (for ``init``)."""
    code = self.encode(x)
    return self.head(code), self.domain(code)


ADDA_FEATURES = ("codes", "logits")


class AddaClassifier(DomainClassifier):
  """ADDA's models (Tzeng et al. 2017) in one tree ``{'encoder', 'source_encoder', 'head',
  'domain'}``: the target encoder (``encoder``, what the classifier uses), the source encoder
  and the source classifier's head it is mapped to, and the discriminator between them.
  ``adversary_on``: what the discriminator reads — the encoders' ``codes``, or the
  classifiers' ``logits`` as the paper's code does (its LeNet's output layer; the tree then
  holds the source classifier's head as ``source_head`` too)."""

  CAN: ClassVar[Can] = Can(classify=True, init="init_all")

  adversary_on: str = "logits"  # the paper's code; the strategy's default too

  def setup(self):
    super().setup()
    if self.adversary_on not in ADDA_FEATURES:
      raise ValueError(f"unknown adversary_on {self.adversary_on!r}; valid: "
                       f"{', '.join(ADDA_FEATURES)}")
    self.source_encoder = self.encoder.clone(name="source_encoder")
    if self.adversary_on == "logits":
      self.source_head = self.head.clone(name="source_head")

  def source_codes(self, x, *, train: bool = False):
    h = self.source_encoder(x, train=train)
    return h if self.feature_dim is None else h[..., : self.feature_dim]

  def source_features(self, x, *, train: bool = False):
    """What the discriminator sees of a source image (the frozen source network's)."""
    code = self.source_codes(x, train=train)
    return code if self.adversary_on == "codes" else self.source_head(code)

  def target_features(self, x, *, train: bool = False):
    """What the discriminator sees of a target image (the target network's)."""
    code = self.encode(x, train=train)
    return code if self.adversary_on == "codes" else self.head(code)

  def init_all(self, x):
    logits = self.head(self.encode(x))
    return logits, self.domain(self.target_features(x)), self.source_features(x)


def encode(model: nn.Module, params, x):
  """The one encoder interface: features of ``x`` (deterministic, no dropout)."""
  return model.apply(variables(params), x, method="encode")
