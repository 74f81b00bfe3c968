"""Likelihood bounds of a VAE with a Bernoulli decoder, in nats per image.

* negative ELBO: E_q[−log p(x|z)] (Monte Carlo over K samples) + KL(q‖p) (closed form);
* importance-sampled NLL (Burda et al. 2016):
  −log (1/K) Σ_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|x), a tighter bound
  that approaches −log p(x) as K grows. Lower is better for both.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from aetl_jax.objectives.autoencoders import bernoulli_nll, gaussian_kl
from aetl_jax.models.variables import variables


def _normal_logpdf(z, mean, logvar):
  return -0.5 * jnp.sum(math.log(2 * math.pi) + logvar + (z - mean) ** 2 / jnp.exp(logvar), -1)


@functools.lru_cache(maxsize=None)
def _bounds_fn(model, num_samples: int):
  @jax.jit
  def fn(params, x, rng):
    mean, logvar = model.apply(variables(params), x, method="posterior")
    eps = jax.random.normal(rng, (num_samples, *mean.shape))
    z = mean + jnp.exp(0.5 * logvar) * eps  # (K, B, d)
    logits = jax.vmap(lambda zk: model.apply(variables(params), zk, method="decode"))(z)
    log_px_z = -jax.vmap(lambda l: bernoulli_nll(l, x))(logits)  # (K, B)
    log_w = (log_px_z + _normal_logpdf(z, 0.0, jnp.zeros_like(z))
             - _normal_logpdf(z, mean, logvar))
    nll_is = -(jax.scipy.special.logsumexp(log_w, axis=0) - math.log(num_samples))
    neg_elbo = -jnp.mean(log_px_z, axis=0) + gaussian_kl(mean, logvar)
    return neg_elbo, nll_is
  return fn


def per_example_bounds(model, params, images, rng, *, num_samples: int = 100,
                       batch_size: int = 100) -> tuple[np.ndarray, np.ndarray]:
  """(negative ELBO, importance-sampled NLL) of every image, each (N,); batch ``i`` draws
  its samples with ``fold_in(rng, i)``."""
  fn = _bounds_fn(model, num_samples)
  elbos, nlls = [], []
  for i, start in enumerate(range(0, images.shape[0], batch_size)):
    e, l = fn(params, jnp.asarray(images[start:start + batch_size]), jax.random.fold_in(rng, i))
    elbos.append(np.asarray(e))
    nlls.append(np.asarray(l))
  return np.concatenate(elbos), np.concatenate(nlls)


def vae_bounds(model, params, images, rng, *, num_samples: int = 100, batch_size: int = 100) -> dict:
  """Mean negative ELBO and importance-sampled NLL over ``images`` (binary pixels)."""
  elbos, nlls = per_example_bounds(model, params, images, rng, num_samples=num_samples,
                                   batch_size=batch_size)
  return {"neg_elbo_nats": float(np.mean(elbos)), "nll_is_nats": float(np.mean(nlls)),
          "num_samples": num_samples, "num_images": int(images.shape[0])}
