"""Tests that each catch a bug a reviewer planted and the earlier suite let through (issue
#37): every expected value here is computed by hand or by another library, never by the
function under test.

| planted bug | caught by |
|---|---|
| CORAL without its 1/(4d²) | test_coral_is_the_frobenius_gap_over_four_d_squared |
| MMD ignoring the bandwidths | test_mmd_of_two_points_is_the_hand_sum_over_the_bandwidths |
| pseudo-labels from the strong view | test_pseudo_labels_come_from_the_weak_view |
| rotation in radians | test_rotation_is_in_degrees |
| one-class threshold from test normals | test_one_class_thresholds_come_from_held_out_normals |
| tokenizer trained on target/test text | test_a_word_only_in_the_test_sentences_is_unknown |
| compare without the test-set check | test_compare_refuses_runs_whose_test_sets_differ |
| a cell counted twice in compare | test_compare_counts_a_duplicated_cell_once |
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aetl_jax.objectives.adaptation import coral_distance, mmd2
from aetl_jax.objectives.augmentation import rotate_by


def test_coral_is_the_frobenius_gap_over_four_d_squared():
  a = jnp.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]])  # covariance diag(1, 0)
  b = jnp.zeros((3, 2))  # covariance 0
  assert float(coral_distance(a, b)) == pytest.approx(1 / 16)
  assert float(coral_distance(2 * a, b)) == pytest.approx(16 / 16)  # Cov scales by 4: ||4||² / 16
  # each column centred on its own mean: a constant column far from 0 adds nothing
  assert float(coral_distance(a + jnp.array([0.0, 10.0]), b)) == pytest.approx(1 / 16)


def test_mmd_of_two_points_is_the_hand_sum_over_the_bandwidths():
  """a = [[0]], b = [[1]]: squared distances [[0, 1], [1, 0]], mean 1/2, so each bandwidth w
  adds exp(0) to both self terms and exp(-1 / (w/2)) to the cross term."""
  a, b = jnp.array([[0.0]]), jnp.array([[1.0]])
  for widths in ((1.0, 2.0, 4.0, 8.0, 16.0), (0.5, 3.0)):
    hand = sum(2.0 - 2.0 * math.exp(-2.0 / w) for w in widths)
    assert float(mmd2(a, b, widths)) == pytest.approx(hand, rel=1e-6)
  assert float(mmd2(a, b, (0.5,))) != pytest.approx(float(mmd2(a, b, (16.0,))))


class _Section(dict):
  __getattr__ = dict.__getitem__


@pytest.mark.slow
def test_pseudo_labels_come_from_the_weak_view(digits):
  """weak = (), strong = a cutout twice the image side: the unlabelled term is the cross-entropy of
  the model on blank images against its argmax on the clean ones (confidence 0: every one)."""
  import optax
  from aetl_jax.models.registry import build_classifier
  from aetl_jax.objectives.adaptation import pseudo_label
  from tests.conftest import digits_config
  model = build_classifier(digits_config("model.widths=(16,)", "model.code_dim=8").model, 10)
  images, labels = digits
  x = jnp.asarray(images[:32] / 16.0, jnp.float32)
  params = model.init(jax.random.PRNGKey(0), x[:1])["params"]
  # biases away from 0, so a blank image's logits are not all equal
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda p: p + jnp.asarray(rng.normal(0, 0.5, p.shape), p.dtype), params)
  loss = pseudo_label(model, _Section(weight=1.0, confidence=0.0, weak=(),
                                      strong=(("cutout", 2.0),)))  # a hole twice the side: blank
  batches = {"labelled": {"image": x[:4], "label": jnp.asarray(labels[:4])}, "images": {"image": x}}
  _, aux = loss(params, batches, jax.random.PRNGKey(3))
  clean = model.apply({"params": params}, x).argmax(-1)
  blank = model.apply({"params": params}, jnp.zeros_like(x))
  hand = optax.softmax_cross_entropy_with_integer_labels(blank, clean).mean()
  assert float(aux["pseudo_label"]) == pytest.approx(float(hand), rel=1e-5)
  assert len(set(np.asarray(clean).tolist())) > 1  # the clean view's labels vary, blank's don't
  wrong = optax.softmax_cross_entropy_with_integer_labels(blank, blank.argmax(-1)).mean()
  assert abs(float(hand) - float(wrong)) > 0.1  # labels from the strong view would show


def test_rotation_is_in_degrees():
  image = np.random.default_rng(0).random((7, 7, 1)).astype(np.float32)
  np.testing.assert_allclose(rotate_by(jnp.asarray(image), 90.0), np.rot90(image, -1), atol=1e-5)
  np.testing.assert_allclose(rotate_by(jnp.asarray(image), -90.0), np.rot90(image, 1), atol=1e-5)
  one = np.abs(np.asarray(rotate_by(jnp.asarray(image), 1.0)) - image)[1:-1, 1:-1]
  assert one.max() < 0.1  # 1 degree moves an inner pixel's source by < 0.06 pixel


@pytest.mark.slow
def test_one_class_thresholds_come_from_held_out_normals(tmp_path):
  """A stub score (each image's mean pixel) registered for the test: each row's threshold is
  the (1 - fpr) quantile of the stub on that class's held-out training normals."""
  from aetl_jax import api
  from aetl_jax.evaluation.anomaly import SCORES
  from tests.test_applications import oc_config
  if "test_mean_pixel" not in SCORES:
    SCORES.register("test_mean_pixel")(lambda ctx, images: np.asarray(images).mean((1, 2, 3)))
  config = oc_config("one_class.scores=('test_mean_pixel',)", "one_class.seeds=1",
                     "one_class.baselines=()")
  task, data = api.load_and_check(config, progress=False)
  out = api.run(config, tmp_path, progress=False)
  for row in out["rows"]:
    _, val = data.splits[row["class"]]
    held_out = data.train[0][val].mean((1, 2, 3))
    assert row["threshold"] == pytest.approx(np.quantile(held_out.astype(np.float64),
                                                         1 - config.one_class.fpr))


def test_a_word_only_in_the_test_sentences_is_unknown(tmp_path):
  from aetl_jax.data.text import build_text_transfer_data, encode
  from tests.conftest import digits_config
  words = ["good film", "bad film", "a fine plot", "dull acting", "great cast", "weak ending"]
  (tmp_path / "train.tsv").write_text("label\tsentence\n" + "".join(
      f"{i % 2}\t{words[i % len(words)]} {i}\n" for i in range(60)))
  (tmp_path / "test.tsv").write_text("label\tsentence\n1\tzyzzyva\n0\tbad film\n")
  config = digits_config(f"data.source='tsv:{tmp_path}'", f"data.target='tsv:{tmp_path}'",
                         "model.family='rnn'", "objective.name='seq_reconstruction'")
  data = build_text_transfer_data(config.data, 200, progress=False)
  unk = data.tokenizer.token_to_id("[UNK]")
  ids, _ = encode(data.tokenizer, ["zyzzyva"], 8)
  assert ids[0, 0] == unk and data.tokenizer.token_to_id("zyzzyva") is None
  assert data.tokenizer.token_to_id("film") is not None


def _run_dir(path, test, cells, target="digits"):
  (path / "results").mkdir(parents=True)
  (path / "config.json").write_text(json.dumps(
      {"experiment": "transfer", "config": {"data": {"target": target}}}))
  (path / "data.json").write_text(json.dumps({"test": test}))
  (path / "results" / "cells.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cells))
  return path


def test_compare_refuses_runs_whose_test_sets_differ(tmp_path):
  from aetl_jax.reporting.compare import compare
  cell = {"budget": 1, "strategy": "s", "seed": 0, "test_accuracy": 0.5}
  a = _run_dir(tmp_path / "a", {"size": 539, "per_class": [54] * 10}, [cell])
  b = _run_dir(tmp_path / "b", {"size": 540, "per_class": [54] * 10}, [cell])
  with pytest.raises(ValueError, match="test sets differ"):
    compare([a, b])


def test_compare_counts_a_duplicated_cell_once(tmp_path):
  from aetl_jax.reporting.compare import compare
  test = {"size": 10}
  cells = [{"budget": 1, "strategy": "s", "seed": k, "test_accuracy": acc}
           for k, acc in ((0, 0.5), (1, 0.7))]
  a = _run_dir(tmp_path / "a", test, cells + [cells[1]])  # seed 1's line written twice
  b = _run_dir(tmp_path / "b", test, cells)
  _, rows = compare([a, b])
  row = next(r for r in rows if r["workdir"] == str(a))
  assert row["n"] == 2 and row["mean"] == pytest.approx(0.6)


def test_compare_orders_numbers_by_value_and_names_what_differs(tmp_path):
  """compare's table: a column per differing key, rows ordered by its value as a number
  (1e-3 before 1e-2 before 0.1, text after numbers), a separator row as wide as the header;
  runs whose test sets differ are refused naming each run's test set."""
  from aetl_jax.reporting.compare import _natural, compare
  cells = [{"budget": 1, "strategy": "s", "seed": 0, "test_accuracy": 0.5}]
  dirs = []
  for name, lr in (("c", 0.1), ("a", 0.01), ("b", 0.001)):
    d = _run_dir(tmp_path / name, {"size": 10}, cells)
    (d / "config.json").write_text(json.dumps({"experiment": "transfer", "config": {
        "data": {"target": "digits"}, "transfer": {"learning_rate": lr}}}))
    dirs.append(d)
  table, rows = compare(dirs)
  assert [r["transfer.learning_rate"] for r in rows] == [0.001, 0.01, 0.1]
  header, separator = table.splitlines()[:2]
  assert separator.count("---") == header.count("|") - 1 and "transfer.learning_rate" in header
  assert sorted(["y", 10, "x", 2], key=_natural) == [2, 10, "x", "y"]
  other = _run_dir(tmp_path / "other", {"size": 11}, cells)
  with pytest.raises(ValueError, match=r"test sets differ \(.*size.*10.*11"):
    compare([dirs[0], other])
