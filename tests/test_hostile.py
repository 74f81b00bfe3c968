"""Hostile inputs, round three (issue #34): each case ends in one line and loses nothing —
wrong data refused before anything trains, no hang, a workdir that always makes progress."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from aetl_jax.cli import main
from tests.conftest import DIGITS_CONFIG, ROOT, TINY

TINY_ARGS = ["--no-progress"] + [f"--config.{o}" for o in TINY] + [
    "--config.transfer.strategies=('scratch','finetune')", "--config.transfer.seeds=1",
    "--config.pretrain.epochs=3", "--config.transfer.epochs=2"]


def _run(capsys, workdir, *extra, config=DIGITS_CONFIG):
  code = main(["run", "--config", str(config), "--workdir", str(workdir), *TINY_ARGS, *extra])
  err = capsys.readouterr().err.strip()
  return code, err


def _one_line(code, err, exit_code=2):
  assert code == exit_code, err
  assert len(err.splitlines()) == 1 and err.startswith("error: "), err
  return err


def _npz(path, images, labels):
  np.savez(path, images=images, labels=labels)
  return f"npz:{path}"


def _digits_npz(path, n=300, seed=0):
  from aetl_jax.data.digits import load_digits_arrays
  images, labels = load_digits_arrays()
  pick = np.random.default_rng(seed).permutation(len(labels))[:n]
  return _npz(path, (images[pick] * 255 / 16).round().astype(np.uint8), labels[pick])


@pytest.mark.slow
def test_a_rerun_on_data_whose_content_changed_is_refused_naming_both_fingerprints(capsys, tmp_path):
  data = _digits_npz(tmp_path / "d.npz")
  args = [f"--config.data.source={data}", f"--config.data.target={data}",
          "--config.data.data_dir=" + str(tmp_path / "tfds")]
  assert _run(capsys, tmp_path / "w", *args)[0] == 0
  _digits_npz(tmp_path / "d.npz", seed=1)  # same name, other images
  err = _one_line(*_run(capsys, tmp_path / "w", *args))
  assert "holds results of other data (fingerprint" in err and "the data named now has" in err
  saved = json.loads((tmp_path / "w" / "data_fingerprint.json").read_text())["fingerprint"]
  assert saved in err


@pytest.mark.parametrize("case, says", [
    ("one_class", "has 1 class (labels [3]) in its training split"),
    ("nan", "pixel(s) are NaN or infinite"),
    ("huge_label", "at most the number of images (40)"),
    ("strings", "images must be numbers"),
    ("empty", "holds no images"),
    ("garbage", "not a readable .npz file"),
])
def test_bad_npz_data_is_one_line_before_anything_trains(capsys, tmp_path, case, says):
  path = tmp_path / f"{case}.npz"
  images = np.random.default_rng(0).random((40, 8, 8)).astype(np.float32)
  if case == "one_class":
    _npz(path, images, np.full(40, 3))
  elif case == "nan":
    images[1, 2, 3] = np.nan
    images[4, 0, 0] = np.inf
    _npz(path, images, np.arange(40) % 2)
  elif case == "huge_label":
    _npz(path, images, np.r_[np.zeros(39, int), 10**9])
  elif case == "strings":
    _npz(path, np.full((40, 8, 8), "x"), np.arange(40) % 2)
  elif case == "empty":
    _npz(path, images[:0], np.zeros(0, int))
  else:
    path.write_bytes(b"\x80\x04 not an archive at all" * 10)
  err = _one_line(*_run(capsys, tmp_path / "w", f"--config.data.source=npz:{path}",
                        f"--config.data.target=npz:{path}",
                        f"--config.data.data_dir={tmp_path / 'tfds'}"))
  assert says in err and "allow_pickle" not in err
  if case == "nan":
    assert "2 pixel(s)" in err
  assert not (tmp_path / "w" / "pretrain").exists()


@pytest.mark.slow
def test_a_fifo_as_dataset_is_refused_at_once(tmp_path):
  """A named pipe would block the reader forever: refused as not a regular file."""
  fifo = tmp_path / "pipe.npz"
  os.mkfifo(fifo)
  start = time.time()
  out = subprocess.run([sys.executable, "-m", "aetl_jax.cli", "run", "--config",
                        str(DIGITS_CONFIG), "--workdir", str(tmp_path / "w"), "--no-progress",
                        f"--config.data.source=npz:{fifo}", f"--config.data.target=npz:{fifo}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2 and "is not a regular file or a folder" in out.stderr
  assert time.time() - start < 120


def test_a_model_that_cannot_fit_in_memory_is_refused_naming_the_estimate(capsys, tmp_path):
  err = _one_line(*_run(capsys, tmp_path, "--config.model.widths=(100000000,100000000)"))
  assert "config key 'model'" in err and "GiB with gradients and optimiser state" in err


def test_duplicate_sweep_values_are_refused(capsys, tmp_path):
  for flag in ("transfer.learning_rate=1e-3,1e-3", "transfer.learning_rate=1e-3,0.001"):
    code = main(["run", "--config", str(DIGITS_CONFIG), "--workdir", str(tmp_path), *TINY_ARGS,
                 "--sweep", flag])
    err = _one_line(code, capsys.readouterr().err.strip())
    assert "are the same config" in err
  assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_bad_multi_process_settings_are_exit_2_and_an_absent_coordinator_exit_3(capsys, tmp_path,
                                                                               monkeypatch):
  monkeypatch.setenv("JAX_NUM_PROCESSES", "abc")
  err = _one_line(*_run(capsys, tmp_path, "--config.launch.distributed=True",
                        "--config.launch.launcher=shard_map"))
  assert "JAX_NUM_PROCESSES='abc' must be a non-negative integer" in err
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("JAX_PROCESS_ID", "2")
  err = _one_line(*_run(capsys, tmp_path, "--config.launch.distributed=True",
                        "--config.launch.launcher=shard_map"))
  assert "JAX_PROCESS_ID=2 must be below JAX_NUM_PROCESSES=2" in err
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]  # nobody listens here once closed
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  env.update(JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
             JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="1")
  start = time.time()
  out = subprocess.run([sys.executable, "-m", "aetl_jax.cli", "run", "--config",
                        str(DIGITS_CONFIG), "--workdir", str(tmp_path / "w"), *TINY_ARGS,
                        "--config.launch.distributed=True", "--config.launch.launcher=shard_map",
                        "--config.launch.timeout_s=3"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 3, out.stderr[-2000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: process 1 of the 2-process run could not join the coordinator "
                         f"at 127.0.0.1:{port} within 3 s"), out.stderr[-2000:]
  assert "Traceback" not in out.stderr and time.time() - start < 60


@pytest.mark.slow
def test_a_finished_run_whose_results_are_gone_or_torn_reruns_to_the_end(capsys, tmp_path):
  """The classifiers of cells whose rows are missing are retrained (same program, same
  numbers) instead of failing on every rerun because their checkpoint exists."""
  import shutil
  assert _run(capsys, tmp_path)[0] == 0
  cells = (tmp_path / "results" / "cells.jsonl").read_text()
  shutil.rmtree(tmp_path / "results")
  code, err = _run(capsys, tmp_path)
  assert code == 0, err
  key = lambda text: sorted((r["strategy"], r["test_accuracy"]) for r in map(json.loads, text.splitlines()))
  assert key((tmp_path / "results" / "cells.jsonl").read_text()) == key(cells)
  torn = (tmp_path / "results" / "cells.jsonl").read_text()[:-25]
  (tmp_path / "results" / "cells.jsonl").write_text(torn)
  code, err = _run(capsys, tmp_path)
  assert code == 0, err
  assert key((tmp_path / "results" / "cells.jsonl").read_text()) == key(cells)


@pytest.mark.slow
def test_undecodable_checkpoint_metadata_is_quarantined_like_any_damage(capsys, tmp_path):
  assert _run(capsys, tmp_path, "--config.pretrain.checkpoint_every=1")[0] == 0
  meta = tmp_path / "pretrain" / "checkpoints" / "3" / "_CHECKPOINT_METADATA"
  raw = bytearray(meta.read_bytes())
  raw[5:9] = b"\xff\xfe\xfd\xfc"
  meta.write_bytes(bytes(raw))
  import shutil
  shutil.rmtree(tmp_path / "results")
  code, err = _run(capsys, tmp_path, "--config.pretrain.checkpoint_every=1")
  assert code == 0, err
  assert "Traceback" not in err and "UnicodeDecodeError" not in err
  moved = list((tmp_path / "pretrain" / "quarantine").iterdir())
  assert len(moved) == 1 and moved[0].name.startswith("checkpoints-3-")


@pytest.mark.parametrize("body, says", [
    ("def get_config(:\n  pass\n", "line 1: "),
    ("def get_config():\n  x = 1\n  return {}['missing']\n", "get_config() raised line 3: KeyError"),
    ("def get_config():\n  return {'task': 'transfer'}\n", "returned a dict; it must return an "
                                                           "ml_collections.ConfigDict"),
    ("import no_such_module_here\n", "failed to load: line 1: ModuleNotFoundError"),
])
def test_a_broken_config_file_is_one_line_naming_the_file_and_line(capsys, tmp_path, body, says):
  config = tmp_path / "mine.py"
  config.write_text(body)
  code = main(["run", "--config", str(config), "--workdir", str(tmp_path / "w")])
  err = _one_line(code, capsys.readouterr().err.strip())
  assert str(config) in err and says in err


@pytest.mark.slow
def test_reinitialising_the_whole_encoder_is_pseudo_labelling_from_scratch(capsys, tmp_path):
  code, err = _run(capsys, tmp_path, "--config.transfer.reinit=('encoder/.*',)")
  assert code == 0, err
  rows = [json.loads(l) for l in (tmp_path / "results" / "cells.jsonl").read_text().splitlines()]
  assert all(r["reinit"] for r in rows if r["strategy"] == "finetune")


def test_a_full_disk_during_a_checkpoint_is_one_line_and_leaves_no_partial_step(capsys, tmp_path,
                                                                                monkeypatch, caplog):
  """Orbax's writer threads fail (each logging a traceback) and a temporary step is left:
  one line, exit 3, the temporary step removed."""
  import logging
  import orbax.checkpoint as ocp
  real_save, real_wait = ocp.CheckpointManager.save, ocp.CheckpointManager.wait_until_finished
  steps = []

  def save(self, step, *a, **kw):
    steps.append(step)
    return real_save(self, step, *a, **kw)

  def full(self):
    real_wait(self)
    if steps and steps[-1] == 2 and "pretrain" in str(self.directory):
      partial = self.directory / "2.orbax-checkpoint-tmp-123"  # what a failed write leaves
      (partial / "default").mkdir(parents=True)
      (partial / "default" / "blob").write_bytes(b"x" * 1000)
      try:
        raise OSError(28, "No space left on device")
      except OSError:
        logging.getLogger("absl").exception("writer thread raised")
      raise ValueError("RESOURCE_EXHAUSTED: No space left on device")

  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", full)
  code, err = _run(capsys, tmp_path, "--config.pretrain.checkpoint_every=1")
  err = _one_line(code, err, exit_code=3)
  assert "cannot save checkpoint step 2" in err and "No space left" in err
  assert not list((tmp_path / "pretrain" / "checkpoints").glob("*tmp*"))
  assert not [r for r in caplog.records if r.name == "absl"]  # the writer's traceback unsaid


def test_ctrl_c_while_a_checkpoint_is_written_waits_for_the_whole_step(tmp_path):
  """A SIGINT that arrives while Orbax writes a step is held until the step is committed, then
  raised: the step is finished on disk and restores."""
  import jax.numpy as jnp
  from aetl_jax.engine import checkpoint
  manager = checkpoint.make_manager(tmp_path / "ckpt")

  class Interrupted:  # the manager, with a Ctrl-C arriving as the save starts
    directory = manager.directory

    def save(self, *args, **kwargs):
      os.kill(os.getpid(), signal.SIGINT)
      return manager.save(*args, **kwargs)

    def wait_until_finished(self):
      manager.wait_until_finished()

  tree = {"w": jnp.arange(3.0)}
  before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in `aetl` (a test
  try:                                                                # worker may ignore it)
    with pytest.raises(KeyboardInterrupt):
      checkpoint.save(Interrupted(), 1, tree)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
  finally:
    signal.signal(signal.SIGINT, before)
  assert checkpoint.finished_steps(tmp_path / "ckpt") == [1]
  restored = checkpoint.restore_step(tmp_path / "ckpt", 1, tree)
  np.testing.assert_array_equal(restored["w"], tree["w"])


@pytest.mark.slow
def test_ctrl_c_during_pretraining_is_exit_130_and_one_line(tmp_path):
  """Orbax's background checkpoint threads print no tracebacks after the line. The child
  starts with Ctrl-C at its default, as from a shell (a test worker may ignore SIGINT, and a
  Python started with SIGINT ignored never turns it into KeyboardInterrupt)."""
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  proc = subprocess.Popen([sys.executable, "-m", "aetl_jax", "run", "--config", str(DIGITS_CONFIG),
                           "--workdir", str(tmp_path), "--no-progress",
                           "--config.pretrain.epochs=5000", "--config.pretrain.checkpoint_every=1"],
                          cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  log = tmp_path / "metrics" / "pretrain.jsonl"
  deadline = time.time() + 120
  while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 5):
    time.sleep(0.2)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 130, err[-2000:]
  assert err.strip().splitlines() == [f"interrupted; rerun the same command to resume from {tmp_path}"]


def test_compare_names_the_data_key_that_differs(tmp_path):
  from aetl_jax.reporting.compare import compare
  for name, target in (("a", "digits"), ("b", "npz:x.npz")):
    d = tmp_path / name
    (d / "results").mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"experiment": "transfer", "config": {"data": {
        "target": target, "test_fraction": 0.3, "resize": "pad" * 60}}}))
    (d / "results" / "cells.jsonl").write_text('{"budget": 1, "strategy": "s", "seed": 0, '
                                               '"test_accuracy": 0.5}\n')
  with pytest.raises(ValueError, match=r"target data keys differ \(data\.target: \"digits\" vs "
                                       r"\"npz:x\.npz\"\)"):
    compare([tmp_path / "a", tmp_path / "b"])


def test_a_huge_label_field_in_a_text_file_is_quoted_short(tmp_path):
  from aetl_jax.data.text import read_tsv
  path = tmp_path / "t.tsv"
  path.write_text("label\tsentence\n" + "x" * 1_000_000 + "\tsome text\n")
  with pytest.raises(ValueError) as info:
    read_tsv(path)
  assert len(str(info.value)) < 300 and "is not a class id" in str(info.value)
