"""Bad input gets one clear line; workdirs are never silently overwritten."""

import json
import re
import subprocess
import sys

import pytest

from aetl_jax.core.config import ConfigError, apply_overrides
from aetl_jax.validation import validate_transfer_config
from aetl_jax.workdir import WorkdirError, prepare_workdir
from aetl_jax.cli import main
from tests.conftest import DIGITS_CONFIG, digits_config


def _err(capsys, argv):
  argv = ["run", "--config", str(DIGITS_CONFIG), *argv] if argv[:1] != ["run"] else argv
  assert main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1, err
  return err


def test_missing_config_file_names_the_path(capsys, tmp_path):
  err = _err(capsys, ["run", "--config", str(tmp_path / "nope.py"), "--workdir", str(tmp_path)])
  assert "config file" in err and "nope.py" in err and "does not exist" in err


def test_config_file_without_get_config(capsys, tmp_path):
  (tmp_path / "empty.py").write_text("x = 1\n")
  err = _err(capsys, ["run", "--config", str(tmp_path / "empty.py"), "--workdir", str(tmp_path / "w")])
  assert "defines no get_config()" in err and "empty.py" in err


def test_users_own_config_file_anywhere(capsys, tmp_path):
  (tmp_path / "mine.py").write_text(
      "from aetl_jax.tasks.transfer import default_config\n"
      "def get_config():\n  c = default_config()\n  c.pretrain.epochs = 7\n  return c\n")
  assert main(["run", "--config", str(tmp_path / "mine.py"), "--print-config"]) == 0
  assert "epochs: 7" in capsys.readouterr().out


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
    ("objective.name='mae'", "objective.name"),
    ("objective.name='contrastive'", "objective.name"),
    ("objective.corruption='blur'", "objective.corruption"),
    ("model.family='transformer'", "model.family"),
    ("transfer.runner='loop'", "transfer.runner"),
    ("data.test_fraction=1.0", "data.test_fraction"),
])
def test_validation_names_the_key(override, key):
  with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
    validate_transfer_config(digits_config(override))


def test_budget_larger_than_target_pool_fails_before_training(capsys, tmp_path):
  err = _err(capsys, ["--workdir", str(tmp_path / "w"), "--config.transfer.budgets=(500,)"])
  assert "500 labels per class + 5 validation labels (transfer.validation='extra') needs 505" in err
  assert not (tmp_path / "w").exists()
  # the budget asked for is named even when only its validation draw does not fit (the digits'
  # smallest pool class has 61 images: 58 fit, 58 + 5 do not)
  err = _err(capsys, ["--workdir", str(tmp_path / "w"), "--config.transfer.budgets=(58,)"])
  assert "58 labels per class + 5 validation labels" in err and "needs 63" in err
  assert "validation='within' or 'none'" in err


def test_workdir_with_other_config_refuses_then_overwrite(tmp_path):
  config = digits_config()
  prepare_workdir(tmp_path, config, experiment="digits_transfer")
  (tmp_path / "results").mkdir()
  (tmp_path / "results" / "cells.jsonl").write_text('{"budget": 10}\n')  # it produced a result
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
    prepare_workdir(tmp_path, digits_config(), experiment="digits_transfer")
  assert (tmp_path / "precious.txt").exists()


@pytest.mark.slow
def test_cli_is_a_module_entry_point(tmp_path):
  out = subprocess.run([sys.executable, "-m", "aetl_jax", "run", "--config", str(DIGITS_CONFIG),
                        "--workdir", str(tmp_path), "--config.transfer.strategies=('nope',)"],
                       capture_output=True, text=True, cwd=tmp_path)
  assert out.returncode == 2 and "unknown strategy 'nope'" in out.stderr


@pytest.mark.slow
def test_experiments_folder_is_not_an_installed_package(tmp_path):
  """A user's own experiments/ package in the working directory shadows nothing of ours."""
  (tmp_path / "experiments").mkdir()
  (tmp_path / "experiments" / "__init__.py").write_text("raise ImportError('user package')\n")
  out = subprocess.run([sys.executable, "-m", "aetl_jax", "run", "--config", str(DIGITS_CONFIG),
                        "--print-config"], capture_output=True, text=True, cwd=tmp_path)
  assert out.returncode == 0, out.stderr[-2000:]


def test_a_single_process_task_refuses_distributed_before_joining(capsys, tmp_path):
  err = _err(capsys, ["run", "--config", str(DIGITS_CONFIG.parent / "mnist_one_class.py"),
                      "--workdir", str(tmp_path / "w"), "--config.launch.distributed=True"])
  assert "config key 'launch.distributed'" in err and "one_class task runs in one process" in err
  assert "transfer" in err and not (tmp_path / "w").exists()


@pytest.mark.parametrize("strategy, override, message", [
    ("partial", "transfer.partial_freeze_blocks=0",
     "'transfer.partial_freeze_blocks': must be an integer >= 1, got 0"),
    ("partial", "transfer.partial_freeze_regex='encoder/(block_0'",
     "'transfer.partial_freeze_regex': invalid regex 'encoder/(block_0': missing ), unterminated"),
    ("layerwise", "transfer.layer_decay=0.0", "'transfer.layer_decay': must be in (0, 1], got 0.0"),
    ("layerwise", "transfer.layer_decay=1.5", "'transfer.layer_decay': must be in (0, 1], got 1.5"),
])
def test_a_strategy_checks_its_own_options(strategy, override, message):
  config = digits_config(f"transfer.strategies=('scratch','{strategy}')", override)
  with pytest.raises(ConfigError, match=re.escape(message)):
    validate_transfer_config(config)


@pytest.mark.parametrize("override", ["transfer.partial_freeze_blocks=1", "transfer.layer_decay=1.0",
                                      "transfer.partial_freeze_regex='encoder/block_0/.*'"])
def test_strategy_options_at_their_bounds_are_valid(override):
  validate_transfer_config(digits_config("transfer.strategies=('partial','layerwise')", override))


def test_lp_ft_needs_whole_probe_epochs():
  import ml_collections
  from aetl_jax.strategies.registry import STRATEGIES
  check = lambda section: STRATEGIES.get("lp_ft").check(section, "transfer")
  check(ml_collections.ConfigDict(dict(lp_epochs=2, ft_lr_mult=0.3)))
  with pytest.raises(ConfigError, match=r"'transfer\.lp_epochs': must be a finite positive integer, got 2\.5"):
    check(ml_collections.ConfigDict(dict(lp_epochs=2.5, ft_lr_mult=0.3)))


def test_every_key_is_described_and_aetl_list_shows_them(capsys):
  """Every key of the transfer task's sections and of every registered strategy, objective
  and family has a one-line description; --print-config and aetl list print them."""
  from aetl_jax import api
  from aetl_jax.core.config import flatten
  from aetl_jax.models.family import FAMILIES
  from aetl_jax.objectives.registry import OBJECTIVES
  from aetl_jax.strategies.registry import STRATEGIES
  from tests.conftest import ALL_STRATEGIES, DIGITS_CONFIG
  for registry in (STRATEGIES, OBJECTIVES, FAMILIES):
    for name in registry.names():
      entry = registry.get(name)
      assert set(entry.defaults) <= set(entry.key_docs), (registry.kind, name)
  config = api.load_config(DIGITS_CONFIG, [ALL_STRATEGIES])
  docs = api.key_docs(config)
  assert set(flatten(config.to_dict())) <= set(docs)
  assert main(["run", "--config", str(DIGITS_CONFIG), "--print-config"]) == 0
  out = capsys.readouterr().out
  assert "  min_steps: 1000  # every phase runs at least this many optimiser steps" in out
  assert "!!python" not in out
  assert main(["list", "strategies"]) == 0
  out = capsys.readouterr().out
  assert "  ladder: Ladder network (Rasmus et al. 2015)" in out
  assert "      ladder_noise (float, default 0.3): std of the Gaussian noise" in out


def test_a_declared_key_checks_its_type_and_value_and_names_itself():
  """A registered part's keys are declared once (core.registry.Key: default, description,
  check): the entry checks them, each failure one line naming section.key."""
  import ml_collections
  from aetl_jax.core.registry import Key, Registry, at_least, count, each, one_of, positive, within
  assert Key(1.0).problem("x") == "must be a finite number, got 'x'"
  assert Key(1.0).problem(2) is None  # an int is a number
  assert Key(1).problem(2.5) == "must be an integer, got 2.5"
  assert Key(True).problem(1) == "must be true or false, got 1"
  assert Key("a").problem(3) == "must be a string, got 3"
  assert Key((1, 2)).problem("anything") is None  # tuples: only a check constrains them
  assert Key(0.5, check=within(0, 1, closed="(]")).problem(0) == "must be in (0, 1], got 0"
  assert Key(0.5, check=within(0, 1, closed="(]")).problem(1) is None
  assert Key(0.0, check=at_least(0)).problem("big") == "must be >= 0, got 'big'"
  assert Key(3, check=count(1)).problem(0) == "must be an integer >= 1, got 0"
  assert Key(3, check=positive(integer=True)).problem(True) == "must be a finite positive integer, got True"
  assert Key("a", check=one_of("a", "b")).problem("c") == "unknown value 'c'; valid: a, b"
  grid = Key((1, 3), check=each(positive(integer=True), "positive integers"))
  assert grid.problem(()) == "must be a non-empty list of positive integers, got ()"
  assert grid.problem([1, 0]) == "must be a non-empty list of positive integers, got [1, 0]"

  parts = Registry("part", "sec.parts")
  seen = []
  parts.register("p", defaults=dict(w=Key(1.0, "a weight", at_least(0)), n=3),
                 validate=lambda section: seen.append(dict(section)))(lambda: None)
  entry = parts.get("p")
  assert entry.key_docs == {"w": "a weight"} and dict(entry.defaults) == {"w": 1.0, "n": 3}
  with pytest.raises(ConfigError, match=r"^config key 'sec\.w': must be >= 0, got -1$"):
    entry.check(ml_collections.ConfigDict(dict(w=-1, n="free")), "sec")
  assert seen == []  # the entry's own validate runs after its keys pass
  entry.check(ml_collections.ConfigDict(dict(w=0, n="free")), "sec")  # a bare default: unchecked
  assert seen == [{"w": 0, "n": "free"}]


def test_a_config_file_value_of_the_wrong_type_is_one_line_before_training():
  """Values set in a config file skip the command line's type coercion; the declared key
  still names them."""
  import ml_collections
  from aetl_jax import api
  raw = digits_config("objective.name='vae'").to_dict()
  raw["objective"]["beta"] = "big"  # as a get_config() that set it would
  config = api.load_config(ml_collections.ConfigDict(raw))
  with pytest.raises(ConfigError, match=r"^config key 'objective\.beta': must be >= 0, got 'big'$"):
    api.validate(config)


def test_every_declared_default_passes_its_own_check_and_task_keys_are_checked():
  """The declarations agree with themselves (each default passes its key's check), for the
  transfer task's sections (tasks/keys.py) and every registered part; and a task key that
  had no check before (data.max_pool) is refused in one line."""
  from aetl_jax.models.family import FAMILIES
  from aetl_jax.objectives.registry import OBJECTIVES
  from aetl_jax.strategies.registry import STRATEGIES
  from aetl_jax.tasks.keys import KEYS
  for name, key in KEYS.items():
    assert key.problem(key.default) is None, name
  for registry in (STRATEGIES, OBJECTIVES, FAMILIES):
    for entry_name in registry.names():
      for name, key in registry.get(entry_name).keys.items():
        assert key.problem(key.default) is None, (registry.kind, entry_name, name)
  with pytest.raises(ConfigError, match=r"^config key 'data\.max_pool': must be an integer >= 0, got -1$"):
    validate_transfer_config(digits_config("data.max_pool=-1"))
