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
