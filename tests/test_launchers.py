"""jit and the data-parallel path (shard_map; pmap is its other name) run one step and agree;
vmapped seeds equal sequential runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aetl_jax.engine.launchers import make_launcher
from aetl_jax.engine.phase import Optim
from aetl_jax.engine.runtime import make_runtime
from aetl_jax.strategies import StrategyContext, build_strategy
from aetl_jax.transfer.cell import run_cell, run_cells_vmapped
from tests.conftest import DIGITS_CONFIG, classifier_and_params, tiny_config, xla_flags

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def four_devices():
  env = {**os.environ, "XLA_FLAGS": xla_flags("--xla_force_host_platform_device_count=4"),
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
  out = subprocess.run([sys.executable, str(ROOT / "tests" / "multidevice_worker.py")], env=env,
                       capture_output=True, text=True, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("rules", ["all", "head"])
def test_every_launcher_and_device_count_matches_jit(four_devices, rules):
  runs = four_devices["runs"]
  ref = runs[f"{rules}/jit/1/scan"]
  assert ref["step"] == 2 * (520 // 64)
  kinds = {tuple(k.split("/")[1:]) for k in runs if k.startswith(rules + "/")}
  assert {(kind, runner) for kind, _, runner in kinds} >= (
      {(k, r) for k in ("pmap", "shard_map") for r in ("scan", "per_batch")} if rules == "all"
      else {("pmap", "scan"), ("shard_map", "per_batch")})
  assert {int(n) for _, n, _ in kinds} == {1, 2, 4}
  for key, run in runs.items():
    if not key.startswith(rules + "/"):
      continue
    assert run["step"] == ref["step"], key
    for a, b in zip(run["params"], ref["params"]):
      # Same math, different reduction order across devices: float32 noise only.
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=key)
    assert run["loss"] == pytest.approx(ref["loss"], rel=1e-5), key


@pytest.mark.slow
def test_bad_device_requests_are_clear(four_devices):
  errors = four_devices["errors"]
  assert "not divisible by the 4 devices" in errors["batch"] and "28, 32" in errors["batch"]
  assert "asked for 8 devices but 4 are present" in errors["devices"]


@pytest.mark.slow
def test_padded_sharded_evaluation_counts_every_example_once(four_devices):
  assert four_devices["runs"]["eval_rows"] == 131
  assert four_devices["runs"]["eval_max_abs_diff"] < 1e-5


@pytest.mark.parametrize("kind", ["pmap", "shard_map"])
def test_single_device_launchers_degenerate_gracefully(caplog, kind):
  import logging
  with caplog.at_level(logging.DEBUG, logger="aetl_jax.engine.launchers"):
    launcher = make_launcher(kind, 1)
  # 'pmap' is a name of the one data-parallel path: jit(shard_map) over a data mesh
  assert launcher.num_devices == 1 and launcher.kind == "shard_map"
  assert f"launcher '{kind}' on a single device" in caplog.text
  with pytest.raises(ValueError, match="unknown launcher"):
    make_launcher("tpu_pod")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["scratch", "lp_ft", "gradual_unfreeze"])
def test_vmapped_seeds_equal_sequential_runs(digits, name):
  images, labels = digits
  config = tiny_config("transfer.epochs=3", "transfer.lp_epochs=2", "transfer.unfreeze_epochs=1",
                       "transfer.learning_rate=1e-2", "transfer.batch_size=32")
  model, template = classifier_and_params(config)
  strategy = build_strategy(name, StrategyContext(name, config.transfer, model, template,
                                                  Optim.from_config(config.transfer)))
  runtime = make_runtime(runner="scan")
  seeds = [0, 1, 2]
  cells = []
  for seed in seeds:
    _, params = classifier_and_params(config, seed=seed)
    lo = 100 * seed
    split = lambda a, b: (jnp.asarray(images[a:b]), jnp.asarray(labels[a:b]))
    splits = {"train": split(lo, lo + 96), "val": split(1000, 1050), "test": split(1100, 1300)}
    data = {"target_labelled": {"image": splits["train"][0], "label": splits["train"][1]}}
    cells.append((params, data, splits, jax.random.PRNGKey(10 + seed)))
  sequential = [run_cell(strategy, model, p, d, sp, r, runtime=runtime) for p, d, sp, r in cells]
  stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
  params_k, results_k, hist_k = run_cells_vmapped(
      strategy, model, stack([c[0] for c in cells]), stack([c[1] for c in cells]),
      stack([c[2] for c in cells]), jnp.stack([c[3] for c in cells]), runtime=runtime)
  for k, (p_seq, r_seq, h_seq) in enumerate(sequential):
    for a, b in zip(jax.tree.leaves(p_seq), jax.tree.leaves(jax.tree.map(lambda x: x[k], params_k))):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert abs(results_k[k]["test_accuracy"] - r_seq["test_accuracy"]) <= 2 / 200
    assert len(hist_k[k]) == sum(p.epochs for p in strategy.phases) == len(h_seq)
    for row_k, row_seq in zip(hist_k[k], h_seq):  # the same log: phase, epoch, rate, each term
      assert row_k.keys() == row_seq.keys() >= {"phase", "epoch", "learning_rate", "loss"}
      assert (row_k["phase"], row_k["epoch"]) == (row_seq["phase"], row_seq["epoch"])
      for n in row_seq.keys() - {"phase", "epoch"}:
        assert row_k[n] == pytest.approx(row_seq[n], rel=1e-3, abs=1e-5), (k, n)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lp_ft", "ladder"])
def test_a_cell_padded_to_its_budgets_bucket_trains_as_the_unpadded_one(digits, name):
  """The sweep pads a cell's labelled set to its size bucket (96 images to 256): vmapped seeds
  give the parameters, scores and per-epoch rows of the unpadded cell. lp_ft: a probe phase
  on cached features whose epochs follow ``min_steps``, then fine-tuning; the Ladder: the
  labelled set drawn beside the unlabelled images that lead its epochs."""
  from aetl_jax.models.registry import init_method
  from aetl_jax.models.variables import tree_of
  from aetl_jax.transfer.encoder import strategy_model
  images, labels = digits
  config = tiny_config("transfer.epochs=2", "transfer.lp_epochs=2", "transfer.min_steps=12",
                       "transfer.probe_steps=0", "transfer.ladder_epochs=1",
                       "transfer.ladder_widths=(32,)", "transfer.batch_size=32")
  model = strategy_model(config, name, 10, (8, 8, 1))
  init = lambda seed: tree_of(model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 8, 8, 1)),
                                         method=init_method(model)))
  strategy = build_strategy(name, StrategyContext(name, config.transfer, model, init(0),
                                                  Optim.from_config(config.transfer), budget=9))
  split = lambda lo, hi: (images[lo:hi], labels[lo:hi])
  train = [split(100 * k, 100 * k + 96) for k in (0, 1)]
  stack = lambda trees: jax.tree.map(lambda *xs: np.stack(xs), *trees)
  data = {"target_labelled": stack([{"image": x, "label": y} for x, y in train]),
          "target_unlabelled": {"image": jnp.asarray(images[400:720])}}
  data = {k: v for k, v in data.items() if any(k in p.streams for p in strategy.phases)}
  splits = {"train": stack(train), "val": stack([split(1000, 1040)] * 2), "test": split(1100, 1300)}
  params = jax.tree.map(lambda *xs: jnp.stack(xs), init(1), init(2))
  rngs = jnp.stack([jax.random.PRNGKey(5), jax.random.PRNGKey(6)])
  run = lambda pad: run_cells_vmapped(strategy, model, params, data, splits, rngs,
                                      runtime=make_runtime(runner="scan"),
                                      shared=("target_unlabelled",), pad=pad)
  from aetl_jax.engine.driver import paddable, seed_shapes
  one = seed_shapes(data, ("target_unlabelled",))
  assert paddable(strategy.phases, one, ("target_labelled",),
                  make_runtime(runner="scan")) == {"target_labelled": 96}  # it is padded
  plain, plain_results, plain_rows = run(())
  padded, padded_results, padded_rows = run(("target_labelled",))
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(padded)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
  for a, b, ra, rb in zip(plain_results, padded_results, plain_rows, padded_rows):
    assert b["test_accuracy"] == pytest.approx(a["test_accuracy"], abs=1 / 200)
    assert [(r["phase"], r["epoch"]) for r in rb] == [(r["phase"], r["epoch"]) for r in ra]
    for x, y in zip(ra, rb):
      assert y["loss"] == pytest.approx(x["loss"], rel=1e-3, abs=1e-5)
  if name == "lp_ft":  # the probe's epochs follow min_steps: 12 steps at 3 steps an epoch
    assert sum(r["phase"] == strategy.phases[0].name for r in plain_rows[0]) == 4


EXPERIMENT = ["--config", str(DIGITS_CONFIG), "--no-progress", "--config.pretrain.epochs=4",
              "--config.transfer.budgets=(4,)", "--config.transfer.seeds=1",
              "--config.transfer.epochs=3", "--config.transfer.strategies=('linear_probe','finetune')",
              "--config.pretrain.optimizer='sgd'", "--config.transfer.optimizer='sgd'",
              "--config.transfer.min_steps=0", "--config.transfer.probe_steps=0"]


def _experiment_rows(workdir):
  lines = (workdir / "results" / "cells.jsonl").read_text().splitlines()
  rows = {row["strategy"]: row for row in map(json.loads, lines)}
  pre = [json.loads(l) for l in (workdir / "metrics/pretrain.jsonl").read_text().splitlines()]
  rows["pretrain_loss"] = pre[-1]["train_loss"]
  return rows


@pytest.fixture(scope="module")
def one_device_experiment(tmp_path_factory):
  from aetl_jax.cli import main
  workdir = tmp_path_factory.mktemp("jit") / "run"
  assert main(["run", "--workdir", str(workdir), *EXPERIMENT]) == 0
  return _experiment_rows(workdir)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["shard_map"])  # 'pmap' names the same path (tests above)
def test_experiment_on_four_devices_matches_single_device(tmp_path, launcher, one_device_experiment):
  """The whole pipeline (pretraining, cached-feature probe, fine-tune) on 4 devices."""
  env = {**os.environ, "XLA_FLAGS": xla_flags("--xla_force_host_platform_device_count=4"),
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
  out = subprocess.run([sys.executable, "-m", "aetl_jax", "run", "--workdir", str(tmp_path / "multi"),
                        *EXPERIMENT, f"--config.launch.launcher={launcher}"],
                       env=env, capture_output=True, text=True, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = {"jit": one_device_experiment, "multi": _experiment_rows(tmp_path / "multi")}
  assert rows["multi"]["pretrain_loss"] == pytest.approx(rows["jit"]["pretrain_loss"], rel=1e-5)
  for strategy in ("linear_probe", "finetune"):
    assert abs(rows["multi"][strategy]["test_accuracy"] - rows["jit"][strategy]["test_accuracy"]) < 0.005


@pytest.mark.slow
def test_batch_norm_statistics_are_averaged_over_devices(four_devices):
  """Each device normalises with its own batch (unsynchronised BatchNorm, as torch's
  DataParallel); the running averages are then averaged over devices, so the stem's mean —
  the mean of equal shards' means — equals the one-device update."""
  runs = four_devices["batch_norm"]
  ref = np.asarray(runs["jit"]["stem_mean"])
  assert not np.allclose(ref, runs["jit"]["initial_mean"])
  for kind in ("pmap", "shard_map"):
    np.testing.assert_allclose(runs[kind]["stem_mean"], ref, rtol=1e-4, atol=1e-6)
    # later statistics see per-device normalisation: close, not equal
    np.testing.assert_allclose(runs[kind]["layer1_var"], runs["jit"]["layer1_var"], rtol=0.2)


def test_a_lost_peer_is_reported_once_even_when_the_store_already_said_so(monkeypatch):
  from aetl_jax.engine import launchers
  monkeypatch.setattr(launchers.jax, "process_count", lambda: 2)
  cause = RuntimeError("checkpoint 3: Gloo AllGather failed: Connection reset by peer")
  lost = launchers.peer_lost(cause)
  assert isinstance(lost, launchers.DistributedError)
  assert str(lost).count("another process") == 1 and "Gloo" in str(lost)
  assert launchers.peer_lost(lost) is lost  # the store re-raised it; cli must not wrap it again
  assert launchers.peer_lost(ValueError("a bad key")) is None
  other = launchers.DistributedError("process 1 of 2 never arrived")  # not a lost peer report
  assert launchers.peer_lost(other) is None
  monkeypatch.setattr(launchers.jax, "process_count", lambda: 1)
  assert launchers.peer_lost(cause) is None
