"""Uses of the codes beyond classification: one-class anomaly detection and clustering."""

import json
import sys

import jax
import numpy as np
import pytest

from aetl_jax import api
from aetl_jax.core.config import ConfigError
from aetl_jax.data.one_class import check_normal_classes, normal_split, pad_by_repeating
from aetl_jax.evaluation import anomaly
from aetl_jax.evaluation.clustering import cluster_accuracy, cluster_scores, contingency, matched
from aetl_jax.tasks import clustering, one_class

TINY_OC = ["pretrain.epochs=2", "pretrain.batch_size=32", "one_class.seeds=2",
           "one_class.normal_classes=(0,1,7)", "model.widths=(32,)", "model.code_dim=8",
           "one_class.baselines=('pca','isolation_forest')", "one_class.pca_components=8"]


def oc_config(*extra):
  return api.load_config(one_class.default_config(), TINY_OC + list(extra))


# --- metrics on constructed cases -------------------------------------------------------------


def test_auroc_and_ap_on_cases_with_known_answers():
  is_anomaly = np.array([0, 0, 0, 0, 1, 1, 1, 1], bool)
  assert anomaly.detection_metrics(np.arange(8.0), is_anomaly) == {"auroc": 1.0,
                                                                   "average_precision": 1.0}
  assert anomaly.detection_metrics(-np.arange(8.0), is_anomaly)["auroc"] == 0.0
  # normal 0,1,2,3 vs anomalous 1.5,2.5,3.5,4.5: 13 of the 16 pairs are ordered right.
  scores = np.array([0, 1, 2, 3, 1.5, 2.5, 3.5, 4.5])
  assert anomaly.detection_metrics(scores, is_anomaly)["auroc"] == pytest.approx(13 / 16)
  with pytest.raises(ValueError, match="both normal and anomalous"):
    anomaly.detection_metrics(scores, np.zeros(8, bool))


def test_threshold_from_validation_normals_and_the_decision_it_gives():
  threshold = anomaly.threshold_at_fpr(np.arange(101.0), fpr=0.05)
  assert threshold == pytest.approx(95.0)
  d = anomaly.decision_metrics(np.array([10, 96, 97, 50, 99, 200.0]),
                               np.array([0, 0, 1, 1, 1, 1], bool), threshold)
  assert d["tpr"] == 0.75 and d["fpr"] == 0.5 and d["precision"] == pytest.approx(0.75)
  assert d["f1"] == pytest.approx(0.75)  # precision 3/4, recall 3/4
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # nothing flagged: precision and F1 are 0, said without a warning
    none = anomaly.decision_metrics(np.array([1.0, 2.0]), np.array([False, True]), np.inf)
  assert (none["precision"], none["f1"], none["tpr"], none["fpr"]) == (0.0, 0.0, 0.0, 0.0)
  # labels given as 0/1 integers mean the same as booleans (not indices)
  assert anomaly.decision_metrics(np.array([10, 96, 97, 50, 99, 200.0]),
                                  np.array([0, 0, 1, 1, 1, 1]), threshold) == d
  for fpr in (0.0, 1.0, 1.5):
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
      anomaly.threshold_at_fpr([1.0], fpr=fpr)
  # float32 scores are interpolated in float64
  scores = np.array([0.1, 0.3, 0.7], np.float32)
  assert anomaly.threshold_at_fpr(scores, 0.35) == np.quantile(scores.astype(np.float64), 0.65)


def test_cluster_accuracy_is_invariant_to_renaming_clusters_and_matches_by_hand():
  labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
  clusters = np.array([5, 5, 3, 3, 3, 3, 9, 9, 9, 5])
  # best matching: 5->0 (2 right), 3->1 (3), 9->2 (3) = 8/10
  assert cluster_accuracy(labels, clusters) == pytest.approx(0.8)
  renamed = np.vectorize({5: 1, 3: 7, 9: 0}.get)(clusters)
  assert cluster_scores(labels, renamed) == pytest.approx(cluster_scores(labels, clusters))
  np.testing.assert_array_equal(matched(labels, clusters), [0, 0, 1, 1, 1, 1, 2, 2, 2, 0])
  np.testing.assert_array_equal(matched(labels, renamed), matched(labels, clusters))
  assert set(matched([0, 0, 1, 1], [0, 1, 2, 3])) == {0, 1, 2, 3}  # spare clusters: new ids
  assert cluster_scores(labels, (labels + 1) % 3) == pytest.approx({"accuracy": 1.0, "nmi": 1.0,
                                                                    "ari": 1.0})
  # more clusters than classes: unmatched clusters count as errors
  assert cluster_accuracy([0, 0, 1, 1], [0, 1, 2, 3]) == 0.5
  table = contingency(labels, clusters)
  assert table.shape == (3, 3) and table.trace() == 8


# --- the protocol's splits --------------------------------------------------------------------


def test_normal_split_holds_only_the_normal_class_and_validation_is_disjoint(digits):
  _, labels = digits
  for c in (0, 4, 9):
    train, val = normal_split(labels, c, val_fraction=0.2, seed=3)
    assert set(labels[train]) == {c} and set(labels[val]) == {c}
    assert not set(train) & set(val)
    assert len(train) + len(val) == int((labels == c).sum())
    assert len(val) == round(0.2 * (labels == c).sum())
  capped, _ = normal_split(labels, 4, val_fraction=0.2, seed=3, max_train=10)
  assert len(capped) == 10


def test_padding_repeats_only_the_class_own_examples():
  idx = np.array([3, 8, 11])
  padded = pad_by_repeating(idx, 8, seed=0)
  assert len(padded) == 8 and set(padded) == set(idx) and list(padded[:3]) == [3, 8, 11]
  assert np.bincount(padded).max() - np.bincount(padded)[idx].min() <= 1  # as even as it can be
  with pytest.raises(ValueError):
    pad_by_repeating(idx, 2, seed=0)


def test_normal_classes_must_exist():
  with pytest.raises(ValueError, match=r"normal class\(es\) 11 not in mnist; its classes are 0, 1, 2"):
    check_normal_classes(np.array([0, 1, 2]), (1, 11), "mnist")
  assert check_normal_classes(np.array([2, 0, 1]), ()) == (0, 1, 2)


# --- bad input before anything trains ---------------------------------------------------------


@pytest.mark.parametrize("override, message", [
    ("one_class.normal_classes=(3,12)", r"normal class\(es\) 12 not in digits; its classes are 0, 1"),
    ("one_class.scores=('reconstruction_mae',)", r"unknown anomaly score 'reconstruction_mae'.*"
                                                 r"registered: reconstruction_mse"),
    ("one_class.scores=('neg_elbo',)", r"score 'neg_elbo' needs a vae model"),
    ("one_class.baselines=('lof',)", r"unknown anomaly baseline 'lof'.*registered: pca"),
    ("one_class.knn_k=100000", r"one_class.knn_k.*must be in \[1, "),
])
def test_one_class_bad_input_is_one_line_before_training(override, message):
  with pytest.raises(ConfigError, match=message) as e:
    api.load_and_check(oc_config(override), progress=False)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("override, message", [
    ("clustering.k=1", r"clustering.k.*must be in \[2, 300\]"),
    ("clustering.k=301", r"clustering.k.*must be in \[2, 300\]"),
    ("clustering.methods=('dbscan',)", r"unknown clustering method 'dbscan'.*registered: kmeans, gmm"),
    ("clustering.embeddings=('tsne',)", r"unknown embedding 'tsne'"),
])
def test_clustering_bad_input_is_one_line_before_training(override, message):
  config = api.load_config(clustering.default_config(), ["data.max_examples=300", override])
  with pytest.raises(ConfigError, match=message):
    api.load_and_check(config, progress=False)


@pytest.mark.parametrize("umap_init, message", [
    ("raise ImportError('No module named umap')", r"'umap' needs umap-learn; pip install"),
    ("raise RuntimeError('operator torchvision::nms does not exist\\nmore')",
     r"umap-learn is installed but does not import here \(RuntimeError: operator torchvision"),
])
def test_an_unusable_umap_is_one_line_before_training(tmp_path, monkeypatch, umap_init, message):
  (tmp_path / "umap").mkdir()
  (tmp_path / "umap" / "__init__.py").write_text(umap_init + "\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.delitem(sys.modules, "umap", raising=False)
  config = api.load_config(clustering.default_config(), [
      "data.max_examples=300", "clustering.embeddings=('umap',)"])
  with pytest.raises(ConfigError, match=message) as e:
    api.load_and_check(config, progress=False)
  assert "\n" not in str(e.value)


# --- scores are what they say -----------------------------------------------------------------


def _tiny_autoencoder(shape=(8, 8, 1)):
  from aetl_jax.models.registry import build_autoencoder
  config = oc_config()
  model = build_autoencoder(config.model, shape)
  params = model.init(jax.random.PRNGKey(0), np.zeros((1, *shape)), method="reconstruct")["params"]
  return model, params


def test_reconstruction_and_knn_scores_equal_their_definitions(digits):
  images, _ = digits
  x = (images[:40] / 16.0).astype(np.float32)
  model, params = _tiny_autoencoder()
  ctx = anomaly.ScoreContext(model, params, x[:30], jax.random.PRNGKey(0), knn_k=3)
  recon = np.asarray(jax.nn.sigmoid(model.apply({"params": params}, x[30:], method="reconstruct")))
  np.testing.assert_allclose(anomaly.SCORES.get("reconstruction_mse").fn(ctx, x[30:]),
                             ((recon - x[30:]) ** 2).reshape(10, -1).mean(1), rtol=1e-5)
  z = lambda a: np.asarray(model.apply({"params": params}, a, method="encode")).reshape(len(a), -1)
  d = np.linalg.norm(z(x[30:])[:, None] - z(x[:30])[None], axis=-1)
  np.testing.assert_allclose(anomaly.SCORES.get("latent_knn").fn(ctx, x[30:]),
                             np.sort(d, 1)[:, :3].mean(1), rtol=1e-4)
  np.testing.assert_allclose(anomaly.codes(model, params, x[30:]), z(x[30:]), rtol=1e-5)
  error_map = anomaly.pixel_error_map(model, params, x[30:])
  np.testing.assert_allclose(error_map, (recon - x[30:]) ** 2, rtol=1e-5, atol=1e-7)


# --- vmapped one-class models == one by one ----------------------------------------------------


@pytest.mark.slow
def test_vmapped_one_class_models_equal_sequential_ones(digits):
  config = oc_config()
  data = one_class.load(config, progress=False)
  one_class.check(config, data)
  from aetl_jax.engine.phase import Optim, Phase
  from aetl_jax.engine.runtime import make_runtime
  from aetl_jax.models.registry import build_autoencoder
  from aetl_jax.objectives.registry import make_objective
  model = build_autoencoder(config.model, data.shape)
  phase = Phase("one_class", make_objective(model, config.objective),
                (("images", "source", 32),), 2, Optim.from_config(config.pretrain))
  images = one_class.stacked_training_sets(data, seed=0)
  assert images.shape[0] == 3
  params, rngs = one_class.init_models(model, data.shape, data.normal, seed=0)
  runtime = make_runtime(family="mlp")
  vmapped, vrows = one_class.train_models(phase, params, images, rngs, runtime=runtime, vmap=True)
  sequential, srows = one_class.train_models(phase, params, images, rngs, runtime=runtime, vmap=False)
  for a, b in zip(jax.tree.leaves(vmapped), jax.tree.leaves(sequential)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)
  assert [r["loss"] for r in vrows[2]] == pytest.approx([r["loss"] for r in srows[2]], rel=1e-4)
  moved = [float(np.abs(np.asarray(a) - np.asarray(b)).max())
           for a, b in zip(jax.tree.leaves(vmapped), jax.tree.leaves(params))]
  assert min(moved) > 0  # every leaf trained
  # the models differ: each learned its own class
  first = jax.tree.leaves(vmapped)[0]
  assert not np.allclose(first[0], first[1])


# --- the tasks end to end ---------------------------------------------------------------------


@pytest.mark.slow
def test_one_class_task_end_to_end_resumes_without_retraining(tmp_path):
  config = oc_config()
  out = api.run(config, tmp_path, progress=False)
  assert {(r["method"], r["class"], r["seed"]) for r in out["rows"]} == {
      *((m, c, s) for m in ("reconstruction_mse", "latent_knn", "isolation_forest")
        for c in (0, 1, 7) for s in (0, 1)),
      *(("pca", c, 0) for c in (0, 1, 7))}
  # every row's AUROC and FPR, recomputed with scikit-learn from the saved test scores
  from sklearn.metrics import roc_auc_score
  _, data = api.load_and_check(config, progress=False)
  y_test = data.test[1]
  for r in out["rows"]:
    kind = "autoencoder" if r["kind"] == "autoencoder" else "baselines"
    with np.load(tmp_path / "results" / "scores" / f"{kind}_seed{r['seed']}.npz") as saved:
      scores = saved[f"{r['method']}/{r['class']}"]
    normal = y_test == r["class"]
    assert r["auroc"] == pytest.approx(roc_auc_score(~normal, scores), abs=1e-6)
    assert r["fpr"] == pytest.approx(np.mean(scores[normal] > r["threshold"]), abs=1e-6)
  # digits are easy: the latent kNN score separates a digit from the others well above chance
  knn = [r["auroc"] for r in out["rows"] if r["method"] == "latent_knn"]
  assert np.mean(knn) > 0.8
  md = (tmp_path / "results" / "results.md").read_text()
  assert "| method | 0 | 1 | 7 | mean |" in md and "| latent_knn |" in md and "(n=2)" in md
  for name in ("roc.png", "histograms.png", "strangest.png", "timing.json", "scores"):
    assert (tmp_path / "results" / name).exists()
  timing = json.loads((tmp_path / "results" / "timing.json").read_text())
  assert timing["seed0"]["models"] == 3 and timing["seed0"]["vmap"] is True
  stamp = (tmp_path / "one_class" / "checkpoints" / "seed1").stat().st_mtime_ns
  # A lost results file: the scores are recomputed from the checkpoints, nothing retrains.
  cells = tmp_path / "results" / "cells.jsonl"
  cells.write_text("".join(l + "\n" for l in cells.read_text().splitlines()
                           if json.loads(l)["seed"] == 0))
  again = api.run(config, tmp_path, progress=False)
  assert (tmp_path / "one_class" / "checkpoints" / "seed1").stat().st_mtime_ns == stamp
  key = lambda r: (r["method"], r["class"], r["seed"])
  assert sorted(map(key, again["rows"])) == sorted(map(key, out["rows"]))
  before = {key(r): r["auroc"] for r in out["rows"]}
  for r in again["rows"]:
    assert r["auroc"] == pytest.approx(before[key(r)], abs=1e-6)


@pytest.mark.slow
def test_vae_one_class_scores_by_negative_elbo(tmp_path):
  config = oc_config("objective.name='vae'", "one_class.scores=('neg_elbo','reconstruction_bce')",
                     "one_class.seeds=1", "one_class.baselines=()", "model.latent_dim=4")
  out = api.run(config, tmp_path, progress=False)
  methods = {r["method"] for r in out["rows"]}
  assert methods == {"neg_elbo", "reconstruction_bce"}
  from sklearn.metrics import roc_auc_score
  _, data = api.load_and_check(config, progress=False)
  with np.load(tmp_path / "results" / "scores" / "autoencoder_seed0.npz") as saved:
    for r in out["rows"]:
      scores = saved[f"{r['method']}/{r['class']}"]
      assert r["auroc"] == pytest.approx(roc_auc_score(data.test[1] != r["class"], scores), abs=1e-6)
      if r["method"] == "neg_elbo":  # a negative ELBO of binary pixels is at least -log p(x) > 0
        assert scores.min() > 0


@pytest.mark.slow
def test_clustering_task_end_to_end(tmp_path):
  config = api.load_config(clustering.default_config(), [
      "data.max_examples=400", "pretrain.epochs=3", "pretrain.batch_size=64", "clustering.seeds=2",
      "clustering.embeddings=('pca','umap')", "clustering.embedding_dim=5", "model.code_dim=6",
      "clustering.umap_neighbors=10"])
  out = api.run(config, tmp_path, progress=False)
  got = {(r["features"], r["embedding"], r["method"]) for r in out["rows"]}
  assert ("codes (reconstruction)", "pca", "gmm") in got
  assert ("codes (reconstruction)", "umap", "kmeans") in got
  assert ("pixels", "none", "kmeans") in got and ("PCA-10 of pixels", "none", "kmeans") in got
  assert ("pixels", "none", "gmm") not in got  # baselines cluster with clustering.baseline_methods
  assert len(out["rows"]) == len(got) * 2 and all(r["k"] == 10 for r in out["rows"])
  # seed 0's scores, recomputed from its saved clusters: the best one-to-one matching by
  # scipy's Hungarian solver, NMI and ARI by scikit-learn
  from scipy.optimize import linear_sum_assignment
  from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
  _, data = api.load_and_check(config, progress=False)
  rows = [json.loads(l) for l in (tmp_path / "results" / "cells.jsonl").read_text().splitlines()]
  for r in (r for r in rows if r["seed"] == 0):
    clusters, labels = np.asarray(r["clusters"]), np.asarray(data.labels)
    table = np.zeros((10, 10))
    np.add.at(table, (clusters, labels), 1)
    matched = table[linear_sum_assignment(-table)].sum() / len(labels)
    assert r["accuracy"] == pytest.approx(matched, abs=1e-9)
    assert r["nmi"] == pytest.approx(normalized_mutual_info_score(labels, clusters), abs=1e-9)
    assert r["ari"] == pytest.approx(adjusted_rand_score(labels, clusters), abs=1e-9)
  pixels = [r["accuracy"] for r in out["rows"] if r["features"] == "pixels"]
  assert np.mean(pixels) > 0.5  # k-means on digits' pixels is far above chance (0.1)
  md = (tmp_path / "results" / "results.md").read_text()
  assert "| codes (reconstruction) → pca → gmm |" in md
  assert (tmp_path / "results" / "confusion.png").exists()
  assert (tmp_path / "results" / "codes_map.png").exists()
  again = api.run(config, tmp_path, progress=False)  # resumes: every row already there
  assert len(again["rows"]) == len(out["rows"])
