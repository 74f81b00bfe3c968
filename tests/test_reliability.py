"""Nothing of the user's is deleted, a workdir has one writer, failures are one line."""

import errno
import json
import subprocess
import sys

import pytest

from aetl_jax.cli import main
from aetl_jax.core.config import ConfigError
from aetl_jax.engine import checkpoint as checkpointing
from aetl_jax.engine.store import CheckpointStore
from aetl_jax.tasks.pretrain import checkpoint_dir, pretrain
from aetl_jax.validation import validate_transfer_config
from aetl_jax.workdir import MARKER, WorkdirError, WorkdirLock, prepare_workdir
from tests.conftest import DIGITS_CONFIG, ROOT, TINY, digits_config, tiny_config

TINY_ARGS = ["--no-progress"] + [f"--config.{o}" for o in TINY] + [
    "--config.transfer.strategies=('scratch',)", "--config.transfer.seeds=1",
    "--config.pretrain.epochs=3", "--config.transfer.epochs=2"]


def _main(capsys, workdir, *extra):
  code = main(["run", "--config", str(DIGITS_CONFIG), "--workdir", str(workdir), *TINY_ARGS, *extra])
  return code, capsys.readouterr().err.strip()


def test_overwrite_refuses_a_folder_it_did_not_write(capsys, tmp_path):
  """--overwrite on a folder of the user's own files (e.g. the IDX data being read) deletes nothing."""
  data = tmp_path / "mnist"
  data.mkdir()
  (data / "train-images-idx3-ubyte.gz").write_bytes(b"precious")
  code, err = _main(capsys, data, "--overwrite")
  assert code == 2 and len(err.splitlines()) == 1
  assert "not an aetl_jax workdir" in err and "choose a new --workdir" in err
  assert (data / "train-images-idx3-ubyte.gz").read_bytes() == b"precious"
  assert sorted(p.name for p in data.iterdir()) == ["train-images-idx3-ubyte.gz"]


def test_overwrite_clears_only_what_the_run_wrote(tmp_path):
  config = digits_config()
  prepare_workdir(tmp_path, config, experiment="transfer")
  (tmp_path / "results").mkdir()
  (tmp_path / "results" / "cells.jsonl").write_text("{}\n")
  (tmp_path / "notes.txt").write_text("mine")
  other = digits_config("pretrain.epochs=3")
  with pytest.raises(WorkdirError, match=r"also holds notes\.txt, which aetl_jax did not write"):
    prepare_workdir(tmp_path, other, experiment="transfer", overwrite=True)
  assert (tmp_path / "results" / "cells.jsonl").exists() and (tmp_path / "notes.txt").exists()
  (tmp_path / "notes.txt").unlink()
  _, resuming = prepare_workdir(tmp_path, other, experiment="transfer", overwrite=True)
  assert not resuming and not (tmp_path / "results").exists() and (tmp_path / MARKER).exists()


def test_a_fixed_config_that_never_produced_anything_proceeds(tmp_path):
  prepare_workdir(tmp_path, digits_config(), experiment="transfer")
  fixed = digits_config("transfer.partial_freeze_regex='encoder/block_0/.*'",
                        "transfer.strategies=('partial',)")
  _, resuming = prepare_workdir(tmp_path, fixed, experiment="transfer")
  assert not resuming
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["config"]["transfer"]["strategies"] == ["partial"]


def test_truncated_config_json_is_one_line(tmp_path):
  prepare_workdir(tmp_path, digits_config(), experiment="transfer")
  (tmp_path / "results").mkdir()
  (tmp_path / "results" / "cells.jsonl").write_text("{}\n")
  (tmp_path / "config.json").write_text('{"experiment": "tra')
  with pytest.raises(WorkdirError, match=r"config\.json is damaged .*--overwrite"):
    prepare_workdir(tmp_path, digits_config(), experiment="transfer")


def test_workdir_that_is_a_file_or_unwritable(tmp_path, monkeypatch):
  (tmp_path / "f").write_text("x")
  with pytest.raises(WorkdirError, match="is a file, not a folder"):
    WorkdirLock(tmp_path / "f").acquire()
  import aetl_jax.workdir as wd

  def read_only(path, text):
    raise OSError(errno.EROFS, "Read-only file system")
  monkeypatch.setattr(wd, "atomic_write_text", read_only)
  with pytest.raises(WorkdirError, match="cannot write to workdir .*Read-only file system"):
    prepare_workdir(tmp_path / "ro", digits_config(), experiment="transfer")


def test_a_second_process_on_a_live_workdir_is_refused_with_the_holders_pid(capsys, tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from aetl_jax.workdir import WorkdirLock; "
       f"WorkdirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
      stdout=subprocess.PIPE, text=True, cwd=ROOT)
  try:
    assert holder.stdout.readline().strip() == "held"
    code, err = _main(capsys, tmp_path)
    assert code == 2 and f"in use by another run (PID {holder.pid})" in err
  finally:
    holder.kill()
    holder.wait()
  # The kernel released the dead holder's lock: no stale lock blocks the next run.
  with WorkdirLock(tmp_path):
    pass


def test_duplicate_budgets_are_refused():
  with pytest.raises(ConfigError, match=r"transfer\.budgets.*lists a budget twice"):
    validate_transfer_config(digits_config("transfer.budgets=(10,10)"))


@pytest.mark.parametrize("override, key", [
    ("pretrain.learning_rate=1e999", "pretrain.learning_rate"),
    ("transfer.label_seed=-1", "transfer.label_seed"),
    ("data.split_seed=-2", "data.split_seed"),
    ("report.num_figure_images=0", "report.num_figure_images"),
    ("model.widths=()", "model.widths"),
])
def test_values_that_failed_only_after_pretraining_are_checked_first(override, key):
  with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
    validate_transfer_config(digits_config(override))


def test_invalid_partial_regex_fails_before_anything_trains(capsys, tmp_path):
  code, err = _main(capsys, tmp_path / "w", "--config.transfer.strategies=('partial',)",
                    "--config.transfer.partial_freeze_regex='encoder/(block_0'")
  assert code == 2 and "transfer.partial_freeze_regex" in err and "invalid regex" in err
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_nan_guard_is_one_line_with_exit_code_3(capsys, tmp_path):
  code, err = _main(capsys, tmp_path, "--config.pretrain.learning_rate=1e12",
                    "--config.objective.loss='mse'")
  assert code == 3 and len(err.splitlines()) == 1
  assert "non-finite loss or gradient in phase 'pretrain' at step" in err


@pytest.mark.slow
def test_missing_manifest_is_damage_not_a_reason_to_skip_the_checksum(tmp_path, digits, caplog):
  images = digits[0]
  config = tiny_config("pretrain.epochs=6", "pretrain.checkpoint_every=2",
                       "pretrain.keep_checkpoints=3")
  pretrain(config, images[:200], images[200:300], tmp_path, progress=False)
  ckpt = checkpoint_dir(tmp_path)
  assert checkpointing.finished_steps(ckpt) == [2, 4, 6]
  (ckpt / "6" / "_CHECKPOINT_METADATA").unlink()
  template = checkpointing.make_manager(ckpt).restore(4)
  step, _ = CheckpointStore(ckpt).restore(lambda s: template)
  assert step == 4 and "manifest" in caplog.text
  # The damaged step was moved aside, not deleted, and a rerun finishes and re-saves step 6.
  assert [p.name for p in (ckpt.parent / "quarantine").iterdir()][0].startswith("checkpoints-6-")
  pretrain(config, images[:200], images[200:300], tmp_path, progress=False)
  assert checkpointing.finished_steps(ckpt) == [2, 4, 6]


def test_a_freeze_rule_that_matches_nothing_is_an_error_before_training(capsys, tmp_path):
  code, err = _main(capsys, tmp_path / "w", "--config.transfer.strategies=('partial',)",
                    "--config.transfer.partial_freeze_regex='encoder/blok_0/.*'")
  assert code == 2 and len(err.splitlines()) == 1
  assert "'encoder/blok_0/.*' matches no parameter" in err and "encoder/block_0" in err
  assert not (tmp_path / "w").exists()


def test_partial_freeze_blocks_beyond_the_encoder_fails_before_training(capsys, tmp_path):
  code, err = _main(capsys, tmp_path / "w", "--config.transfer.strategies=('partial',)",
                    "--config.transfer.partial_freeze_blocks=7")
  assert code == 2 and "partial_freeze_blocks=7 must be in [1, 2]" in err
  assert not (tmp_path / "w").exists()


def test_results_being_a_file_is_refused_before_training(tmp_path):
  prepare_workdir(tmp_path, digits_config(), experiment="transfer")
  (tmp_path / "results").write_text("not a folder")
  with pytest.raises(WorkdirError, match=r"results is a file, but a run writes a folder there"):
    prepare_workdir(tmp_path, digits_config(), experiment="transfer")


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_rerun_finishes(capsys, tmp_path, monkeypatch):
  """The checkpoint writer fails with ENOSPC on its second save: exit 3, one line, and the
  same command afterwards resumes from the saved step and finishes."""
  import orbax.checkpoint as ocp
  real = ocp.CheckpointManager.save
  calls = []

  def full(self, step, *a, **kw):
    calls.append(step)
    if len(calls) == 2:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real(self, step, *a, **kw)

  monkeypatch.setattr(ocp.CheckpointManager, "save", full)
  code, err = _main(capsys, tmp_path, "--config.pretrain.epochs=6", "--config.pretrain.checkpoint_every=2")
  assert code == 3 and len(err.splitlines()) == 1
  assert "cannot save checkpoint step 4" in err and "No space left on device" in err
  monkeypatch.setattr(ocp.CheckpointManager, "save", real)
  code, err = _main(capsys, tmp_path, "--config.pretrain.epochs=6", "--config.pretrain.checkpoint_every=2")
  assert code == 0, err
  assert "resumed" in err or "resuming" in err
  rows = [json.loads(l) for l in (tmp_path / "metrics" / "pretrain.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in rows] == list(range(6))


@pytest.mark.slow
def test_a_kill_before_the_first_checkpoint_leaves_no_duplicated_epochs(tmp_path, digits):
  config = tiny_config("pretrain.epochs=5", "pretrain.checkpoint_every=4")
  log = tmp_path / "metrics" / "pretrain.jsonl"
  log.parent.mkdir(parents=True)
  log.write_text('{"epoch": 0, "phase": "pretrain", "train_loss": 9.0}\n{"epoch": 1, "phase": "pretrain", "tr')
  pretrain(config, digits[0][:200], digits[0][200:300], tmp_path, progress=False)
  rows = [json.loads(l) for l in log.read_text().splitlines()]
  assert [r["epoch"] for r in rows] == [0, 1, 2, 3, 4]
  assert rows[0]["train_loss"] != 9.0  # the stale row of the killed run is gone


def test_ridge_probe_without_validation_labels_uses_the_middle_of_the_grid(capsys, tmp_path):
  code, err = _main(capsys, tmp_path, "--config.transfer.strategies=('ridge_probe',)",
                    "--config.transfer.val_per_class=0", "--config.pretrain.epochs=2")
  assert code == 0, err
  row = json.loads((tmp_path / "results" / "cells.jsonl").read_text().splitlines()[0])
  grid = digits_config("transfer.strategies=('ridge_probe',)").transfer.ridge_l2_grid
  assert row["l2"] == grid[len(grid) // 2] and row["val_accuracy"] is None


def test_a_run_written_before_a_defaulted_key_existed_still_resumes(tmp_path, capsys):
  """Keys added since a run was written (here: data.label_space, transfer.augment) match it at
  their defaults; a non-default value of such a key is still a different config."""
  import json
  from aetl_jax import api
  from aetl_jax.workdir import WorkdirError, prepare_workdir
  from tests.conftest import digits_config
  config = digits_config("pretrain.epochs=1")
  prepare_workdir(tmp_path, config, experiment="transfer")
  record = json.loads((tmp_path / "config.json").read_text())
  del record["config"]["data"]["label_space"], record["config"]["transfer"]["augment"]
  (tmp_path / "config.json").write_text(json.dumps(record))
  (tmp_path / "results").mkdir()
  (tmp_path / "results" / "cells.jsonl").write_text("{}\n")
  _, resuming = prepare_workdir(tmp_path, config, experiment="transfer",
                                defaults=api.task_defaults(config))
  assert resuming
  changed = digits_config("pretrain.epochs=1", "transfer.augment=(('noise',0.1),)")
  with pytest.raises(WorkdirError, match=r"transfer.augment: '<absent>' -> \(\('noise', 0.1\),\)"):
    prepare_workdir(tmp_path, changed, experiment="transfer", defaults=api.task_defaults(changed))
  # a key of a strategy the run does not name (a config file that lists it, an override that
  # drops it: the file's keys stay), added since, at its default
  listed = digits_config("pretrain.epochs=1", "transfer.strategies=('adda','scratch')")
  listed.transfer.strategies = ("scratch",)
  record = json.loads((tmp_path / "config.json").read_text())
  record["config"] = json.loads(json.dumps(listed.to_dict()))
  del record["config"]["transfer"]["adda_features"], record["config"]["data"]["label_space"]
  (tmp_path / "config.json").write_text(json.dumps(record))
  _, resuming = prepare_workdir(tmp_path, listed, experiment="transfer",
                                defaults=api.task_defaults(listed))
  assert resuming


def test_a_quoted_exception_is_its_first_line_or_its_type_name():
  from aetl_jax.core.errors import described, first_line
  assert first_line(RuntimeError("\n  the cause\nand a traceback line")) == "the cause"
  assert first_line(RuntimeError("x" * 500), 10) == "x" * 10
  assert first_line(KeyError()) == "KeyError"  # no text: the type says what happened
  assert described(ValueError("bad value\nmore"), 3) == "ValueError: bad"
  assert described(OSError()) == "OSError"


def test_overwrite_needs_the_marker_not_a_config_json_of_the_same_shape(capsys, tmp_path):
  """A user's folder with a config.json that has an "experiment" key (and results/, metrics/)
  is not an aetl_jax workdir: --overwrite deletes nothing."""
  folder = tmp_path / "mine"
  (folder / "results").mkdir(parents=True)
  (folder / "metrics").mkdir()
  (folder / "config.json").write_text('{"experiment": "my own", "config": {}}')
  (folder / "results" / "final.csv").write_text("precious")
  (folder / "metrics" / "m.jsonl").write_text("{}\n")
  before = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
  code, err = _main(capsys, folder, "--overwrite")
  assert code == 2 and len(err.splitlines()) == 1 and f"no {MARKER}" in err
  assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == before


def test_overwrite_names_a_users_file_inside_a_run_folder_and_deletes_nothing(tmp_path):
  config = digits_config()
  prepare_workdir(tmp_path, config, experiment="transfer")
  for rel in ("metrics/pretrain.jsonl", "results/cells.jsonl", "pretrain/checkpoints/3/x",
              "tensorboard/pretrain/events.out.tfevents.1.host"):
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_text("{}\n")
  (tmp_path / "metrics" / "NOTES.md").write_text("mine")
  (tmp_path / "pretrain" / "checkpoints" / "readme.txt").write_text("mine too")
  other = digits_config("pretrain.epochs=3")
  with pytest.raises(WorkdirError, match=r"also holds metrics/NOTES\.md, "
                                         r"pretrain/checkpoints/readme\.txt, which aetl_jax did not"):
    prepare_workdir(tmp_path, other, experiment="transfer", overwrite=True)
  assert (tmp_path / "metrics" / "pretrain.jsonl").exists()
  assert (tmp_path / "pretrain" / "checkpoints" / "3" / "x").exists()
  (tmp_path / "metrics" / "NOTES.md").unlink()
  (tmp_path / "pretrain" / "checkpoints" / "readme.txt").unlink()
  prepare_workdir(tmp_path, other, experiment="transfer", overwrite=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == [MARKER, "config.json", "environment.json"]
