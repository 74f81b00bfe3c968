import jax.numpy as jnp
import numpy as np

from aetl_jax.core.optim import make_optimizer


def _one_update(mult, wd=0.0, wd_mult=None):
  params = {"a": jnp.full((3,), 2.0), "b": jnp.full((3,), 2.0)}
  grads = {"a": jnp.array([0.3, -1.0, 2.0]), "b": jnp.array([0.3, -1.0, 2.0])}
  tx = make_optimizer(learning_rate=0.1, lr_multipliers={"a": 1.0, "b": mult}, weight_decay=wd,
                      wd_multipliers=wd_mult)
  state = tx.init(params)
  updates, _ = tx.update(grads, state, params)
  return updates


def test_learning_rate_multiplier_scales_update_by_factor():
  for mult in (0.1, 0.37, 3.0):
    updates = _one_update(mult)
    np.testing.assert_allclose(updates["b"], mult * updates["a"], rtol=1e-6)
    assert np.all(np.abs(updates["a"]) > 0)


def test_weight_decay_multiplier():
  updates = _one_update(1.0, wd=0.5, wd_mult={"a": 1.0, "b": 0.0})
  plain = _one_update(1.0)
  # 'b' has no decay: same as without weight decay; 'a' is pulled towards zero by lr*wd*param.
  np.testing.assert_allclose(updates["b"], plain["b"], rtol=1e-6)
  np.testing.assert_allclose(updates["a"] - plain["a"], -0.1 * 0.5 * 2.0, rtol=1e-5)


def test_unknown_optimizer_lists_choices():
  import pytest
  with pytest.raises(ValueError, match="adam"):
    make_optimizer(learning_rate=0.1, optimizer="adagrad")


def test_l1_decay_adds_lr_times_sign():
  params = {"w": jnp.array([2.0, -3.0, 0.0])}
  grads = {"w": jnp.zeros(3)}
  tx = make_optimizer(learning_rate=0.1, optimizer="sgd", momentum=0.0, l1_decay=0.5)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], [-0.05, 0.05, 0.0], rtol=1e-6)


def test_l1_decay_without_params_says_what_it_needs():
  import pytest
  from aetl_jax.core.optim import add_l1_decay
  tx = add_l1_decay(0.5)
  grads = {"w": jnp.ones(2)}
  with pytest.raises(ValueError, match=r"^add_l1_decay needs params in update\(\)$"):
    tx.update(grads, tx.init(grads))


def test_scaled_weight_decay_without_params_says_what_it_needs():
  import pytest
  from aetl_jax.core.optim import add_scaled_weight_decay
  grads = {"w": jnp.ones(2)}
  tx = add_scaled_weight_decay(0.1, {"w": 1.0})
  with pytest.raises(ValueError, match=r"^add_scaled_weight_decay needs params in update\(\)$"):
    tx.update(grads, tx.init(grads))
