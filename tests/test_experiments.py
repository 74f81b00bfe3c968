"""Every shipped config file loads and validates; mnist_vae runs end to end (mock TFDS MNIST)."""

import json
import math

import pytest

from aetl_jax import api
from tests.conftest import ROOT

CONFIGS = sorted((ROOT / "experiments").glob("*.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_file_loads_validates_and_says_how_to_run_it(path):
  config = api.load_config(path)
  api.validate(config)
  doc = path.read_text().split('"""')[1]
  assert f"aetl run --config experiments/{path.name}" in doc


@pytest.mark.slow
def test_mnist_vae_end_to_end_on_mock_mnist(tmp_path):
  import tensorflow_datasets as tfds
  config = api.load_config(ROOT / "experiments" / "mnist_vae.py", [
      f"data.data_dir='{tmp_path / 'tfds'}'", "pretrain.epochs=2", "pretrain.batch_size=16",
      "pretrain.eval_every=1", "pretrain.checkpoint_every=1", "eval.num_samples=4",
      "eval.num_test=24", "model.widths=(32,)", "model.latent_dim=4"])
  with tfds.testing.mock_data(num_examples=48, data_dir=str(tmp_path / "mock")):
    out = api.run(config, tmp_path / "work", progress=False)
  record = json.loads((tmp_path / "work" / "results" / "vae.json").read_text())
  assert record["num_images"] == 24 and record["num_samples"] == 4 and record["epochs"] == 2
  assert math.isfinite(record["neg_elbo_nats"]) and math.isfinite(record["nll_is_nats"])
  assert record["neg_elbo_nats"] > 0 and record["nll_is_nats"] > 0
  assert "| dense VAE, 2 epochs |" in out["table"]
  assert (tmp_path / "work" / "results" / "results.md").read_text().strip() == out["table"]


@pytest.mark.slow
def test_vae_bounds_of_a_model_that_knows_nothing_are_d_log_2():
  """All weights 0: q(z|x) is the prior (KL 0) and every pixel has p = 1/2, whatever z; so
  the negative ELBO and the importance-sampled NLL are both exactly D log 2 nats."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from aetl_jax.evaluation.vae import vae_bounds
  from aetl_jax.models.registry import build_autoencoder
  from aetl_jax.models.variables import tree_of
  config = api.load_config(ROOT / "experiments" / "mnist_vae.py", ["model.widths=(16,)",
                                                                   "model.latent_dim=3"])
  model = build_autoencoder(config.model, (6, 5, 1), "vae")
  params = tree_of(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 6, 5, 1)), jax.random.PRNGKey(1),
                              method="__call__"))
  zero = jax.tree.map(jnp.zeros_like, params)
  x = (np.random.default_rng(0).random((7, 6, 5, 1)) > 0.5).astype(np.float32)
  out = vae_bounds(model, zero, x, jax.random.PRNGKey(2), num_samples=5, batch_size=3)
  # float32 sums of 30 pixels' log 2 over 7 images: ~10 ulps apart from the exact value
  # (1.2e-6 without LLVM's optimisations, tests/conftest.py); a pixel too many is 3%.
  assert out["neg_elbo_nats"] == pytest.approx(30 * math.log(2), rel=1e-5)
  assert out["nll_is_nats"] == pytest.approx(30 * math.log(2), rel=1e-5)
