"""Semi-supervised pieces against independent computations: the Ladder network's combinator
and costs, manifold probes (inductive fits never see test codes; label spreading as
scikit-learn's), training length in optimiser steps, the underfit flag, validation modes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from aetl_jax.data.transfer_split import TransferSplit, draw_target_labels
from aetl_jax.models.ladder import Combinator, LadderNetwork
from aetl_jax.models.variables import tree_of
from aetl_jax.reporting.tables import UNDERFIT_MARK, summarise, write_tables
from aetl_jax.strategies import manifold
from tests.conftest import normal


# --- the Ladder network ------------------------------------------------------------------------


def _fit_combinator(z_noisy, u, z, steps=400):
  """The gauss combinator's parameters fitted to map (z̃, u) to the clean z; its final MSE."""
  g = Combinator("gauss")
  params = g.init(jax.random.PRNGKey(0), z_noisy, u)
  opt = optax.adam(0.05)
  state = opt.init(params)
  loss = jax.jit(lambda p: jnp.mean((g.apply(p, z_noisy, u) - z) ** 2))
  grad = jax.jit(jax.grad(lambda p: jnp.mean((g.apply(p, z_noisy, u) - z) ** 2)))
  for _ in range(steps):
    updates, state = opt.update(grad(params), state)
    params = optax.apply_updates(params, updates)
  return float(loss(params))


@pytest.mark.slow
def test_the_lateral_connection_lets_the_decoder_denoise_beyond_the_top_down_signal():
  """z ~ N(0, 1), z̃ = z + 0.5 noise, u a weak top-down hint (sign(z) + noise): with the lateral
  z̃ the combinator reaches about the Bayes shrinkage error; from u alone (z̃ zeroed) it
  cannot beat the hint's conditional variance."""
  z = normal(0, (4096, 8))
  z_noisy = z + 0.5 * normal(1, z.shape)
  u = jnp.sign(z) + 1.0 * normal(2, z.shape)
  with_lateral = _fit_combinator(z_noisy, u, z)
  without = _fit_combinator(jnp.zeros_like(z_noisy), u, z)
  noisy = float(jnp.mean((z_noisy - z) ** 2))
  assert with_lateral < 0.8 * noisy  # better than taking z̃ as it is (shrinkage)
  assert with_lateral < 0.5 * without  # the lateral carries what u cannot


@pytest.mark.slow
def test_ladder_costs_and_statistics_against_a_hand_computation():
  model = LadderNetwork(widths=(6,), num_classes=3, noise_std=0.0)
  x = normal(3, (16, 2, 2, 1))
  params = tree_of(model.init(jax.random.PRNGKey(0), x, method="init_all"))
  assert set(params) == {"encoder", "decoder"}
  assert set(params["decoder"]) == {"block_0", "block_1", "block_2"}
  (logits, costs), upd = model.apply(
      {"params": {k: {b: {n: v for n, v in leaf.items() if not n.startswith("running")}
                      for b, leaf in tree.items()} for k, tree in params.items()},
       "batch_stats": {"encoder": {b: {n: v for n, v in leaf.items() if n.startswith("running")}
                                   for b, leaf in params["encoder"].items()}}},
      x, x, jax.random.PRNGKey(1), method="costs", mutable=["batch_stats"])
  assert sorted(costs) == [0, 1, 2] and logits.shape == (16, 3)
  # the clean pass's statistics moved the running averages: (1 - m) * 0 + m * batch mean
  h = x.reshape(16, -1)
  z_pre = h @ params["encoder"]["block_0"]["kernel"]
  new = upd["batch_stats"]["encoder"]["block_0"]
  np.testing.assert_allclose(new["running_mean"], 0.01 * z_pre.mean(0), rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(new["running_var"], 0.99 + 0.01 * z_pre.var(0), rtol=1e-4)
  # the Γ-model denoises the class layer only
  gamma = LadderNetwork(widths=(6,), num_classes=3, variant="gamma")
  gp = gamma.init(jax.random.PRNGKey(0), x, method="init_all")
  (_, gcosts), _ = gamma.apply(gp, x, x, jax.random.PRNGKey(1), method="costs",
                               mutable=["batch_stats"])
  assert sorted(gcosts) == [2]


@pytest.mark.slow
def test_ladder_evaluates_with_its_running_statistics():
  model = LadderNetwork(widths=(4,), num_classes=2)
  x = normal(4, (8, 3, 1, 1))
  params = tree_of(model.init(jax.random.PRNGKey(0), x, method="init_all"))
  stats = {"running_mean": jnp.arange(4.0), "running_var": jnp.full((4,), 4.0)}
  params["encoder"]["block_0"].update(stats)
  from aetl_jax.models.variables import variables
  logits = model.apply(variables(params), x)
  enc = params["encoder"]
  z = (x.reshape(8, -1) @ enc["block_0"]["kernel"] - jnp.arange(4.0)) / jnp.sqrt(4.0 + 1e-6)
  h = jax.nn.relu(z + enc["block_0"]["beta"])
  top = enc["block_1"]
  z2 = (h @ top["kernel"] - top["running_mean"]) / jnp.sqrt(top["running_var"] + 1e-6)
  np.testing.assert_allclose(logits, top["gamma"] * (z2 + top["beta"]), rtol=1e-5, atol=1e-6)


# --- manifold probes ---------------------------------------------------------------------------


class _Recorder:
  """An embedder that records every array it is fitted on (PCA underneath)."""

  def __init__(self, seen, dim):
    from sklearn.decomposition import PCA
    self.seen, self.pca = seen, PCA(n_components=dim)

  def fit_transform(self, x):
    self.seen.append(np.array(x))
    return self.pca.fit_transform(x)

  def transform(self, x):
    return self.pca.transform(x)


def _pool_and_test(seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(0, 4, (3, 5))
  y_pool = np.repeat(np.arange(3), 40)
  y_test = np.repeat(np.arange(3), 10)
  pool = (centres[y_pool] + rng.normal(0, 1, (120, 5))).astype(np.float32)
  test = (centres[y_test] + rng.normal(0, 1, (30, 5)) + 100.0).astype(np.float32)  # marked
  train_at = np.array([0, 1, 40, 41, 80, 81])
  val_at = np.array([2, 42, 82])
  return pool, y_pool, test, y_test, train_at, val_at


class _Cfg(dict):
  __getattr__ = dict.__getitem__


@pytest.mark.parametrize("method", ["knn", "spreading"])
def test_the_inductive_mode_never_fits_on_test_codes(method, monkeypatch):
  seen = []
  monkeypatch.setattr(manifold, "_embedder", lambda kind, dim, seed, umap: _Recorder(seen, dim))
  fitted = []
  import sklearn.semi_supervised
  real = sklearn.semi_supervised.LabelSpreading.fit

  def record(self, x, y):
    fitted.append(np.array(x))
    return real(self, x, y)
  monkeypatch.setattr(sklearn.semi_supervised.LabelSpreading, "fit", record)
  pool, y_pool, test, y_test, train_at, val_at = _pool_and_test()
  cfg = _Cfg(manifold_mode="inductive", manifold_dim=2, manifold_k_grid=(1, 3),
             spreading_alpha_grid=(0.2, 0.8), spreading_neighbors=5)
  probe = manifold.manifold_probe(method, "pca")
  out = probe((None, y_pool[train_at]), (None, y_pool[val_at]), (test, y_test), num_classes=3,
              cfg=cfg, pool=manifold.ProbePool(pool, train_at, val_at))
  for x in seen + fitted:  # every fit saw pool rows only: no row carries the test mark
    assert x.shape[0] == len(pool) and float(np.abs(x).max()) < 50
  assert seen and (fitted or method == "knn")
  # transductive: the test rows join the fit (and the caption says so)
  seen.clear()
  cfg["manifold_mode"] = "transductive"
  out = probe((None, y_pool[train_at]), (None, y_pool[val_at]), (test, y_test), num_classes=3,
              cfg=cfg, pool=manifold.ProbePool(pool, train_at, val_at))
  assert seen[0].shape[0] == len(pool) + len(test) and out["manifold_mode"] == "transductive"


class _Noise:
  """An embedder that forgets its input (a setting that destroys the classes)."""

  def __init__(self, dim):
    self.rng, self.dim = np.random.default_rng(0), dim

  def fit_transform(self, x):
    return self.rng.normal(size=(len(x), self.dim))

  transform = fit_transform


def test_the_umap_settings_are_chosen_on_the_validation_labels(monkeypatch):
  """``umap_grid``: each (n_neighbors, min_dist) pair is an embedding of its own, fitted on the
  pool only (inductive), and the one with the best validation accuracy scores the test set."""
  seen = []

  def embedder(kind, dim, seed, umap=manifold.UMAP_DEFAULT):
    assert kind == "umap"
    seen.append(tuple(umap))
    return _Recorder([], dim) if tuple(umap) == (30, 0.0) else _Noise(dim)

  monkeypatch.setattr(manifold, "_embedder", embedder)
  pool, y_pool, test, y_test, train_at, val_at = _pool_and_test()
  test = test - 100.0
  cfg = _Cfg(manifold_mode="inductive", manifold_dim=2, manifold_k_grid=(1,),
             umap_grid=((15, 0.1), (30, 0.0), (5, 0.5)))
  out = manifold.manifold_probe("knn", "umap")(
      (None, y_pool[train_at]), (None, y_pool[val_at]), (test, y_test), num_classes=3, cfg=cfg,
      pool=manifold.ProbePool(pool, train_at, val_at))
  assert seen == [(15, 0.1), (30, 0.0), (5, 0.5)]
  assert out["umap"] == [30, 0.0] and out["val_accuracy"] == 1.0 and out["test_accuracy"] > 0.9
  assert "config key 'transfer.umap_grid'" in _strategy_problem("knn_umap", umap_grid=((1, 0.1),))


def _strategy_problem(name, **keys):
  """The ConfigError of strategy ``name``'s keys ``keys`` ('' when they pass)."""
  from aetl_jax.core.config import ConfigError
  from aetl_jax.strategies.registry import STRATEGIES
  entry = STRATEGIES.get(name)
  try:
    entry.check({**entry.defaults, **keys}, "transfer")
  except ConfigError as e:
    return str(e)
  return ""


def test_label_spreading_equals_scikit_learns_on_the_same_graph():
  from sklearn.semi_supervised import LabelSpreading
  pool, y_pool, test, y_test, train_at, val_at = _pool_and_test(1)
  test = test - 100.0
  y = np.full(len(pool), -1)
  y[train_at] = y_pool[train_at]
  for transductive in (False, True):
    pred, val_acc, _, chosen, pool_pred = manifold.spread(
        pool, train_at, y_pool[train_at], val_at, y_pool[val_at], test, alpha_grid=(0.5,),
        neighbors=7, transductive=transductive)
    x = np.concatenate([pool, test]) if transductive else pool
    yy = np.concatenate([y, np.full(len(test), -1)]) if transductive else y
    ref = LabelSpreading(kernel="knn", n_neighbors=7, alpha=0.5, max_iter=100).fit(x, yy)
    expected = ref.transduction_[len(pool):] if transductive else ref.predict(test)
    np.testing.assert_array_equal(pred, expected)
    assert val_acc == np.mean(ref.transduction_[val_at] == y_pool[val_at])
    assert chosen == {"alpha": 0.5}
    np.testing.assert_array_equal(pool_pred, ref.transduction_[:len(pool)])


def test_a_sweep_fits_the_embedding_once_for_every_cell():
  pool, _, test, _, _, _ = _pool_and_test()
  cache = {}
  a = manifold.embed("pca", pool, test, dim=2, mode="inductive", cache=cache)
  b = manifold.embed("pca", pool.copy(), test.copy(), dim=2, mode="inductive", cache=cache)
  assert len(cache) == 1 and a[0] is b[0]
  manifold.embed("pca", pool, test, dim=3, mode="inductive", cache=cache)
  assert len(cache) == 2


# --- training length, the underfit flag, validation labels ---------------------------------------


def test_a_phase_runs_at_least_min_steps_optimiser_steps():
  from aetl_jax.engine.phase import Optim, Phase
  phase = Phase("p", None, (("labelled", "target_labelled", 32),), 100, Optim(1e-3), min_steps=1000)
  assert phase.for_size(100).epochs == 334  # 3 steps an epoch: ceil(1000 / 3)
  assert phase.for_size(64_000).epochs == 100  # 2000 steps an epoch: epochs already suffice
  assert dataclasses.replace(phase, min_steps=0).for_size(100).epochs == 100


def test_cells_below_99_percent_training_accuracy_are_flagged(tmp_path):
  rows = [{"budget": 10, "strategy": s, "seed": k, "test_accuracy": 0.8, "train_accuracy": t,
           "phases": [{"phase": "x"}]} for s, t in (("a", 1.0), ("b", 0.97)) for k in range(2)]
  rows += [{"budget": 10, "strategy": "knn", "seed": 0, "test_accuracy": 0.8,
            "train_accuracy": 0.5}]  # a probe without gradient steps is not flagged
  summary = summarise(rows)
  md = write_tables(summary, tmp_path, strategies=["a", "b", "knn"], budgets=[10])
  line = {l.split("|")[1].strip(): l for l in md.splitlines() if l.startswith("| ")}
  assert UNDERFIT_MARK in line["b"] and UNDERFIT_MARK not in line["a"]
  assert UNDERFIT_MARK not in line["knn"]
  assert "b at 10 labels/class 97.0%" in md


def test_validation_labels_extra_within_or_none_and_never_at_budget_zero():
  labels = np.repeat(np.arange(3), 30)
  split = TransferSplit(source=np.empty(0, int), target_pool=np.arange(90), test=np.empty(0, int))
  kw = dict(labels=labels, split=split, val_per_class=2, seed=0, num_classes=3)
  train, val = draw_target_labels(per_class=5, validation="extra", **kw)
  assert len(train) == 15 and len(val) == 6 and not set(train) & set(val)
  train, val = draw_target_labels(per_class=5, validation="within", **kw)
  assert len(train) == 9 and len(val) == 6 and not set(train) & set(val)
  assert np.bincount(labels[val]).tolist() == [2, 2, 2]
  train, val = draw_target_labels(per_class=5, validation="none", **kw)
  assert len(train) == 15 and len(val) == 0
  fixed = dataclasses.replace(split, val=np.arange(80, 90))
  for mode in ("extra", "within", "none"):
    train, val = draw_target_labels(per_class=0, validation=mode, **{**kw, "split": fixed})
    assert len(train) == 0 and len(val) == 0


@pytest.mark.slow
def test_linear_probe_matches_scikit_learns_logistic_regression_on_the_same_codes(tmp_path):
  """Five label draws of 5 per class on the codes of a small digits autoencoder: the probe
  (logistic regression with scikit-learn's L2, C = transfer.probe_c, trained to convergence)
  fits its labels as LogisticRegression(C=1) does and scores as it does, paired by draw."""
  from scipy import stats
  from sklearn.linear_model import LogisticRegression
  from aetl_jax import api
  from aetl_jax.data.domains import build_transfer_data
  from aetl_jax.evaluation.batched import batched_apply
  from aetl_jax.tasks.pretrain import checkpoint_dir
  from aetl_jax.transfer.cell import train_strategy
  from aetl_jax.transfer.encoder import load_encoder, target_model
  from tests.conftest import digits_config
  config = digits_config("pretrain.epochs=30", "transfer.strategies=('linear_probe',)",
                         "transfer.budgets=(5,)", "transfer.seeds=1", "transfer.learning_rate=0.01",
                         "transfer.probe_steps=12000")
  api.run(config, tmp_path, progress=False)
  data = build_transfer_data(config.data, progress=False)
  model = target_model(config, 10, "classifier", data.images.shape[1:])
  params = tree_of(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1))))
  params = {**params, "encoder": load_encoder(config, checkpoint_dir(tmp_path), params)[1]}
  codes = lambda x: np.asarray(batched_apply(
      jax.jit(lambda p, v: model.apply({"params": p}, v, method="encode")), params, jnp.asarray(x)))
  test = (data.images[data.split.test], data.labels[data.split.test])
  ours, theirs = [], []
  for seed in range(5):
    train, _ = draw_target_labels(data.labels, data.split, per_class=5, val_per_class=0,
                                  seed=100 + seed, num_classes=10)
    x, y = data.images[train], data.labels[train]
    _, result, _ = train_strategy("linear_probe", config.transfer, model, params,
                                  {"train": (x, y), "val": (x[:0], y[:0]), "test": test},
                                  jax.random.PRNGKey(seed))
    reference = LogisticRegression(C=1.0, max_iter=5000).fit(codes(x), y)
    # at the regularised optimum a label may stay on the wrong side (so it does for sklearn)
    assert result["train_accuracy"] >= reference.score(codes(x), y) - 1 / len(y)
    ours.append(result["test_accuracy"])
    theirs.append(reference.score(codes(test[0]), test[1]))
  diff = np.asarray(ours) - np.asarray(theirs)
  half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))
  assert abs(diff.mean()) <= max(half, 0.01), (ours, theirs)


@pytest.mark.slow
def test_ladder_umap_spreading_and_pseudo_labels_from_scratch_in_a_sweep(tmp_path):
  """End to end on digits: the ladder's saved classifier predicts what its cell scored
  (recomputed from the saved parameters), the inductive UMAP probe is named in the caption,
  pseudo_label_scratch starts from no checkpoint; ``propagate_*`` fit their probe on the
  pretrained encoder's codes whatever their init (the same report as the probe's own cell,
  same draw), then train on the relabelled pool."""
  from aetl_jax import api
  from aetl_jax.data.domains import build_transfer_data
  from aetl_jax.transfer.classifiers import load_classifier
  from tests.conftest import digits_config
  strategies = ("scratch", "ladder", "ladder_gamma", "spreading_umap", "pseudo_label_scratch",
                "propagate_finetune", "propagate_scratch")
  config = digits_config(*TINY_SEMI, f"transfer.strategies={strategies!r}",
                         "transfer.propagate_with='spreading_umap'", "transfer.propagate_epochs=2")
  out = api.run(config, tmp_path, progress=False)
  rows = {(r["strategy"], r["seed"]): r for r in out["rows"]}
  assert {s for s, _ in rows} == set(strategies)
  data = build_transfer_data(config.data, progress=False)
  x, y = data.images[data.split.test], data.labels[data.split.test]
  clf = load_classifier(tmp_path, "budget3_ladder_seed1")
  assert clf.description["kind"] == "ladder"
  assert np.mean(clf.predict(x).argmax(1) == y) == pytest.approx(
      rows[("ladder", 1)]["test_accuracy"], abs=1e-9)
  assert rows[("ladder", 0)]["checkpoint_step"] is None  # a model of its own: nothing loaded
  assert rows[("pseudo_label_scratch", 0)]["checkpoint_step"] is None
  assert rows[("spreading_umap", 0)]["manifold_mode"] == "inductive"
  for seed in (0, 1):
    probe = rows[("spreading_umap", seed)]
    for name in ("propagate_finetune", "propagate_scratch"):
      r = rows[(name, seed)]
      assert r["propagated_test_accuracy"] == probe["test_accuracy"]
      assert r["propagated_alpha"] == probe["alpha"] and r["propagated_umap"] == probe["umap"]
      assert 0.5 < r["propagated_pool_accuracy"] <= 1.0
  assert rows[("propagate_finetune", 0)]["checkpoint_step"] is not None
  assert rows[("propagate_scratch", 0)]["checkpoint_step"] is None
  md = (tmp_path / "results" / "results.md").read_text()
  assert ("trained on their labels (spreading_umap, propagate_finetune, propagate_scratch) ran "
          "inductive") in md
  assert "3 + 2 labels per class in all" not in md and "k + 2 labels per class in all" in md


TINY_SEMI = ("pretrain.epochs=3", "transfer.budgets=(3,)", "transfer.seeds=2",
             "transfer.val_per_class=2", "transfer.min_steps=0", "transfer.probe_steps=0",
             "transfer.epochs=4", "transfer.semi_epochs=1", "transfer.ladder_epochs=2",
             "transfer.ladder_widths=(32,)", "transfer.ladder_costs=(1000.0,10.0,0.1)",
             "transfer.batch_size=16", "data.max_pool=300")


def test_propagated_labels_spread_the_cells_labels_over_the_pixels(
    monkeypatch):
  """A probe on pixels is fitted on the flattened images (not the codes) and labels every pool
  image from the cell's training labels, which those images keep; the report's keys are the
  probe's, prefixed."""
  from aetl_jax.transfer.cell import propagated_labels
  from tests.conftest import classifier_and_params, tiny_config
  seen = []
  monkeypatch.setattr(manifold, "_embedder", lambda kind, dim, seed, umap: _Recorder(seen, dim))
  model, params = classifier_and_params(tiny_config())
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(3, 8, 8, 1)) * 3
  y_pool = np.repeat(np.arange(3), 20)
  pool = (centres[y_pool] + rng.normal(size=(60, 8, 8, 1))).astype(np.float32)
  train_at, val_at = np.array([0, 20, 40]), np.array([1, 21, 41])
  wrong = y_pool.copy()
  wrong[train_at] = (wrong[train_at] + 1) % 3  # every class renamed
  cfg = _Cfg(**{k: key.default for k, key in manifold.DEFAULTS.items()})
  cfg.update(manifold_k_grid=(1,), manifold_dim=2)
  splits = {"train": (pool[train_at], wrong[train_at]), "val": (pool[val_at], y_pool[val_at]),
            "test": (pool[:5], y_pool[:5])}
  labels, report = propagated_labels("knn_umap_pixels", model, params, splits,
                                     (pool, train_at, val_at, {}), num_classes=3, cfg=cfg)
  np.testing.assert_array_equal(seen[0], pool.reshape(60, 64))
  np.testing.assert_array_equal(labels[train_at], wrong[train_at])
  others = np.setdiff1d(np.arange(60), train_at)
  # the probe spread the labels it was given (shifted by one class) to every other image
  assert labels.shape == (60,) and np.mean(labels[others] == (y_pool[others] + 1) % 3) > 0.9
  assert report["propagated_embedding"] == "umap" and report["propagated_k"] == 1
