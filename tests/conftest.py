import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _run_compilation_cache() -> str:
  """One JAX persistent compilation cache for this test run, shared by the xdist workers and
  the subprocesses the tests start (both inherit the environment the controller set here):
  the same programs (a cell of the tiny digits MLP, a resumed run's steps) are otherwise
  compiled again in every process. A loaded program is the one XLA compiled, so nothing tested
  changes; the bench harness counts loads from it as compilations. Named by the controller's
  pid; the controller removes it at the end (and a leftover of a killed run with its pid at
  the start)."""
  return os.path.join(tempfile.gettempdir(), f"aetl-jax-tests-xla-cache-{os.getpid()}")


if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  shutil.rmtree(_run_compilation_cache(), ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _run_compilation_cache()
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from aetl_jax.api import load_config  # noqa: E402
from aetl_jax.data.digits import load_digits_arrays  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DIGITS_CONFIG = ROOT / "experiments" / "digits_transfer.py"

TINY = [
    "pretrain.epochs=6", "pretrain.eval_every=3", "pretrain.checkpoint_every=3",
    "transfer.budgets=(3,)", "transfer.seeds=2", "transfer.epochs=4", "transfer.lp_epochs=2",
    "transfer.val_per_class=2",
]
# Every built-in strategy, so their keys are in a tiny config.
ALL_STRATEGIES = ("transfer.strategies=('scratch','linear_probe','finetune','partial',"
                  "'discriminative','layerwise','lp_ft','gradual_unfreeze','ridge_probe',"
                  "'knn_probe','bitfit','joint_finetune','rules','pseudo_label','source_only',"
                  "'drcn','dann','coral','mmd','frozen_backbone','backbone_ae')")


def digits_config(*overrides):
  """The digits experiment's config file, completed, with ``overrides``."""
  return load_config(DIGITS_CONFIG, list(overrides))


def tiny_config(*extra):
  """Tiny sizes; the keys of every built-in strategy present, the strategy list the default's."""
  config = digits_config(*TINY, ALL_STRATEGIES, "transfer.unfreeze_epochs=1")
  config.transfer.strategies = digits_config().transfer.strategies
  return load_config(config, list(extra))


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


def pytest_unconfigure(config):
  """The process that created this run's cache (the controller, or a run without xdist)
  removes it; a cache the user set is theirs."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR") == _run_compilation_cache():
    shutil.rmtree(_run_compilation_cache(), ignore_errors=True)
