"""Im2colConv computes exactly what nn.Conv computes (outputs and gradients)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aetl_jax.models.conv_ops import Im2colConv, resolve_conv_impl


@pytest.mark.parametrize("hw, k, stride, padding", [
    ((8, 8), 3, 1, "SAME"), ((8, 8), 3, 2, "SAME"), ((7, 9), 3, 2, "SAME"),
    ((28, 28), 3, 2, "SAME"), ((6, 6), 4, 2, "SAME"), ((9, 7), 3, 1, "VALID"),
    ((8, 8), 2, 2, "VALID")])
def test_outputs_and_gradients_match_nn_conv(hw, k, stride, padding):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, *hw, 3))
  ref = nn.Conv(5, (k, k), strides=(stride, stride), padding=padding)
  ours = Im2colConv(5, (k, k), strides=(stride, stride), padding=padding)
  params = ref.init(jax.random.PRNGKey(1), x)
  ours_params = ours.init(jax.random.PRNGKey(1), x)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, ours_params)
  np.testing.assert_array_equal(params["params"]["kernel"], ours_params["params"]["kernel"])
  y_ref, y = ref.apply(params, x), ours.apply(params, x)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)

  def loss(module):
    return lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))

  g_ref = jax.grad(loss(ref), argnums=(0, 1))(params, x)
  g = jax.grad(loss(ours), argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_conv_autoencoder_is_the_same_function_with_either_impl():
  from aetl_jax.config import apply_overrides
  from aetl_jax.models.registry import build_autoencoder
  from experiments import digits_transfer
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 28, 28, 1))
  outs = []
  for impl in ("xla", "im2col"):
    config = apply_overrides(digits_transfer.get_config(), [
        "model.family='conv'", "model.upsampling='subpixel'", f"model.conv_impl='{impl}'"])
    model = build_autoencoder(config.model, x.shape[1:])
    params = model.init(jax.random.PRNGKey(3), x, method="reconstruct")["params"]
    outs.append((params, model.apply({"params": params}, x, method="reconstruct")))
  assert jax.tree.map(jnp.shape, outs[0][0]) == jax.tree.map(jnp.shape, outs[1][0])
  np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-4, atol=1e-4)


def test_resolve_conv_impl():
  assert resolve_conv_impl("auto") == ("im2col" if jax.default_backend() == "cpu" else "xla")
  with pytest.raises(ValueError, match="auto, xla, im2col"):
    resolve_conv_impl("winograd")
