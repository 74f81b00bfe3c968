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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_more_seeds_on_rerun_is_a_different_config(run, capsys):
  workdir, argv = run
  assert main(argv + ["--config.transfer.seeds=3"]) == 2
  assert "transfer.seeds: 2 -> 3" in capsys.readouterr().err


@pytest.mark.slow
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
  assert lines[0].startswith("index,file,predicted,label_name,p_0") and len(lines) == 6
  # Images that cannot be brought to the classifier's shape: one line with both shapes.
  np.savez(tmp_path / "big.npz", images=np.zeros((2, 28, 28), np.uint8))
  capsys.readouterr()
  assert main(["predict", "--workdir", str(workdir), "--images", str(tmp_path / "big.npz")]) == 2
  err = capsys.readouterr().err
  assert "(28, 28, 1) do not fit the classifier's input (8, 8, 1)" in err and "resize='pad'" in err


@pytest.mark.slow
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
    api.load_and_check(bad, progress=False)


@pytest.mark.slow
def test_a_saved_classifier_with_its_training_only_parts_still_loads(run, tmp_path):
  """ADDA cells of 0.4 saved their source encoder beside the classifier: such a folder loads
  (its encoder and head only) and predicts as the classifier itself; the saver keeps the
  training-only parts out."""
  import json
  import shutil
  import numpy as np
  from aetl_jax.transfer.classifiers import (DESCRIPTION, TRAINING_ONLY, list_cells,
                                             load_classifier, save_classifier)
  workdir, _ = run
  cell = next(c for c in list_cells(workdir) if "finetune" in c)
  clf = load_classifier(workdir, cell)
  shutil.copytree(workdir / "classifiers", tmp_path / "classifiers")
  folder = tmp_path / "classifiers" / cell
  description = json.loads((folder / DESCRIPTION).read_text())
  save_classifier(folder, {**clf.params, "source_encoder": clf.params["encoder"]}, description)
  again = load_classifier(tmp_path, cell)
  x = np.random.default_rng(0).random((4, 8, 8, 1), np.float32)
  assert sorted(again.params) == ["encoder", "head"]
  np.testing.assert_array_equal(again.predict(x), clf.predict(x))
  assert {"domain", "source_encoder", "source_head"} == set(TRAINING_ONLY)


@pytest.mark.slow
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


def _png_folder(folder, images, classes=None):
  """Images in [0, 1] written as 0-255 PNG files (in class sub-folders when ``classes``)."""
  import numpy as np
  from PIL import Image
  for i, x in enumerate(images):
    where = folder if classes is None else folder / str(classes[i])
    where.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(x[..., 0] * 255).astype(np.uint8)).save(where / f"img{i:03d}.png")


@pytest.mark.slow
def test_predict_scales_image_files_as_0_to_255_and_reads_class_folders(run, tmp_path):
  """A digits classifier (trained on 0..16 arrays) reading ordinary PNGs divides by 255, not by
  16; class sub-folders (the folder: layout) are read with each file's name and folder."""
  import csv
  import numpy as np
  from aetl_jax.data.domains import build_transfer_data
  from aetl_jax.transfer.classifiers import list_cells, load_classifier
  from tests.conftest import digits_config
  workdir, _ = run
  data = build_transfer_data(digits_config().data)
  x = np.round(data.images[data.split.test][:12] * 255) / 255  # what a PNG can hold
  y = data.labels[data.split.test][:12]
  _png_folder(tmp_path / "flat", x)
  _png_folder(tmp_path / "classes", x, classes=y)
  cell = list_cells(workdir)[0]
  expected = load_classifier(workdir, cell).predict(x.astype(np.float32))
  for name in ("flat", "classes"):
    out = tmp_path / f"{name}.csv"
    assert main(["predict", "--workdir", str(workdir), "--cell", cell, "--images",
                 str(tmp_path / name), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    probs = np.array([[float(r[f"p_{k}"]) for k in range(10)] for r in rows])
    if name == "classes":  # files come class folder by class folder
      order = np.argsort([f"{c}/img{i:03d}.png" for i, c in enumerate(y)], kind="stable")
      assert [r["file"] for r in rows] == [f"{y[i]}/img{i:03d}.png" for i in order]
      assert [r["folder"] for r in rows] == [str(y[i]) for i in order]
      probs = probs[np.argsort(order)]
    else:
      assert [r["file"] for r in rows] == [f"img{i:03d}.png" for i in range(12)]
    np.testing.assert_allclose(probs, expected, atol=2e-6)


@pytest.mark.slow
def test_predict_refuses_an_existing_out_file_a_path_as_cell_and_broken_images(run, tmp_path, capsys):
  import numpy as np
  from aetl_jax.transfer.classifiers import list_cells
  workdir, _ = run
  cell = list_cells(workdir)[0]
  images = tmp_path / "x.npz"
  np.savez(images, images=np.zeros((2, 8, 8), np.float32))
  out = tmp_path / "mine.csv"
  out.write_text("precious")
  base = ["predict", "--workdir", str(workdir), "--images", str(images)]
  capsys.readouterr()
  assert main(base + ["--cell", cell, "--out", str(out)]) == 2
  assert "exists; pass --overwrite" in capsys.readouterr().err and out.read_text() == "precious"
  assert main(base + ["--cell", cell, "--out", str(out), "--overwrite"]) == 0
  assert out.read_text().startswith("index,file,")
  for bad_out, says in ((tmp_path, "is a folder"), (tmp_path / "nope" / "p.csv", "does not exist")):
    assert main(base + ["--cell", cell, "--out", str(bad_out)]) == 2
    assert says in capsys.readouterr().err
  # A cell is a name: a path into another workdir is refused before anything is read.
  other = f"../../{workdir.name}/classifiers/{cell}"
  assert main(base + ["--cell", other]) == 2
  err = capsys.readouterr().err.strip()
  assert "is not a cell name" in err and len(err.splitlines()) == 1
  # Broken image files: one line naming the file.
  for content, name in ((b"", "empty.png"), (b"\x89PNG garbage", "corrupt.png")):
    folder = tmp_path / name.split(".")[0]
    folder.mkdir()
    (folder / name).write_bytes(content)
    assert main(["predict", "--workdir", str(workdir), "--cell", cell, "--images", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{name}: not a readable image" in err and len(err.splitlines()) == 1
  np.savez(tmp_path / "s.npz", images=np.array([["a"]]))
  assert main(["predict", "--workdir", str(workdir), "--cell", cell, "--images",
               str(tmp_path / "s.npz")]) == 2
  assert "must be numbers" in capsys.readouterr().err
