"""Behaviours that had no test, each against an independent computation (numpy, scipy,
hand values), plus property-based tests (Hypothesis) where a property is cleaner."""

import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aetl_jax.core.rules import FROZEN, match_rules
from aetl_jax.data.splits import label_budget, stratified_split
from aetl_jax.objectives.autoencoders import sparsity_penalty
from aetl_jax.objectives.corruption import corrupt
from aetl_jax.reporting.tables import paired_differences, summarise, write_tables
from aetl_jax.strategies import probes
from tests.conftest import normal

# ---------------------------------------------------------------------------
# Objectives


@pytest.mark.parametrize("level", [0.1, 0.5])
def test_masking_and_salt_and_pepper_corrupt_the_stated_fraction(level):
  x = jnp.full((64, 32, 32, 1), 0.5)
  masked = np.asarray(corrupt(x, jax.random.PRNGKey(0), "masking", level))
  assert abs(np.mean(masked == 0.0) - level) < 0.01  # 65,536 pixels: ±0.2% at 1σ
  assert set(np.unique(masked)) <= {0.0, 0.5}
  sp = np.asarray(corrupt(x, jax.random.PRNGKey(1), "salt_and_pepper", level))
  assert abs(np.mean(sp != 0.5) - level) < 0.01
  assert abs(np.mean(sp == 1.0) - level / 2) < 0.01


def test_gaussian_corruption_has_the_stated_std_before_clipping():
  x = jnp.full((64, 32, 32, 1), 0.5)
  noisy = np.asarray(corrupt(x, jax.random.PRNGKey(2), "gaussian", 0.1))
  assert abs(np.std(noisy) - 0.1) < 0.002 and noisy.min() >= 0.0 and noisy.max() <= 1.0


def test_denoising_scores_the_reconstruction_against_the_clean_image():
  """A model that returns its input perfectly scores 0 MSE only if the target is clean:
  the identity 'autoencoder' must be penalised by exactly the corruption it copied."""
  from aetl_jax.objectives.autoencoders import denoising

  class Identity:  # reconstruction losses read (logits, code) from method="with_code"
    def apply(self, variables, x, method=None, **kw):
      logits = jax.scipy.special.logit(jnp.clip(x, 1e-6, 1 - 1e-6))
      return (logits, x) if method == "with_code" else logits

  class O(dict):
    __getattr__ = dict.__getitem__

  x = jnp.full((4, 8, 8, 1), 0.5)
  loss = denoising(Identity(), O(loss="mse", corruption="masking", corruption_level=0.25))
  value, aux = loss({}, {"images": {"image": x}}, jax.random.PRNGKey(0))
  noisy = np.asarray(corrupt(x, jax.random.split(jax.random.PRNGKey(0))[0], "masking", 0.25))
  want = np.mean((noisy - 0.5) ** 2)  # what the copy of the corrupted input misses
  assert float(value) == pytest.approx(want, rel=1e-4) and want > 0


def test_sparse_kl_penalty_equals_the_formula():
  code = normal(0, (50, 6))
  rho = 0.05
  rho_hat = (1 / (1 + np.exp(-np.asarray(code)))).mean(0)
  want = np.sum(rho * np.log(rho / rho_hat) + (1 - rho) * np.log((1 - rho) / (1 - rho_hat)))
  assert float(sparsity_penalty(code, "kl", rho)) == pytest.approx(want, rel=1e-5)
  assert float(sparsity_penalty(code, "l1", rho)) == pytest.approx(
      np.mean(np.abs(np.asarray(code)).sum(1)), rel=1e-5)


@pytest.mark.slow
def test_mae_loss_is_the_mean_error_over_masked_patches_only(digits):
  """The loss equals the per-patch MSE averaged over the masked patches (by hand), and the
  mask it uses has the configured ratio."""
  from aetl_jax.models.registry import build_autoencoder
  from aetl_jax.models.vit import patchify
  from aetl_jax.objectives.autoencoders import mae
  from tests.conftest import digits_config
  config = digits_config("model.family='vit'", "objective.name='mae'", "model.patch=2",
                         "model.vit_dim=16", "model.vit_depth=1", "model.vit_heads=2",
                         "model.decoder_dim=16", "model.decoder_depth=1")
  model = build_autoencoder(config.model, (8, 8, 1), "mae")
  x = jnp.asarray(digits[0][:4])
  params = model.init(jax.random.PRNGKey(0), x, method="reconstruct")["params"]
  rng = jax.random.PRNGKey(3)
  value = float(mae(model, config.objective)(params, {"images": {"image": x}}, rng)[0])
  mask_rng, drop_rng = jax.random.split(rng)
  pred, mask = model.apply({"params": params}, x, mask_rng, train=True, rngs={"dropout": drop_rng})
  per_patch = np.mean((np.asarray(pred) - np.asarray(patchify(x, 2))) ** 2, -1)
  mask = np.asarray(mask)
  assert value == pytest.approx(float(np.sum(per_patch * mask) / np.sum(mask)), rel=1e-5)
  assert value != pytest.approx(float(per_patch.mean()), rel=1e-3)  # not all patches
  assert mask.mean() == pytest.approx(0.75)  # 12 of 16 patches per image


# ---------------------------------------------------------------------------
# Probes pick their hyper-parameter on validation


def test_ridge_probe_picks_the_l2_with_the_best_validation_accuracy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 20))
  y = (x[:, 0] > 0).astype(int)
  tr, va, te = (x[:60], y[:60]), (x[60:120], y[60:120]), (x[120:], y[120:])
  grid = (1e-3, 1e2, 1e6)
  res = probes.ridge_probe(tr, va, te, num_classes=2, l2_grid=grid)
  # scikit-learn's ridge (intercept not penalised) on standardised features, ±1 targets
  from sklearn.linear_model import Ridge
  from sklearn.preprocessing import StandardScaler
  scale = StandardScaler().fit(tr[0])
  targets = 2.0 * np.eye(2)[tr[1]] - 1.0
  accs = [np.mean(Ridge(alpha=l2).fit(scale.transform(tr[0]), targets)
                  .predict(scale.transform(va[0])).argmax(1) == va[1]) for l2 in grid]
  assert res["l2"] == grid[int(np.argmax(accs))] and res["val_accuracy"] == pytest.approx(max(accs))


def test_knn_probe_picks_k_on_validation_and_skips_k_beyond_the_train_set():
  from sklearn.neighbors import KNeighborsClassifier
  rng = np.random.default_rng(1)
  x = rng.normal(size=(120, 5))
  y = (x[:, 0] + 0.5 * rng.normal(size=120) > 0).astype(int)
  tr, va, te = (x[:30], y[:30]), (x[30:70], y[30:70]), (x[70:], y[70:])
  res = probes.knn_probe(tr, va, te, k_grid=(1, 5, 15, 100))
  accs = {k: KNeighborsClassifier(k, metric="cosine").fit(*tr).score(*va) for k in (1, 5, 15)}
  assert res["k"] == max(accs, key=lambda k: (accs[k], -list(accs).index(k)))
  assert res["k"] != 100


# ---------------------------------------------------------------------------
# Same-dataset domains: no leakage, caps respected


def test_same_dataset_domains_do_not_leak_and_respect_caps(tmp_path):
  """Every image carries its index in its pixels, so source, pool and test are identified exactly."""
  import ml_collections
  from aetl_jax.data.domains import build_transfer_data
  n = 600
  labels = np.arange(n) % 4
  images = np.zeros((n, 4, 4), np.uint8)
  images[:, 0, 0], images[:, 0, 1] = np.arange(n) // 256, np.arange(n) % 256
  np.savez(tmp_path / "d.npz", images=images, labels=labels)
  d = ml_collections.ConfigDict(dict(
      source=f"npz:{tmp_path / 'd.npz'}", target=f"npz:{tmp_path / 'd.npz'}", data_dir=str(tmp_path / "t"),
      manual_dir="", common_shape=(), resize="pad", test_fraction=0.25, source_fraction=0.5,
      split_seed=3, max_source=100, max_pool=120, max_test=80, stream_source=False))
  data = build_transfer_data(d)
  ids = lambda a: set((np.round(np.asarray(a)[:, 0, 0, 0] * 255).astype(int) * 256
                       + np.round(np.asarray(a)[:, 0, 1, 0] * 255).astype(int)).tolist())
  src, pool, test = (ids(data.source_images), ids(data.images[data.split.target_pool]),
                     ids(data.images[data.split.test]))
  assert (len(src), len(pool), len(test)) == (100, 120, 80)  # the caps, no duplicates
  assert not (src & pool) and not (src & test) and not (pool & test)
  # Labels travel with their images.
  for part in (data.split.target_pool, data.split.test):
    got = np.asarray(sorted(ids(data.images[part])))
    np.testing.assert_array_equal(np.sort(data.labels[part]), np.sort(got % 4))


# ---------------------------------------------------------------------------
# Results files hold what the summary says


def test_results_csv_and_json_hold_the_summary_and_the_paired_table(tmp_path):
  vals = {("scratch", 0): 0.5, ("scratch", 1): 0.6, ("ft", 0): 0.7, ("ft", 1): 0.65}
  rows = [{"budget": 5, "strategy": s, "seed": k, "test_accuracy": v} for (s, k), v in vals.items()]
  summary = summarise(rows)
  paired = paired_differences(rows, baseline="scratch")
  md = write_tables(summary, tmp_path, strategies=["scratch", "ft"], budgets=[5],
                    paired={"scratch": paired})
  data = json.loads((tmp_path / "results.json").read_text())
  ft = next(r for r in data if r["strategy"] == "ft" and r["metric"] == "test_accuracy")
  assert ft["mean"] == pytest.approx(0.675) and ft["n"] == 2
  delta = next(r for r in data if r.get("baseline") == "scratch")
  assert delta["mean"] == pytest.approx(0.125)  # (0.2 + 0.05) / 2
  with open(tmp_path / "results.csv") as f:
    table = list(csv.DictReader(f))
  assert {r["strategy"] for r in table} == {"scratch", "ft"} and len(table) == 3
  assert "| ft | +12.5 ±" in md and "67.5 ±" in md


# ---------------------------------------------------------------------------
# Properties


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(min_value=2, max_value=40), min_size=2, max_size=8),
       fraction=st.floats(min_value=0.1, max_value=0.9), seed=st.integers(0, 2 ** 16))
def test_stratified_split_is_a_disjoint_stratified_partition(counts, fraction, seed):
  labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
  a, b = stratified_split(labels, fraction, seed)
  assert len(np.intersect1d(a, b)) == 0 and len(a) + len(b) == len(labels)
  for c, n in enumerate(counts):
    assert int(np.sum(labels[b] == c)) == int(round(fraction * n))


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(min_value=3, max_value=30), min_size=2, max_size=6),
       per_class=st.integers(1, 3), seed=st.integers(0, 2 ** 16))
def test_label_budget_draws_exactly_per_class_without_repeats(counts, per_class, seed):
  labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
  idx = label_budget(labels, per_class, seed)
  assert len(np.unique(idx)) == len(idx) == per_class * len(counts)
  assert np.bincount(labels[idx]).tolist() == [per_class] * len(counts)


_names = st.sampled_from(["encoder/block_0/kernel", "encoder/block_0/bias", "encoder/block_1/kernel",
                          "head/kernel", "head/bias", "decoder/block_0/kernel"])


@settings(max_examples=60, deadline=None)
@given(leaves=st.sets(_names, min_size=1), rules=st.lists(
    st.tuples(st.sampled_from(["encoder/.*", "head/.*", ".*/bias", "decoder/.*", ".*"]),
              st.sampled_from([FROZEN, 1.0, 0.5])), max_size=4))
def test_rules_cover_every_leaf_or_raise_and_first_match_wins(leaves, rules):
  import re
  tree = {}
  for name in leaves:
    node = tree
    *parents, leaf = name.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = np.zeros(1)
  def first(name):
    return next((v for pat, v in rules if re.fullmatch(pat, name)), None)
  if any(first(n) is None for n in leaves):
    with pytest.raises(ValueError, match="matched by no rule"):
      match_rules(tree, rules)
    return
  values = match_rules(tree, rules)
  for name in leaves:
    node = values
    for part in name.split("/"):
      node = node[part]
    assert node == first(name)


@settings(max_examples=40, deadline=None)
@given(perm_seed=st.integers(0, 2 ** 16))
def test_paired_differences_do_not_depend_on_row_order(perm_seed):
  rng = np.random.default_rng(7)
  rows = [{"budget": b, "strategy": s, "seed": k, "test_accuracy": float(rng.random())}
          for b in (1, 5) for s in ("scratch", "a", "b") for k in range(3)]
  ref = sorted(paired_differences(rows, baseline="scratch"), key=lambda d: (d["budget"], d["strategy"]))
  shuffled = [rows[i] for i in np.random.default_rng(perm_seed).permutation(len(rows))]
  got = sorted(paired_differences(shuffled, baseline="scratch"), key=lambda d: (d["budget"], d["strategy"]))
  for x, y in zip(ref, got):
    assert x["budget"] == y["budget"] and x["strategy"] == y["strategy"]
    assert x["mean"] == pytest.approx(y["mean"]) and x["n"] == y["n"] == 3
