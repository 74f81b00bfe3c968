import jax
import numpy as np
import pytest

from aetl_jax.engine.loop import make_stream_epoch_fn
from aetl_jax.data.streaming import (array_stream, choose_data_path,
                                     numpy_batches, prefetch_to_device)


def test_stream_yields_every_example_of_the_in_memory_path_once(digits):
  images, labels = digits
  arrays = {"image": images[:500], "label": labels[:500], "index": np.arange(500)}
  seen = []
  for batch in prefetch_to_device(numpy_batches(array_stream(arrays, batch_size=64, seed=3,
                                                             drop_remainder=False))):
    assert isinstance(batch["image"], jax.Array)
    seen.append(np.asarray(batch["index"]))
    np.testing.assert_array_equal(np.asarray(batch["image"]), images[np.asarray(batch["index"])])
  seen = np.concatenate(seen)
  assert sorted(seen.tolist()) == list(range(500))
  assert not np.array_equal(seen, np.arange(500))  # shuffled


def test_stream_is_reproducible_per_seed_and_sharded(digits):
  images, labels = digits
  arrays = {"label": labels[:200], "index": np.arange(200)}
  order = lambda seed: np.concatenate([b["index"] for b in numpy_batches(
      array_stream(arrays, batch_size=50, seed=seed))])
  np.testing.assert_array_equal(order(1), order(1))
  assert not np.array_equal(order(1), order(2))
  shards = [np.concatenate([b["index"] for b in numpy_batches(array_stream(
      arrays, batch_size=10, seed=0, shard_index=i, num_shards=2))]) for i in range(2)]
  assert len(np.intersect1d(*shards)) == 0 and len(shards[0]) + len(shards[1]) == 200


def test_streaming_training_lowers_the_loss(digits):
  from aetl_jax.models.registry import build_autoencoder
  from aetl_jax.objectives.registry import make_objective
  from aetl_jax.engine.state import TrainState
  from aetl_jax.engine.step import make_train_step
  from aetl_jax.core.optim import make_optimizer
  from tests.conftest import digits_config
  config = digits_config()
  images = digits[0][:512]
  model = build_autoencoder(config.model, images.shape[1:])
  params = model.init(jax.random.PRNGKey(0), images[:1], method="reconstruct")["params"]
  tx = make_optimizer(learning_rate=3e-3)
  epoch = make_stream_epoch_fn(make_train_step(make_objective(model, config.objective), tx))
  state = TrainState.create(params, tx)
  losses = []
  for e in range(5):
    batches = ({"images": b} for b in prefetch_to_device(numpy_batches(
        array_stream({"image": images}, batch_size=64, seed=e))))
    state, m = epoch(state, batches, jax.random.PRNGKey(e))
    losses.append(float(m["loss"]))
  assert losses[-1] < 0.8 * losses[0]


def test_choose_data_path():
  assert choose_data_path("auto", 10 * 2 ** 20, 100) == "memory"
  assert choose_data_path("auto", 200 * 2 ** 20, 100) == "stream"
  assert choose_data_path("stream", 1, 100) == "stream"
  with pytest.raises(ValueError, match="auto, memory, stream"):
    choose_data_path("disk", 1, 1)


@pytest.mark.slow
def test_pretraining_on_the_stream_path_learns_and_resumes(tmp_path, digits):
  from aetl_jax.tasks.pretrain import pretrain
  from tests.conftest import tiny_config
  config = tiny_config("pretrain.data_path='stream'", "pretrain.epochs=6")
  _, _, history = pretrain(config, digits[0][:400], digits[0][400:500], tmp_path, progress=False)
  evaluated = [r for r in history if "eval_mse" in r]
  assert [r["epoch"] for r in evaluated] == [2, 5]  # eval_every=3: after epochs 3 and 6
  assert evaluated[-1]["eval_mse"] < evaluated[0]["eval_mse"]
  assert history[-1]["train_loss"] < history[0]["train_loss"]
  _, _, again = pretrain(config, digits[0][:400], digits[0][400:500], tmp_path, progress=False)
  assert again == history


@pytest.mark.slow
def test_transfer_experiment_streams_its_source_from_tfds(tmp_path, digits):
  """Source read from disk batch by batch (mock TFDS mnist), target sklearn digits in memory."""
  import json
  import tensorflow_datasets as tfds
  from aetl_jax import api
  from tests.conftest import ROOT
  config = api.load_config(ROOT / "experiments" / "transfer.py", [
      "data.source='mnist'", "data.target='digits'",
      f"data.data_dir='{tmp_path / 'tfds'}'", "data.stream_source=True",
      "data.common_shape=(28, 28, 1)", "pretrain.epochs=2", "pretrain.batch_size=32",
      "transfer.budgets=(3,)", "transfer.seeds=1", "transfer.epochs=2", "transfer.lp_epochs=1",
      "transfer.strategies=('scratch','linear_probe')", "transfer.min_steps=0",
      "transfer.probe_steps=0"])
  with tfds.testing.mock_data(num_examples=96, data_dir=str(tmp_path / "mock")):
    out = api.run(config, tmp_path / "work", progress=False)
  described = json.loads((tmp_path / "work" / "data.json").read_text())
  assert described["source"] == {"size": 96, "streamed": True}
  assert "streamed from disk" in described["source_dataset"]["route"]
  assert len(out["pretrain_history"]) == 2
  assert {r["strategy"] for r in out["rows"]} == {"scratch", "linear_probe"}
