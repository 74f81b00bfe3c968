"""The default experiment end to end, with tiny settings."""

import json

import pytest

from aetl_jax.cli import main
from tests.conftest import DIGITS_CONFIG, TINY


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("quickstart")
  argv = ["run", "--config", str(DIGITS_CONFIG), "--workdir", str(workdir), "--no-progress"] + [
      f"--config.{o}" for o in TINY]
  assert main(argv) == 0
  return workdir, argv


def test_writes_every_artifact(run, capsys):
  workdir, _ = run
  for rel in ("config.json", "environment.json", "data.json", "metrics/pretrain.jsonl",
              "metrics/finetune.jsonl", "results/cells.jsonl", "results/results.md",
              "results/results.csv", "results/results.json", "results/summary.png",
              "pretrain/checkpoints/model.json"):
    assert (workdir / rel).is_file() and (workdir / rel).stat().st_size > 0, rel
  assert (workdir / "pretrain/checkpoints/6").is_dir()
  summary = json.loads((workdir / "results/results.json").read_text())
  strategies = {"scratch", "linear_probe", "finetune", "lp_ft", "ridge_probe", "knn_probe"}
  assert {s["strategy"] for s in summary} == strategies
  assert all(s["n"] == 2 for s in summary)
  table = (workdir / "results/results.md").read_text()
  for s in strategies:
    assert f"| {s} |" in table
  assert (workdir / "results/summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_resumes_without_recomputing(run, capsys):
  workdir, argv = run
  cells = (workdir / "results/cells.jsonl").read_text()
  pretrain_log = (workdir / "metrics/pretrain.jsonl").read_text()
  capsys.readouterr()
  assert main(argv) == 0
  out = capsys.readouterr().out
  assert "| linear_probe |" in out
  assert (workdir / "results/cells.jsonl").read_text() == cells
  assert (workdir / "metrics/pretrain.jsonl").read_text() == pretrain_log


def test_more_seeds_on_rerun_is_a_different_config(run, capsys):
  workdir, argv = run
  assert main(argv + ["--config.transfer.seeds=3"]) == 2
  assert "transfer.seeds: 2 -> 3" in capsys.readouterr().err
