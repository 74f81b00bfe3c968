import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from aetl_jax.config import apply_overrides  # noqa: E402
from aetl_jax.data.digits import load_digits_arrays  # noqa: E402
from experiments import digits_transfer  # noqa: E402

TINY = [
    "pretrain.epochs=6", "pretrain.eval_every=3", "pretrain.checkpoint_every=3",
    "transfer.budgets=(3,)", "transfer.seeds=2", "transfer.epochs=4", "transfer.lp_epochs=2",
    "transfer.unfreeze_epochs=1", "transfer.val_per_class=2",
]


def tiny_config(*extra):
  return apply_overrides(digits_transfer.get_config(), TINY + list(extra))


@pytest.fixture(scope="session")
def digits():
  return load_digits_arrays()


def tree_equal(a, b) -> bool:
  """Bitwise equality of two pytrees of arrays."""
  if jax.tree.structure(a) != jax.tree.structure(b):
    return False
  return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in
             zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def classifier_and_params(config, num_classes=10, input_shape=(8, 8, 1), seed=0):
  from aetl_jax.models.registry import build_classifier
  model = build_classifier(config.model, num_classes)
  params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, *input_shape)))["params"]
  return model, params
