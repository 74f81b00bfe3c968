"""Every pretraining objective as a pure ``(params, batch, rng) -> (loss, aux)``.

plain       reconstruction (BCE with logits, or MSE) of ``batch['image']``
denoising   reconstruct the clean image from a corrupted one
sparse      reconstruction + L1 on the code, or KL(ρ ‖ mean sigmoid(code))
vae         negative ELBO (nats per image) with a β weight on the KL term
mae         MSE on the masked patches only (optionally per-patch normalised)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from aetl_jax.models.vit import patchify
from aetl_jax.objectives.corruption import corrupt
from aetl_jax.objectives.reconstruction import (RECONSTRUCTION_LOSSES, make_reconstruction_loss,
                                                mean_squared_error, reconstruction_error,
                                                reconstruction_sum)

SPARSITY = ("l1", "kl")


def gaussian_kl(mean, logvar):
  """KL(N(mean, exp(logvar)) ‖ N(0, I)) summed over latent dimensions."""
  return 0.5 * jnp.sum(jnp.exp(logvar) + mean ** 2 - 1.0 - logvar, axis=-1)


def bernoulli_nll(logits, x):
  """−log p(x | logits) summed over pixels (nats per image)."""
  return reconstruction_sum(logits, x, "bce")


def make_objective(model, model_cfg, ocfg):
  variant = model_cfg.variant
  if ocfg.loss not in RECONSTRUCTION_LOSSES:
    raise ValueError(f"unknown reconstruction loss {ocfg.loss!r}; valid: "
                     f"{', '.join(RECONSTRUCTION_LOSSES)}")

  def apply(params, x, rng, **kw):
    return model.apply({"params": params}, x, train=True, rngs={"dropout": rng}, **kw)

  if variant == "plain":
    return make_reconstruction_loss(model, ocfg.loss)

  if variant == "denoising":
    def loss_fn(params, batch, rng):
      x = batch["image"]
      noise_rng, drop_rng = jax.random.split(rng)
      noisy = corrupt(x, noise_rng, ocfg.corruption, ocfg.corruption_level)
      logits = apply(params, noisy, drop_rng)
      return jnp.mean(reconstruction_error(logits, x, ocfg.loss)), {"mse": mean_squared_error(logits, x)}
    return loss_fn

  if variant == "sparse":
    if ocfg.sparsity not in SPARSITY:
      raise ValueError(f"unknown sparsity penalty {ocfg.sparsity!r}; valid: {', '.join(SPARSITY)}")

    def loss_fn(params, batch, rng):
      x = batch["image"]
      logits, code = apply(params, x, rng, method="with_code")
      recon = jnp.mean(reconstruction_error(logits, x, ocfg.loss))
      if ocfg.sparsity == "l1":
        penalty = jnp.mean(jnp.sum(jnp.abs(code), axis=-1))
      else:
        rho = ocfg.sparsity_target
        rho_hat = jnp.clip(jnp.mean(jax.nn.sigmoid(code), axis=0), 1e-6, 1 - 1e-6)
        penalty = jnp.sum(rho * jnp.log(rho / rho_hat)
                          + (1 - rho) * jnp.log((1 - rho) / (1 - rho_hat)))
      loss = recon + ocfg.sparsity_weight * penalty
      return loss, {"mse": mean_squared_error(logits, x), "reconstruction": recon, "sparsity": penalty}
    return loss_fn

  if variant == "vae":
    def loss_fn(params, batch, rng):
      x = batch["image"]
      z_rng, drop_rng = jax.random.split(rng)
      logits, mean, logvar, _ = model.apply({"params": params}, x, z_rng, train=True,
                                            rngs={"dropout": drop_rng})
      recon = reconstruction_sum(logits, x, ocfg.loss)
      kl = gaussian_kl(mean, logvar)
      loss = jnp.mean(recon + ocfg.beta * kl)
      return loss, {"mse": mean_squared_error(logits, x), "reconstruction": jnp.mean(recon),
                    "kl": jnp.mean(kl), "neg_elbo": jnp.mean(recon + kl)}
    return loss_fn

  if variant == "mae":
    def loss_fn(params, batch, rng):
      x = batch["image"]
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

  raise ValueError(f"unknown model variant {variant!r}")
