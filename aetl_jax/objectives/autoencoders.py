"""Pretraining objectives of autoencoders, each registered by name.

reconstruction  BCE (with logits) or MSE of ``images``
denoising       reconstruct the clean image from a corrupted one
sparse          reconstruction + L1 on the code, or KL(ρ ‖ mean sigmoid(code))
vae             negative ELBO (nats per image) with a β weight on the KL term
mae             MSE on the masked patches only (optionally per-patch normalised)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from aetl_jax.core.config import require
from aetl_jax.models.variables import apply_train
from aetl_jax.models.vit import patchify
from aetl_jax.objectives.corruption import CORRUPTIONS, corrupt
from aetl_jax.objectives.reconstruction import (LOSS_KEY, make_reconstruction_loss,
                                                mean_squared_error, reconstruction_error,
                                                reconstruction_sum)
from aetl_jax.objectives.registry import OBJECTIVES
from aetl_jax.core.registry import Key, at_least, one_of, within

SPARSITY = ("l1", "kl")


@OBJECTIVES.register("reconstruction", defaults=dict(
    loss=LOSS_KEY), batch_norm=True)
def reconstruction(model, o):
  """Reconstruct the image (BCE on logits, or MSE of the sigmoid)."""
  return make_reconstruction_loss(model, o.loss)


def _check_denoising(o) -> None:
  require(o.corruption_level >= 0 and (o.corruption == "gaussian" or o.corruption_level <= 1),
          "objective.corruption_level",
          f"is a noise std for 'gaussian' (>= 0) and a fraction of pixels otherwise ([0, 1]), "
          f"got {o.corruption_level}")


@OBJECTIVES.register("denoising", validate=_check_denoising, batch_norm=True,
                     defaults=dict(
                         loss=LOSS_KEY,
                         corruption=Key("gaussian", "input corruption: gaussian, masking or salt_pepper",
                                         one_of(*CORRUPTIONS)),
                         corruption_level=Key(0.3, "its strength (noise std or share of pixels)")))
def denoising(model, o):
  """Reconstruct the clean image from a corrupted one (Vincent et al. 2008)."""
  return make_reconstruction_loss(
      model, o.loss, lambda x, rng: corrupt(x, rng, o.corruption, o.corruption_level))


def sparsity_penalty(code, kind: str, target: float):
  """Mean L1 of the code, or Σ_j KL(ρ ‖ ρ̂_j) with ρ̂_j the batch mean of sigmoid(code_j)."""
  if kind == "l1":
    return jnp.mean(jnp.sum(jnp.abs(code), axis=-1))
  rho = target
  rho_hat = jnp.clip(jnp.mean(jax.nn.sigmoid(code), axis=0), 1e-6, 1 - 1e-6)
  return jnp.sum(rho * jnp.log(rho / rho_hat) + (1 - rho) * jnp.log((1 - rho) / (1 - rho_hat)))


@OBJECTIVES.register("sparse", batch_norm=True,
                     defaults=dict(
                         loss=LOSS_KEY,
                         sparsity=Key("l1", "sparsity penalty: l1 on the code or kl to sparsity_target",
                                      one_of(*SPARSITY)),
                         sparsity_weight=Key(1e-3, "weight of the sparsity penalty", at_least(0), value=True),
                         sparsity_target=Key(0.05, "target mean activation (kl)",
                                             within(0, 1, closed="()"))))
def sparse(model, o):
  """Reconstruction + ``sparsity_weight`` × an L1 or KL sparsity penalty on the code."""

  def loss_fn(params, batches, rng):
    x = batches["images"]["image"]
    (logits, code), state = apply_train(model, params, x, rngs={"dropout": rng},
                                        method="with_code")
    recon = jnp.mean(reconstruction_error(logits, x, o.loss))
    penalty = sparsity_penalty(code, o.sparsity, o.sparsity_target)
    return recon + o.sparsity_weight * penalty, {
        "mse": mean_squared_error(logits, x), "reconstruction": recon, "sparsity": penalty,
        **state}

  return loss_fn


def gaussian_kl(mean, logvar):
  """KL(N(mean, exp(logvar)) ‖ N(0, I)) summed over latent dimensions."""
  return 0.5 * jnp.sum(jnp.exp(logvar) + mean ** 2 - 1.0 - logvar, axis=-1)


def bernoulli_nll(logits, x):
  """−log p(x | logits) summed over pixels (nats per image)."""
  return reconstruction_sum(logits, x, "bce")


@OBJECTIVES.register("vae", model="vae", batch_norm=True,
                     defaults=dict(
                         loss=LOSS_KEY,
                         beta=Key(1.0, "weight of the KL term (beta-VAE)", at_least(0), value=True)),
                     model_defaults=dict(latent_dim=16))
def vae(model, o):
  """Negative ELBO with a β weight on the KL term (nats per image)."""

  def loss_fn(params, batches, rng):
    x = batches["images"]["image"]
    z_rng, drop_rng = jax.random.split(rng)
    (logits, mean, logvar, _), state = apply_train(model, params, x, z_rng,
                                                   rngs={"dropout": drop_rng})
    recon = reconstruction_sum(logits, x, o.loss)
    kl = gaussian_kl(mean, logvar)
    loss = jnp.mean(recon + o.beta * kl)
    return loss, {"mse": mean_squared_error(logits, x), "reconstruction": jnp.mean(recon),
                  "kl": jnp.mean(kl), "neg_elbo": jnp.mean(recon + kl), **state}

  return loss_fn


@OBJECTIVES.register("mae", model="mae", defaults={},
                     model_defaults=dict(mask_ratio=0.75, norm_pix_loss=False, decoder_dim=64,
                                         decoder_depth=2))
def mae(model, o):
  """Masked autoencoder: MSE on the masked patches only (He et al. 2021)."""
  del o

  def loss_fn(params, batches, rng):
    x = batches["images"]["image"]
    mask_rng, drop_rng = jax.random.split(rng)
    pred, mask = model.apply({"params": params}, x, mask_rng, train=True,
                             rngs={"dropout": drop_rng})
    target = patchify(x, model.patch)
    if model.norm_pix_loss:
      target = (target - target.mean(-1, keepdims=True)) / jnp.sqrt(
          target.var(-1, keepdims=True) + 1e-6)
    per_patch = jnp.mean((pred - target) ** 2, axis=-1)
    loss = jnp.sum(per_patch * mask) / jnp.sum(mask)
    return loss, {"mask_ratio": jnp.mean(mask)}

  return loss_fn
