"""Builds models from config: the encoder by ``model.family`` (a registry), the
wrapper by what the objective trains.

``kind`` is the model an objective declares: ``autoencoder`` (plain,
denoising, sparse, contractive), ``vae``, ``mae``; the classifier built for
transfer uses the same encoder, so the Orbax transplant is a subtree copy.
"""

from __future__ import annotations

from typing import Sequence

from aetl_jax.models import conv, lenet, mlp, resnet18, sequence, vit  # noqa: F401 - built-ins register
from aetl_jax.models.autoencoder import (AddaClassifier, Autoencoder, AutoencoderClassifier,
                                         Classifier, DomainClassifier, MaskedAutoencoder,
                                         VariationalAutoencoder)
from aetl_jax.models.capabilities import Can
from aetl_jax.models.family import FAMILIES
from aetl_jax.models.sequence import SequenceAutoencoder
from aetl_jax.models.vit import MAEDecoder, check_patches

KINDS = ("autoencoder", "vae", "mae", "seq_autoencoder")


# Models that classify carry a plain autoencoder's encoder (and decoder, for joint objectives).
CLASSIFIER_KINDS = ("classifier", "autoencoder_classifier", "domain_classifier", "adda")


def encoder_kind(kind: str) -> str:
  """The encoder a model kind carries: ``vae``/``mae``'s own, a plain one otherwise."""
  return "autoencoder" if kind in CLASSIFIER_KINDS else kind


def input_kind(m) -> str:
  """What the family reads: ``image`` (H, W, C) or ``tokens`` (max_len,)."""
  return FAMILIES.get(m.family).info.get("input", "image")


def _check_kind(m, kind: str) -> None:
  classifies = kind in ("classifier", "domain_classifier", "adda")  # an encoder + heads only
  kind = encoder_kind(kind)
  if kind not in KINDS:
    raise ValueError(f"unknown model kind {kind!r}; valid: {', '.join(KINDS)}")
  if input_kind(m) == "tokens":
    if kind != "seq_autoencoder" and not classifies:
      raise ValueError(f"family {m.family!r} (text) is pretrained by objective 'seq_reconstruction' "
                       f"or 'seq_denoising' (or 'classification'); a '{kind}' model (its "
                       f"objective or strategy) needs an image family")
    return
  if kind == "seq_autoencoder":
    raise ValueError(f"a sequence autoencoder needs model.family 'rnn' (token ids), got "
                     f"{m.family!r}")
  if (kind == "mae") != (m.family == "vit"):
    raise ValueError("a masked autoencoder (objective 'mae') needs model.family 'vit' (patch "
                     f"tokens), and family 'vit' is pretrained as one; got family {m.family!r} "
                     f"with a '{kind}' objective")


def build_encoder(m, kind: str = "autoencoder"):
  kind = encoder_kind(kind)
  code_dim = 2 * m.latent_dim if kind == "vae" else m.get("code_dim", 0)
  return FAMILIES.get(m.family).fn(m, code_dim)


def check_input_shape(m, image_shape: Sequence[int], kind: str = "autoencoder") -> None:
  """Raises ValueError naming the dimension when the encoder cannot take this image."""
  _check_kind(m, kind)
  if input_kind(m) == "image" and len(image_shape) != 3:
    hint = ("; these are token ids (max_len,) of a text dataset: use model.family='rnn'"
            if len(image_shape) == 1 else "")
    raise ValueError(f"family {m.family!r} reads images (height, width, channels), got shape "
                     f"{tuple(image_shape)}{hint}")
  FAMILIES.get(m.family).info["check"](m, tuple(image_shape))


def build_decoder(m, image_shape):
  return FAMILIES.get(m.family).info["decoder"](m, tuple(image_shape))


def build_autoencoder(m, image_shape: Sequence[int], kind: str = "autoencoder"):
  check_input_shape(m, image_shape, kind)
  image_shape = tuple(image_shape)
  encoder = build_encoder(m, kind)
  if kind == "mae":
    gh, gw = check_patches(image_shape, m.patch)
    decoder = MAEDecoder(num_patches=gh * gw, patch_pixels=m.patch * m.patch * image_shape[-1],
                         dim=m.decoder_dim, depth=m.decoder_depth, heads=m.vit_heads)
    return MaskedAutoencoder(encoder=encoder, decoder=decoder, patch=m.patch,
                             image_shape=image_shape, mask_ratio=m.mask_ratio,
                             norm_pix_loss=m.norm_pix_loss)
  decoder = build_decoder(m, image_shape)
  if kind == "seq_autoencoder":
    return SequenceAutoencoder(encoder=encoder, decoder=decoder)
  if kind == "vae":
    return VariationalAutoencoder(encoder=encoder, decoder=decoder, latent_dim=m.latent_dim)
  return Autoencoder(encoder=encoder, decoder=decoder)


def build_classifier(m, num_classes: int, kind: str = "autoencoder", *,
                     decoder_shape: Sequence[int] | None = None,
                     domain_hidden: Sequence[int] | None = None, adda: bool = False,
                     adda_features: str = "logits"):
  """Encoder + linear head; with ``decoder_shape`` also the decoder (joint objectives), with
  ``domain_hidden`` (the hidden widths) a domain classifier on the codes (adversarial
  adaptation; with ``adda``, ADDA's source encoder too, its discriminator on
  ``adda_features``). ``kind`` is the encoder's: that of the pretraining objective's model
  (``vae`` keeps the posterior mean)."""
  kind = encoder_kind(kind)
  feature_dim = m.latent_dim if kind == "vae" else None
  encoder = build_encoder(m, kind)
  if domain_hidden is not None:
    if adda:
      return AddaClassifier(encoder=encoder, num_classes=num_classes, feature_dim=feature_dim,
                            domain_hidden=tuple(domain_hidden), adversary_on=adda_features)
    return DomainClassifier(encoder=encoder, num_classes=num_classes, feature_dim=feature_dim,
                            domain_hidden=tuple(domain_hidden))
  if decoder_shape is not None:
    if kind != "autoencoder":
      raise ValueError(f"joint reconstruction + classification needs a plain autoencoder's "
                       f"decoder; the pretraining objective trains a '{kind}'")
    return AutoencoderClassifier(encoder=encoder, decoder=build_decoder(m, decoder_shape),
                                 num_classes=num_classes)
  return Classifier(encoder=encoder, num_classes=num_classes, feature_dim=feature_dim)


def build_model(m, image_shape: Sequence[int], kind: str, num_classes: int | None = None, *,
                domain_hidden: Sequence[int] = (100,)):
  """The model of ``kind`` (an objective's or a strategy's): an autoencoder, or a classifier
  over ``num_classes`` with what the kind adds (decoder, domain classifier)."""
  if kind not in CLASSIFIER_KINDS:
    return build_autoencoder(m, image_shape, kind)
  if not num_classes:
    raise ValueError(f"a '{kind}' model needs the number of classes")
  check_input_shape(m, image_shape, kind)
  return build_classifier(
      m, num_classes, kind,
      decoder_shape=tuple(image_shape) if kind == "autoencoder_classifier" else None,
      domain_hidden=domain_hidden if kind in ("domain_classifier", "adda") else None,
      adda=kind == "adda")


def can(model) -> Can:
  """What ``model`` can do, as its class declares it (``CAN``); the one place that reads it."""
  declared = getattr(type(model), "CAN", None)
  if not isinstance(declared, Can):
    raise TypeError(f"model class {type(model).__name__} declares no capabilities: give it "
                    f"CAN: ClassVar[Can] = Can(...) (aetl_jax.models.capabilities)")
  return declared


def init_method(model) -> str | None:
  """The method whose ``init`` touches every parameter of ``model`` (None: ``__call__``)."""
  return can(model).init


def reconstructs(model) -> bool:
  """Whether ``model`` has a decoder (``reconstruct``)."""
  return can(model).reconstruct


def classifies(model) -> bool:
  """Whether ``model`` has a class head over its features (``classify_features``)."""
  return can(model).classify
