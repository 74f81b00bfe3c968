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


def test_every_trained_cell_saved_a_classifier_that_predicts_its_recorded_accuracy(run, tmp_path, capsys):
  import numpy as np
  from aetl_jax.data.domains import build_transfer_data
  from aetl_jax.transfer.classifiers import list_cells, load_classifier
  from tests.conftest import digits_config
  workdir, _ = run
  cells = list_cells(workdir)
  trained = {"scratch", "linear_probe", "finetune", "lp_ft"}  # probes are closed-form, not saved
  assert {c.split("_seed")[0].split("_", 1)[1] for c in cells} == trained
  assert len(cells) == len(trained) * 2
  data = build_transfer_data(digits_config().data)
  test_x, test_y = data.images[data.split.test], data.labels[data.split.test]
  rows = {(r["strategy"], r["seed"]): r for r in
          (json.loads(l) for l in (workdir / "results/cells.jsonl").read_text().splitlines())}
  for cell in cells:
    clf = load_classifier(workdir, cell)
    accuracy = float(np.mean(clf.predict(test_x).argmax(1) == test_y))
    d = clf.description
    assert abs(accuracy - rows[(d["strategy"], d["seed"])]["test_accuracy"]) <= 1 / len(test_y), cell
  # Raw pixels (digits are 0..16 integers) are scaled with the recorded maximum.
  raw = np.round(test_x[:20] * 16).astype(np.uint8)
  np.testing.assert_allclose(clf.predict(raw), clf.predict(test_x[:20]), atol=1e-5)
  # The command line writes one CSV row per image.
  np.savez(tmp_path / "few.npz", images=raw[:5])
  assert main(["predict", "--workdir", str(workdir), "--cell", cells[0],
               "--images", str(tmp_path / "few.npz"), "--out", str(tmp_path / "p.csv")]) == 0
  lines = (tmp_path / "p.csv").read_text().splitlines()
  assert lines[0].startswith("index,predicted,label_name,p_0") and len(lines) == 6
  # Images that cannot be brought to the classifier's shape: one line with both shapes.
  np.savez(tmp_path / "big.npz", images=np.zeros((2, 28, 28), np.uint8))
  capsys.readouterr()
  assert main(["predict", "--workdir", str(workdir), "--images", str(tmp_path / "big.npz")]) == 2
  err = capsys.readouterr().err
  assert "(28, 28, 1) do not fit the classifier's input (8, 8, 1)" in err and "resize='pad'" in err


def test_fine_tuned_encoders_of_a_run_can_be_clustered(run, tmp_path):
  """clustering.classifiers: the features of a saved fine-tuned encoder, clustered beside the
  autoencoder codes; they are the classifier's own encoder outputs."""
  import numpy as np
  from aetl_jax import api
  from aetl_jax.tasks.clustering import default_config
  from aetl_jax.transfer.classifiers import list_cells, load_classifier
  workdir, _ = run
  cell = next(c for c in list_cells(workdir) if "finetune" in c)
  config = api.load_config(default_config(), [
      "data.max_examples=300", "pretrain.epochs=2", "clustering.seeds=1", "clustering.baselines=()",
      "clustering.methods=('kmeans',)", f"clustering.classifiers=('{workdir / 'classifiers' / cell}',)"])
  out = api.run(config, tmp_path / "cl", progress=False)
  assert {r["features"] for r in out["rows"]} == {"codes (reconstruction)", f"fine-tuned encoder {cell}"}
  clf = load_classifier(workdir, cell)
  x = np.random.default_rng(0).random((4, 8, 8, 1), np.float32)
  code = clf.features(x)
  head = clf.params["head"]
  assert code.shape == (4, head["kernel"].shape[0])
  np.testing.assert_allclose(clf.predict(x), np.asarray(
      __import__("jax").nn.softmax(code @ head["kernel"] + head["bias"], -1)), rtol=1e-4, atol=1e-6)
  bad = api.load_config(config, [f"clustering.classifiers=('{workdir / 'classifiers' / 'nope'}',)"])
  with pytest.raises(api.ConfigError, match="clustering.classifiers.*no saved classifier 'nope'"):
    api.prepare(bad, progress=False)


def test_overwrite_clears_everything_a_run_wrote(run, tmp_path):
  """TensorBoard events and saved classifiers are the run's own: --overwrite removes them."""
  import shutil
  from aetl_jax.workdir import prepare_workdir
  from tests.conftest import digits_config
  workdir, _ = run
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  assert (copy / "tensorboard").is_dir() and (copy / "classifiers").is_dir()
  prepare_workdir(copy, digits_config("pretrain.epochs=1"), experiment="transfer", overwrite=True)
  assert sorted(p.name for p in copy.iterdir()) == [".aetl_workdir", ".lock", "config.json",
                                                    "environment.json"]
