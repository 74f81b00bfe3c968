"""Bad input gets one clear line; workdirs are never silently overwritten."""

import json
import subprocess
import sys

import pytest

from aetl_jax.config import ConfigError, apply_overrides
from aetl_jax.validation import validate_transfer_config
from aetl_jax.workdir import WorkdirError, prepare_workdir
from experiments import digits_transfer
from experiments.__main__ import main


def _err(capsys, argv):
  assert main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1, err
  return err


def test_unknown_experiment(capsys, tmp_path):
  err = _err(capsys, ["digit_transfer", "--workdir", str(tmp_path)])
  assert "unknown experiment 'digit_transfer'" in err and "digits_transfer" in err


def test_unknown_config_key_suggests(capsys, tmp_path):
  err = _err(capsys, ["--workdir", str(tmp_path), "--config.pretrain.epoch=3"])
  assert "unknown config key 'pretrain.epoch'" in err and "pretrain.epochs" in err


def test_malformed_override(capsys, tmp_path):
  err = _err(capsys, ["--workdir", str(tmp_path), "--config.pretrain.epochs"])
  assert "malformed override" in err and "KEY=VALUE" in err


def test_wrong_type(capsys, tmp_path):
  err = _err(capsys, ["--workdir", str(tmp_path), "--config.pretrain.epochs=many"])
  assert "expects int" in err


def test_unknown_flag(capsys, tmp_path):
  err = _err(capsys, ["--workdir", str(tmp_path), "--epochs=3"])
  assert "--epochs=3" in err


@pytest.mark.parametrize("override, key", [
    ("transfer.strategies=('scratch','linear_probes')", "transfer.strategies"),
    ("transfer.lp_epochs=0", "transfer.lp_epochs"),
    ("transfer.budgets=(0,)", "transfer.budgets"),
    ("pretrain.learning_rate=-1.0", "pretrain.learning_rate"),
    ("objective.loss='l1'", "objective.loss"),
    ("model.variant='mae'", "model.variant"),
    ("model.variant='contrastive'", "model.variant"),
    ("objective.corruption='blur'", "objective.corruption"),
    ("model.family='transformer'", "model.family"),
    ("transfer.runner='loop'", "transfer.runner"),
    ("data.test_fraction=1.0", "data.test_fraction"),
])
def test_validation_names_the_key(override, key):
  config = apply_overrides(digits_transfer.get_config(), [override])
  with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
    validate_transfer_config(config)


def test_budget_larger_than_target_pool_fails_before_training(capsys, tmp_path):
  err = _err(capsys, ["--workdir", str(tmp_path / "w"), "--config.transfer.budgets=(500,)"])
  assert "larger than class" in err
  assert not (tmp_path / "w").exists()


def test_workdir_with_other_config_refuses_then_overwrite(tmp_path):
  config = digits_transfer.get_config()
  prepare_workdir(tmp_path, config, experiment="digits_transfer")
  (tmp_path / "results").mkdir()
  _, resuming = prepare_workdir(tmp_path, config, experiment="digits_transfer")
  assert resuming
  other = apply_overrides(config, ["pretrain.epochs=3"])
  with pytest.raises(WorkdirError, match=r"pretrain\.epochs: 200 -> 3.*--overwrite"):
    prepare_workdir(tmp_path, other, experiment="digits_transfer")
  assert (tmp_path / "results").exists()
  _, resuming = prepare_workdir(tmp_path, other, experiment="digits_transfer", overwrite=True)
  assert not resuming and not (tmp_path / "results").exists()
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["config"]["pretrain"]["epochs"] == 3
  assert "jax" in json.loads((tmp_path / "environment.json").read_text())


def test_foreign_nonempty_workdir_refuses(tmp_path):
  (tmp_path / "precious.txt").write_text("do not delete")
  with pytest.raises(WorkdirError, match="not empty"):
    prepare_workdir(tmp_path, digits_transfer.get_config(), experiment="digits_transfer")
  assert (tmp_path / "precious.txt").exists()


def test_cli_is_a_module_entry_point(tmp_path):
  out = subprocess.run([sys.executable, "-m", "experiments", "nope", "--workdir", str(tmp_path)],
                       capture_output=True, text=True)
  assert out.returncode == 2 and "unknown experiment 'nope'" in out.stderr
