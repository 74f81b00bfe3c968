import functools
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

# Every program of the run, the library's included, compiles for the tests' needs: without
# LLVM's optimisation passes and with XLA:CPU's loop emitters instead of its MLIR fusion
# emitters. The same HLO after XLA's own passes, compiled in a fraction of the time (compilation
# is two thirds of the suite; tests/test_strategies.py alone 45 -> 23 s, the suite 827 -> 484 s
# on the 2-core VM). Tests check what a program computes; its speed is measured by
# `python -m aetl_jax.bench`, at XLA's defaults. AETL_TEST_XLA_DEFAULTS=1 runs the suite at the
# defaults instead. Subprocesses inherit the flags (`xla_flags` adds their own to them).
TEST_XLA_FLAGS = "" if os.environ.get("AETL_TEST_XLA_DEFAULTS") == "1" else (
    "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false")
if TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()


def xla_flags(*flags: str) -> str:
  """``XLA_FLAGS`` for a subprocess: the run's flags and ``flags``."""
  return " ".join((os.environ.get("XLA_FLAGS", ""), *flags)).strip()


from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from aetl_jax.api import load_config  # noqa: E402
from aetl_jax.data.digits import load_digits_arrays  # noqa: E402
from aetl_jax.strategies import STRATEGIES  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DIGITS_CONFIG = ROOT / "experiments" / "digits_transfer.py"

TINY = [
    "pretrain.epochs=6", "pretrain.eval_every=3", "pretrain.checkpoint_every=3",
    "transfer.budgets=(3,)", "transfer.seeds=2", "transfer.epochs=4", "transfer.lp_epochs=2",
    "transfer.val_per_class=2", "transfer.min_steps=0", "transfer.probe_steps=0",
]
# Every built-in strategy, so their keys are in a tiny config.
# Every registered strategy: a config with all their keys.
ALL_STRATEGIES = f"transfer.strategies={STRATEGIES.names()!r}"


# A program a test compiles for itself only to compare arithmetic (two formulations of one
# function and their gradients, a loss that must fall) skips LLVM's optimisation passes even
# when the run keeps XLA's defaults (AETL_TEST_XLA_DEFAULTS=1, above).
quick_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


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


def normal(seed, shape):
  """Standard-normal test inputs drawn with NumPy, as float32 jax arrays: ``jax.random.normal``
  compiles one program per shape (about 0.7 s each in the suite, 18 in test_conv_ops alone)."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def uniform(seed, shape):
  """Uniform [0, 1) test inputs drawn with NumPy (see :func:`normal`)."""
  return jnp.asarray(np.random.default_rng(seed).random(shape), jnp.float32)


def classifier_and_params(config, num_classes=10, input_shape=(8, 8, 1), seed=0):
  from aetl_jax.models.registry import build_classifier
  model = build_classifier(config.model, num_classes)
  params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, *input_shape)))["params"]
  return model, params


# The test files that take longest (junit seconds per file on 2 cores, heaviest first). xdist
# hands whole files (``--dist loadfile``) to the workers in collection order; starting with these
# leaves short files for the end, so neither worker idles while the other finishes a long one
# (simulated from the measured times: about 50 s of wall time). Order only: the files not
# listed follow in their usual order, and a stale list only costs that time again.
HEAVIEST_FIRST = ("test_backbone.py", "test_models.py", "test_text.py", "test_semi_supervised.py",
                  "test_bench_harness.py", "test_preemption.py", "test_conv_ops.py",
                  "test_launchers.py", "test_multihost.py", "test_engine.py", "test_adaptation.py",
                  "test_data_sources.py", "test_hostile.py", "test_strategies.py",
                  "test_applications.py", "test_quickstart.py")


def pytest_configure(config):
  if hasattr(config.option, "loadscopereorder"):  # xdist's own order: by number of tests
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(HEAVIEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within files


def pytest_unconfigure(config):
  """The process that created this run's cache (the controller, or a run without xdist)
  removes it; a cache the user set is theirs."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR") == _run_compilation_cache():
    shutil.rmtree(_run_compilation_cache(), ignore_errors=True)


# CI has ../shared beside the checkout, so a test that skips for lack of it there hides a
# broken path, not a missing dataset: with AETL_REQUIRE_SHARED=1 (set by .ci/run) such a skip
# fails the run. Users without ../shared still see a skip with its reason.
_SHARED_SKIPS = []


def pytest_runtest_logreport(report):
  if report.skipped and isinstance(report.longrepr, tuple):
    reason = str(report.longrepr[2])
    if "shared" in reason and os.environ.get("AETL_REQUIRE_SHARED") == "1":
      _SHARED_SKIPS.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session, exitstatus):
  if _SHARED_SKIPS:
    print("\nAETL_REQUIRE_SHARED=1 but these tests skipped for lack of ../shared:\n  "
          + "\n  ".join(_SHARED_SKIPS))
    session.exitstatus = 1
