"""The researcher's workflow: sweeps, cross-run comparison."""

import json

import pytest

from aetl_jax.cli import main
from tests.conftest import DIGITS_CONFIG, TINY

BASE = ["--no-progress"] + [f"--config.{o}" for o in TINY] + [
    "--config.transfer.strategies=('scratch','finetune')", "--config.pretrain.epochs=3",
    "--config.transfer.epochs=3"]


def _run(*argv):
  return main(["run", "--config", str(DIGITS_CONFIG), *BASE, *argv])


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
  root = tmp_path_factory.mktemp("sweep")
  assert _run("--workdir", str(root), "--sweep", "transfer.learning_rate=1e-3,1e-2") == 0
  return root


@pytest.mark.slow
def test_a_sweep_runs_every_point_in_its_own_workdir_and_shares_the_pretraining(swept):
  points = json.loads((swept / "sweep.json").read_text())
  assert [p["point"] for p in points] == [{"transfer.learning_rate": "1e-3"},
                                          {"transfer.learning_rate": "1e-2"}]
  assert [p["name"] for p in points] == ["learning_rate=1e-3", "learning_rate=1e-2"]
  first, second = (swept / p["name"] for p in points)
  for d, lr in ((first, 1e-3), (second, 1e-2)):
    assert json.loads((d / "config.json").read_text())["config"]["transfer"]["learning_rate"] == lr
    assert len((d / "results" / "cells.jsonl").read_text().splitlines()) == 2 * 2
  assert not (first / "pretrain").is_symlink() and (second / "pretrain").is_symlink()
  assert (second / "pretrain").resolve() == (first / "pretrain").resolve()
  table = (swept / "compare.md").read_text()
  assert "transfer.learning_rate" in table.splitlines()[0]
  assert "| 0.001 |" in table and "| 0.01 |" in table


@pytest.mark.slow
def test_a_rerun_of_the_sweep_resumes_every_point(swept, capsys):
  cells = [(swept / p["name"] / "results" / "cells.jsonl").read_text()
           for p in json.loads((swept / "sweep.json").read_text())]
  assert _run("--workdir", str(swept), "--sweep", "transfer.learning_rate=1e-3,1e-2") == 0
  again = [(swept / p["name"] / "results" / "cells.jsonl").read_text()
           for p in json.loads((swept / "sweep.json").read_text())]
  assert again == cells


@pytest.mark.slow
def test_compare_command_reads_a_sweep_folder(swept, tmp_path, capsys):
  assert main(["compare", str(swept), "--out", str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert out.count("| scratch |") == 2  # 2 runs x 1 budget
  assert (tmp_path / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("flag, message", [
    ("transfer.learning_rat=1e-3,1e-2", "unknown config key 'transfer.learning_rat'"),
    ("transfer.epochs=3,many", "expects int"),
    ("transfer.learning_rate", "malformed --sweep"),
])
def test_a_bad_sweep_fails_before_anything_runs(tmp_path, capsys, flag, message):
  assert _run("--workdir", str(tmp_path / "w"), "--sweep", flag) == 2
  err = capsys.readouterr().err
  assert message in err and len(err.strip().splitlines()) == 1
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_compare_refuses_runs_on_different_test_sets(swept, tmp_path, capsys):
  other = tmp_path / "other"
  assert _run("--workdir", str(other), "--config.data.split_seed=5") == 0
  first = swept / json.loads((swept / "sweep.json").read_text())[0]["name"]
  capsys.readouterr()
  assert main(["compare", str(first), str(other)]) == 2
  assert "cannot compare runs whose target data keys differ" in capsys.readouterr().err


def test_compare_accepts_runs_that_differ_only_in_their_source(tmp_path):
  """Which source helps a target is a comparison: runs with other source keys but the same
  target and test set compare, with the source keys as columns."""
  from aetl_jax.reporting.compare import compare

  def run(name, source, objective):
    d = tmp_path / name
    (d / "results").mkdir(parents=True)
    config = {"data": {"source": source, "target": "fashion", "test_fraction": 0.2},
              "objective": {"name": objective}}
    (d / "config.json").write_text(json.dumps({"experiment": "transfer", "config": config}))
    (d / "data.json").write_text(json.dumps({"test": {"size": 100, "per_class": [10] * 10}}))
    (d / "results" / "cells.jsonl").write_text("".join(
        json.dumps({"budget": 1, "strategy": "finetune", "seed": k, "test_accuracy": 0.5 + k / 100})
        + "\n" for k in range(3)))
    return d

  table, rows = compare([run("a", "mnist", "reconstruction"), run("b", "fashion", "classification")])
  assert "| run | data.source | objective.name |" in table and len(rows) == 2
  other = run("c", "mnist", "reconstruction")
  config = json.loads((other / "config.json").read_text())
  config["config"]["data"]["target"] = "kmnist"
  (other / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match="target data keys differ"):
    compare([tmp_path / "a", other])
