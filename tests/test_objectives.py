"""The reconstruction losses compute the textbook quantities (against optax's)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from aetl_jax.objectives.reconstruction import (bce_with_logits, mean_squared_error,
                                                reconstruction_error, reconstruction_sum)
from aetl_jax.objectives.autoencoders import bernoulli_nll
from tests.conftest import normal, uniform


def _images():
  logits = 6.0 * normal(0, (3, 5, 4, 2))
  target = uniform(1, (3, 5, 4, 2))
  return logits, target


def test_bce_with_logits_matches_optax_in_value_and_gradient():
  logits, target = _images()
  logits = logits.at[0, 0, 0, 0].set(0.0).at[0, 0, 0, 1].set(80.0).at[0, 1, 0, 0].set(-80.0)
  np.testing.assert_allclose(bce_with_logits(logits, target),
                             optax.sigmoid_binary_cross_entropy(logits, target),
                             rtol=1e-5, atol=1e-6)
  ours = jax.grad(lambda l: jnp.sum(bce_with_logits(l, target)))(logits)
  ref = jax.grad(lambda l: jnp.sum(optax.sigmoid_binary_cross_entropy(l, target)))(logits)
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
  assert np.all(np.isfinite(ours))


@pytest.mark.parametrize("kind", ["bce", "mse"])
def test_per_example_errors_reduce_over_every_pixel_axis(kind):
  logits, target = _images()
  per_pixel = (optax.sigmoid_binary_cross_entropy(logits, target) if kind == "bce"
               else (jax.nn.sigmoid(logits) - target) ** 2)
  np.testing.assert_allclose(reconstruction_error(logits, target, kind),
                             per_pixel.mean(axis=(1, 2, 3)), rtol=1e-5)
  np.testing.assert_allclose(reconstruction_sum(logits, target, kind),
                             per_pixel.sum(axis=(1, 2, 3)), rtol=1e-5)
  assert reconstruction_error(logits, target, kind).shape == (3,)


def test_bernoulli_nll_and_mse_metric():
  logits, target = _images()
  np.testing.assert_allclose(bernoulli_nll(logits, target),
                             optax.sigmoid_binary_cross_entropy(logits, target).sum((1, 2, 3)),
                             rtol=1e-5)
  np.testing.assert_allclose(mean_squared_error(logits, target),
                             jnp.mean((jax.nn.sigmoid(logits) - target) ** 2), rtol=1e-6)


def test_unknown_loss_is_named():
  logits, target = _images()
  with pytest.raises(ValueError, match="valid: bce, mse"):
    reconstruction_error(logits, target, "l1")
