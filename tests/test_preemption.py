"""Nothing a user ran is lost: kill -9 and resume, damaged checkpoints, NaN guard."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aetl_jax.engine import checkpoint as checkpointing
from aetl_jax.data.digits import load_digits_arrays
from aetl_jax.engine.guard import NonFiniteError
from aetl_jax.engine.store import CheckpointStore
from aetl_jax.tasks.pretrain import checkpoint_dir, pretrain
from tests.conftest import tiny_config, tree_equal

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 16  # pretraining; the sweep has 1 budget x 2 seeds x 3 strategies = 6 cells
ARGS = ["--no-progress", f"--config.pretrain.epochs={EPOCHS}",
        "--config.pretrain.checkpoint_every=4",
        "--config.pretrain.eval_every=10", "--config.transfer.budgets=(3,)",
        "--config.transfer.seeds=2", "--config.transfer.epochs=8", "--config.transfer.lp_epochs=3",
        "--config.transfer.strategies=('scratch','linear_probe','lp_ft')",
        "--config.transfer.min_steps=0", "--config.transfer.probe_steps=0"]


def _cmd(workdir):
  return [sys.executable, "-m", "aetl_jax", "run", "--config",
          str(ROOT / "experiments" / "digits_transfer.py"), "--workdir", str(workdir), *ARGS]


def _env():
  return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}


def _lines(path):
  return len(path.read_text().splitlines()) if path.exists() else 0


def _final_params(workdir):
  ckpt = checkpoint_dir(workdir)
  step = checkpointing.finished_steps(ckpt)[-1]
  manager = checkpointing.make_manager(ckpt)
  return step, manager.restore(step)


def _cells(workdir):
  rows = [json.loads(l) for l in (workdir / "results/cells.jsonl").read_text().splitlines()]
  for r in rows:
    r.pop("seconds")
  return sorted(rows, key=lambda r: (r["budget"], r["strategy"], r["seed"]))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reference")
  subprocess.run(_cmd(workdir), check=True, env=_env(), capture_output=True, cwd=ROOT)
  return workdir


def _kill_points(seed: int) -> list[tuple[str, int]]:
  """(log to watch, lines to wait for) of three kills in one run, drawn from a fixed seed so
  a failure reproduces (a new seed is new points): before the first pretraining checkpoint
  (epoch 4), after several, and inside the sweep. Each kill lands once that many lines exist
  (a step reached, not a sleep)."""
  rng = np.random.default_rng(seed)
  return [("metrics/pretrain.jsonl", int(rng.integers(1, 4))),
          ("metrics/pretrain.jsonl", int(rng.integers(5, EPOCHS))),
          ("results/cells.jsonl", int(rng.integers(1, 6)))]


def _run_until(workdir, log, need):
  """Starts the run and SIGKILLs it once ``log`` has ``need`` lines."""
  proc = subprocess.Popen(_cmd(workdir), env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 120
  while _lines(workdir / log) < need:
    assert proc.poll() is None, f"run finished before {log} had {need} lines"
    assert time.time() < deadline
    time.sleep(0.01)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0])
def test_sigkill_three_times_then_resume_is_bitwise_identical(reference, tmp_path, seed):
  """Killed before the first checkpoint, rerun and killed after several, rerun and killed
  inside the sweep, rerun to the end: the checkpoints, logs and cells are the uninterrupted
  run's, bit for bit."""
  workdir = tmp_path / "run"
  for log, need in _kill_points(seed):
    _run_until(workdir, log, need)
    if log.startswith("metrics"):
      assert _lines(workdir / "metrics/pretrain.jsonl") < EPOCHS
      assert not (workdir / "results/cells.jsonl").exists()
    else:
      assert _lines(workdir / "results/cells.jsonl") < len(_cells(reference))

  resumed = subprocess.run(_cmd(workdir), env=_env(), cwd=ROOT, capture_output=True, text=True)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "resum" in resumed.stderr.lower()
  ref_step, ref_tree = _final_params(reference)
  step, tree = _final_params(workdir)
  assert step == ref_step == EPOCHS
  assert tree_equal(tree, ref_tree)
  assert (workdir / "metrics/pretrain.jsonl").read_text() == \
      (reference / "metrics/pretrain.jsonl").read_text()
  assert _cells(workdir) == _cells(reference)


def _pretrain(workdir, *extra):
  images, _ = load_digits_arrays()
  config = tiny_config("pretrain.epochs=8", "pretrain.checkpoint_every=2",
                       "pretrain.keep_checkpoints=3", *extra)
  return pretrain(config, images[:300], images[300:400], workdir, progress=False)


@pytest.mark.slow
def test_damaged_latest_checkpoint_falls_back_to_previous(tmp_path, caplog):
  _pretrain(tmp_path)
  ckpt = checkpoint_dir(tmp_path)
  assert checkpointing.finished_steps(ckpt) == [4, 6, 8]
  # Truncate one array file of the newest step.
  victim = next(p for p in (ckpt / "8" / "default").rglob("0*") if p.is_file())
  victim.write_bytes(victim.read_bytes()[: max(1, victim.stat().st_size // 2)])
  _, good_6 = _restore_step(ckpt, 6)
  step, tree = CheckpointStore(ckpt).restore(lambda s: good_6)
  assert step == 6
  assert tree_equal(tree["params"], good_6["params"])
  assert checkpointing.finished_steps(ckpt) == [4, 6]  # 8 moved aside, not deleted
  assert len(list((ckpt.parent / "quarantine").iterdir())) == 1
  assert "checkpoint" in caplog.text and "damaged" in caplog.text


@pytest.mark.slow
def test_silently_corrupted_array_is_caught_by_checksum(tmp_path, caplog):
  _pretrain(tmp_path, "pretrain.keep_checkpoints=2")
  ckpt = checkpoint_dir(tmp_path)
  target = _restore_step(ckpt, 8)[1]
  # Rewrite one array of step 8 with different values through Orbax itself.
  meta = ckpt / "8" / "_CHECKPOINT_METADATA"
  manifest = json.loads(meta.read_text())
  key = next(k for k in manifest["custom_metadata"]["aetl_jax_manifest"] if "encoder" in k)
  manifest["custom_metadata"]["aetl_jax_manifest"][key]["crc32"] ^= 1
  meta.write_text(json.dumps(manifest))
  step, _ = CheckpointStore(ckpt).restore(lambda s: target)
  assert step == 6 and "checksum mismatch" in caplog.text


def _restore_step(ckpt, step):
  manager = checkpointing.make_manager(ckpt)
  return step, manager.restore(step)


def _register_ramp():
  """An objective whose loss turns NaN at a step known by hand: −mean(decoder biases) until
  that mean exceeds 9.5. Adam (lr 1, constant) moves every bias by +1 per step and nothing
  else (zero gradient), so the mean after s steps is s and the first NaN is at step 10."""
  from aetl_jax.objectives.registry import OBJECTIVES
  if "test_ramp" in OBJECTIVES:
    return

  @OBJECTIVES.register("test_ramp")
  def ramp(model, o):
    def loss(params, batches, rng):
      biases = jnp.concatenate([b["bias"] for b in params["decoder"].values()])
      m = jnp.mean(biases)
      return jnp.where(m > 9.5, jnp.nan, -m), {}
    return loss


def test_nan_guard_names_the_exact_step_and_keeps_the_good_checkpoints(tmp_path):
  _register_ramp()
  # 300 images, batch 64: 4 steps per epoch; step 10 is epoch 2, after checkpoints at epochs 1, 2.
  with pytest.raises(NonFiniteError, match=r"phase 'pretrain' at step 10 \(epoch 2\)"):
    _pretrain(tmp_path, "objective.name='test_ramp'", "pretrain.learning_rate=1.0",
              "pretrain.schedule='constant'", "pretrain.checkpoint_every=1")
  ckpt = checkpoint_dir(tmp_path)
  assert checkpointing.finished_steps(ckpt) == [1, 2]
  for step in (1, 2):
    tree = _restore_step(ckpt, step)[1]
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree))
    biases = np.concatenate([np.asarray(b["bias"]) for b in tree["params"]["decoder"].values()])
    np.testing.assert_allclose(biases, 4.0 * step, rtol=1e-4)  # 4 steps of +1 (Adam, eps 1e-8)


@pytest.mark.slow
def test_same_config_and_seed_is_deterministic(tmp_path):
  _, p1, h1 = _pretrain(tmp_path / "a")
  _, p2, h2 = _pretrain(tmp_path / "b")
  assert tree_equal(p1, p2) and h1 == h2


class _Kill(Exception):
  pass


@pytest.mark.slow
def test_sweep_cell_resumes_inside_a_phase(tmp_path):
  """A cell killed mid-phase resumes from its checkpoint, bitwise identical."""
  import jax.numpy as jnp
  from aetl_jax.transfer.cell import train_strategy
  from tests.conftest import classifier_and_params

  images, labels = load_digits_arrays()
  config = tiny_config("transfer.lp_epochs=4", "transfer.epochs=5", "transfer.learning_rate=1e-2",
                       "transfer.batch_size=32")
  model, params = classifier_and_params(config)
  split = lambda a, b: (jnp.asarray(images[a:b]), jnp.asarray(labels[a:b]))
  data = {"train": split(0, 150), "val": split(150, 200), "test": split(200, 400)}
  rng = jax.random.PRNGKey(3)
  run = lambda **kw: train_strategy("lp_ft", config.transfer, model, params, data, rng, **kw)
  ref_params, ref, ref_history = run()

  for kill_at in (2, 6):  # inside the probe phase, inside the fine-tune phase
    ckpt = tmp_path / f"cell{kill_at}"
    seen = []

    def on_epoch(row):
      seen.append(row["epoch"])
      if row["epoch"] == kill_at:
        raise _Kill

    with pytest.raises(_Kill):
      run(cell_dir=ckpt, checkpoint_every=1, on_epoch=on_epoch)
    resumed_epochs = []
    out_params, out, history = run(cell_dir=ckpt, checkpoint_every=1,
                                   on_epoch=lambda r: resumed_epochs.append(r["epoch"]))
    assert resumed_epochs[0] == kill_at  # epochs before the kill were not recomputed
    assert tree_equal(out_params, ref_params)
    assert out["test_accuracy"] == ref["test_accuracy"]
    # The cell's whole history survives the kill (epochs before it come from its log).
    assert [r["epoch"] for r in history] == [r["epoch"] for r in ref_history]
    assert history == ref_history
