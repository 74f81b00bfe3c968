"""Frozen means unchanged, stateless and free."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aetl_jax.objectives.classification import make_classification_loss
from aetl_jax.engine.loop import make_epoch_fn
from aetl_jax.engine.state import TrainState
from aetl_jax.engine.step import make_train_step
from aetl_jax.core.optim import make_optimizer
from aetl_jax.core.rules import trainable_mask
from aetl_jax.strategies.base import HEAD_ONLY
from tests.conftest import classifier_and_params, tiny_config, tree_equal


def _setup(rules, digits, runner="scan"):
  config = tiny_config()
  model, params = classifier_and_params(config)
  apply = lambda p, x, rng: model.apply({"params": p}, x)
  mask = trainable_mask(params, rules)
  tx = make_optimizer(learning_rate=1e-2)
  step = make_train_step(make_classification_loss(apply, role=None), tx, mask)
  images, labels = digits
  data = {"image": jnp.asarray(images[:256]), "label": jnp.asarray(labels[:256])}
  return model, params, mask, tx, step, data


def test_linear_probe_leaves_encoder_bitwise_unchanged_and_stateless(digits):
  model, params, mask, tx, step, data = _setup(HEAD_ONLY, digits)
  before = jax.tree.map(np.asarray, params)
  state = TrainState.create(jax.tree.map(jnp.copy, params), tx, mask)
  epoch = make_epoch_fn(step, batch_size=32)
  for e in range(3):
    state, metrics = epoch(state, data, jax.random.PRNGKey(e))
  assert int(state.step) == 3 * (256 // 32)
  assert tree_equal(state.params["encoder"], before["encoder"])
  assert not tree_equal(state.params["head"], before["head"])
  # Adam moments exist for the head leaves only; the encoder slots are empty.
  adam = state.opt_state[0]
  assert all(x is None for x in jax.tree.leaves(adam.mu["encoder"], is_leaf=lambda x: x is None))
  moment_leaves = jax.tree.leaves(adam.mu)
  assert len(moment_leaves) == len(jax.tree.leaves(params["head"]))


@pytest.mark.slow
def test_frozen_gradients_are_not_computed(digits):
  """The compiled head-only step does less work than the full step."""
  def flops(rules):
    _, params, mask, tx, step, data = _setup(rules, digits)
    state = TrainState.create(params, tx, mask)
    batch = jax.tree.map(lambda a: a[:32], data)
    cost = jax.jit(step).lower(state, batch, jax.random.PRNGKey(0)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return cost["flops"]

  frozen, full = flops(HEAD_ONLY), flops(((".*", 1.0),))
  assert frozen < 0.6 * full, (frozen, full)


@pytest.mark.slow
@pytest.mark.parametrize("rules", [HEAD_ONLY, ((".*", 1.0),)])
def test_scan_and_per_batch_runners_agree(digits, rules):
  results = []
  for runner in ("scan", "per_batch"):
    _, params, mask, tx, step, data = _setup(rules, digits)
    state = TrainState.create(params, tx, mask)
    epoch = make_epoch_fn(step, batch_size=48, runner=runner)
    for e in range(2):
      state, metrics = epoch(state, data, jax.random.PRNGKey(e))
    results.append((state.params, metrics))
  (p1, m1), (p2, m2) = results
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)


def test_unknown_runner_lists_choices():
  with pytest.raises(ValueError, match="scan, per_batch"):
    make_epoch_fn(lambda s, b, r: (s, {}), batch_size=4, runner="pmap_everything")
