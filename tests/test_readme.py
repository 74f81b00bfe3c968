"""The README's "Write your own" files run exactly as written."""

import re

import pytest

from aetl_jax.cli import main
from tests.conftest import ROOT


pytestmark = pytest.mark.slow  # python -m pytest -m "not slow": the fast tier

def _files():
  text = (ROOT / "README.md").read_text()
  return dict(re.findall(r"<!-- write-your-own: (\S+) -->\n```python\n(.*?)```", text, re.S))


def test_the_write_your_own_files_run_as_written(tmp_path, capsys):
  files = _files()
  assert set(files) == {"my_strategies.py", "my_objectives.py", "my_config.py"}
  for name, code in files.items():
    (tmp_path / name).write_text(code)
  code = main(["run", "--config", str(tmp_path / "my_config.py"), "--workdir", str(tmp_path / "w"),
               "--no-progress", "--config.pretrain.epochs=2", "--config.transfer.budgets=(3,)",
               "--config.transfer.seeds=1", "--config.transfer.epochs=2",
               "--config.transfer.top_epochs=2", "--config.transfer.min_steps=0",
               "--config.objective.noise=0.3"])
  out, err = capsys.readouterr()
  assert code == 0, err
  assert "| top_then_all |" in out and "| scratch |" in out
  import json
  rows = [json.loads(l) for l in (tmp_path / "w" / "results" / "cells.jsonl").read_text().splitlines()]
  phases = next(r["phases"] for r in rows if r["strategy"] == "top_then_all")
  assert [p["phase"] for p in phases] == ["top", "all"]
  assert phases[0]["frozen_parameters"] > 0 and phases[1]["frozen_parameters"] == 0
  logged = [json.loads(l) for l in (tmp_path / "w" / "metrics" / "pretrain.jsonl").read_text().splitlines()]
  assert "train_l1" in logged[0]


def test_an_exported_classifier_runs_with_flax_alone(tmp_path, capsys, monkeypatch):
  """aetl export, then the README's block (Flax only) gives the classifier's own logits."""
  import numpy as np
  from aetl_jax.transfer.classifiers import list_cells, load_classifier
  from tests.conftest import DIGITS_CONFIG
  workdir = tmp_path / "w"
  assert main(["run", "--config", str(DIGITS_CONFIG), "--workdir", str(workdir), "--no-progress",
               "--config.pretrain.epochs=2", "--config.transfer.budgets=(3,)",
               "--config.transfer.seeds=1", "--config.transfer.epochs=2",
               "--config.transfer.min_steps=0", "--config.transfer.strategies=('finetune',)"]) == 0
  cell = list_cells(workdir)[0]
  assert main(["export", "--workdir", str(workdir), "--cell", cell, "--out",
               str(tmp_path / "exported")]) == 0
  assert main(["export", "--workdir", str(workdir), "--cell", cell, "--out",
               str(tmp_path / "exported")]) == 2  # not replaced without --overwrite
  capsys.readouterr()
  block = re.search(r"<!-- export-example -->\n```python\n(.*?)```",
                    (ROOT / "README.md").read_text(), re.S).group(1)
  monkeypatch.chdir(tmp_path)
  scope = {}
  exec(block, scope)  # noqa: S102 - the README's own example
  x = np.random.default_rng(0).random((2, 8, 8, 1)).astype(np.float32)
  logits = scope["Classifier"]().apply({"params": scope["params"]["encoder"]}, x)
  logits = logits @ scope["params"]["head"]["kernel"] + scope["params"]["head"]["bias"]
  clf = load_classifier(workdir, cell)
  expected = np.asarray(clf.apply(clf.params, x))
  np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-5, atol=1e-6)
  assert scope["logits"].shape == (2, 10)
