"""Each strategy trains exactly the leaves its rules name, phase by phase."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from sklearn.linear_model import Ridge

from aetl_jax.core.config import ConfigError
from aetl_jax.engine.phase import Optim
from aetl_jax.strategies import STRATEGIES, StrategyContext, build_strategy, probes
from aetl_jax.transfer.cell import train_strategy
from tests.conftest import classifier_and_params, tiny_config, tree_equal


def _ctx(config, model, params, cache_features=True):
  return StrategyContext("", config.transfer, model, params, Optim.from_config(config.transfer),
                         cache_features)


def _build(name, config, model, params):
  return build_strategy(name, _ctx(config, model, params))


@pytest.fixture(scope="module")
def setup(digits):
  images, labels = digits
  config = tiny_config("transfer.learning_rate=1e-2", "transfer.batch_size=32")
  model, params = classifier_and_params(config)
  def split(a, b):
    return (jnp.asarray(images[a:b]), jnp.asarray(labels[a:b]))
  data = {"train": split(0, 200), "val": split(200, 300), "test": split(300, 600)}
  return config, model, params, data


def _run(setup, name, **overrides):
  config, model, params, data = setup
  cfg = config.transfer
  for k, v in overrides.items():
    cfg[k] = v
  strategy = _build(name, config, model, params)
  phases = []
  _, result, _ = train_strategy(name, cfg, model, params, data, jax.random.PRNGKey(0),
                                on_phase_end=lambda n, a, b: phases.append((n, a, b)))
  return strategy, result, phases


def _changed_blocks(before, after):
  out = {k for k in before["encoder"] if not tree_equal(before["encoder"][k], after["encoder"][k])}
  if not tree_equal(before["head"], after["head"]):
    out.add("head")
  return out


@pytest.mark.slow
def test_every_strategy_builds_and_runs(setup):
  for name in STRATEGIES.names():
    # joint_finetune and backbone_ae need the decoder (tests/test_engine.py,
    # tests/test_backbone.py); the source strategies need a labelled source and its checkpoint
    # (tests/test_adaptation.py).
    # Strategies with a model of their own (the ladder) run in tests/test_semi_supervised.py;
    # UMAP's numba compilation (~15 s) is paid once there too.
    info = STRATEGIES.get(name).info
    if (info.get("model") == "autoencoder_classifier" or info.get("needs_source_labels")
        or info.get("build_model") or "umap" in name):
      continue
    # The recipe's SGD at lr 1e-3 barely moves in 4 epochs (24 steps): a faster one.
    keys = {"frozen_backbone": dict(recipe_lr=0.1, recipe_ft_lr=1e-2, recipe_ft_epochs=4),
            "propagate_finetune": dict(propagate_with="spreading"),
            "propagate_scratch": dict(propagate_with="spreading")}
    _, result, _ = _run(setup, name, **keys.get(name, {}))
    # Above chance on 300 test digits: 10% chance gives more than 15% with probability < 1%
    # (binomial), whatever the strategy, even on this random (not pretrained) encoder.
    assert result["test_accuracy"] > 0.15, (name, result["test_accuracy"])
    assert stats.binom.sf(round(300 * result["test_accuracy"]) - 1, 300, 0.1) < 0.01, name


def test_linear_probe_uses_cached_features_and_matches_masked_path(setup):
  config, model, params, data = setup
  p_cached, r_cached, _ = train_strategy("linear_probe", config.transfer, model, params, data,
                                         jax.random.PRNGKey(1))
  p_full, r_full, _ = train_strategy("linear_probe", config.transfer, model, params, data,
                                     jax.random.PRNGKey(1), cache_features=False)
  assert r_cached["phases"][0]["cached_features"] and not r_full["phases"][0]["cached_features"]
  assert tree_equal(p_cached["encoder"], params["encoder"])
  for a, b in zip(jax.tree.leaves(p_cached["head"]), jax.tree.leaves(p_full["head"])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_lp_ft_second_phase_starts_from_probed_head(setup):
  _, _, params, _ = setup
  _, _, phases = _run(setup, "lp_ft", lp_epochs=3, epochs=2)
  (probe_name, probe_start, probe_end), (ft_name, ft_start, ft_end) = phases
  assert (probe_name, ft_name) == ("probe", "finetune")
  assert tree_equal(probe_start, params)
  assert _changed_blocks(probe_start, probe_end) == {"head"}
  assert tree_equal(ft_start, probe_end)
  assert _changed_blocks(ft_start, ft_end) == {"block_0", "block_1", "block_2", "head"}


@pytest.mark.slow
def test_gradual_unfreeze_changes_trainable_set_per_phase(setup):
  _, _, phases = _run(setup, "gradual_unfreeze", unfreeze_epochs=1)
  assert [p[0] for p in phases] == ["unfreeze_0", "unfreeze_1", "unfreeze_2", "unfreeze_3"]
  expected = [{"head"}, {"head", "block_2"}, {"head", "block_2", "block_1"},
              {"head", "block_2", "block_1", "block_0"}]
  for (name, start, end), want in zip(phases, expected):
    assert _changed_blocks(start, end) == want, name


def test_partial_freezes_first_k_blocks(setup):
  _, _, phases = _run(setup, "partial", partial_freeze_blocks=2)
  (_, start, end), = phases
  assert _changed_blocks(start, end) == {"block_2", "head"}


@pytest.mark.slow
def test_partial_by_regex(setup):
  _, _, phases = _run(setup, "partial", partial_freeze_regex="encoder/block_1/.*")
  (_, start, end), = phases
  assert _changed_blocks(start, end) == {"block_0", "block_2", "head"}
  _run(setup, "partial", partial_freeze_regex="")  # restore the default for other tests


def test_partial_rejects_k_out_of_range(setup):
  config, model, params, _ = setup
  config.transfer.partial_freeze_blocks = 3
  try:
    with pytest.raises(ValueError, match=r"must be in \[1, 2\]"):
      _build("partial", config, model, params)
  finally:
    config.transfer.partial_freeze_blocks = 1


def test_layerwise_multipliers_decay_towards_the_input(setup):
  config, model, params, _ = setup
  strategy = _build("layerwise", config, model, params)
  rules = dict(strategy.phases[0].rules)
  d = config.transfer.layer_decay
  assert rules["encoder/block_2/.*"] == pytest.approx(d)
  assert rules["encoder/block_0/.*"] == pytest.approx(d ** 3)
  assert rules["head/.*"] == 1.0


def test_unknown_strategy_lists_choices(setup):
  config, model, params, _ = setup
  with pytest.raises(ConfigError, match="unknown strategy 'probe_linear' .*did you mean .*linear_probe"):
    _build("probe_linear", config, model, params)


def test_ridge_fit_matches_sklearn():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(60, 7))
  y = rng.integers(0, 4, 60)
  w = probes.ridge_fit(x, y, 4, l2=3.0)
  ref = Ridge(alpha=3.0, fit_intercept=True).fit(x, 2.0 * np.eye(4)[y] - 1.0)
  np.testing.assert_allclose(w[:-1], ref.coef_.T, rtol=1e-6, atol=1e-8)
  np.testing.assert_allclose(w[-1], ref.intercept_, rtol=1e-6, atol=1e-8)


def test_probes_beat_chance_on_digit_pixels(digits):
  images, labels = digits
  f = images.reshape(len(images), -1)
  tr, va, te = (f[:300], labels[:300]), (f[300:400], labels[300:400]), (f[400:], labels[400:])
  ridge = probes.ridge_probe(tr, va, te, num_classes=10, l2_grid=(0.1, 1.0, 10.0))
  knn = probes.knn_probe(tr, va, te, k_grid=(1, 3, 5))
  # Chance is 10%; a least-squares classifier on raw 8x8 pixels gets ~0.75-0.8.
  assert ridge["test_accuracy"] > 0.6 and knn["test_accuracy"] > 0.8
  assert ridge["l2"] in (0.1, 1.0, 10.0) and knn["k"] in (1, 3, 5)


@pytest.mark.slow
def test_cells_log_parameter_counts_and_a_validation_curve(tmp_path):
  """Every phase records how many parameters it trains and freezes (by hand for the digits
  MLP 64-128-64-32 + a 10-way head), and every epoch its validation loss and accuracy; the
  last epoch's validation accuracy is the cell's, on the vmapped and the sequential path."""
  import json
  from aetl_jax import api
  from tests.conftest import digits_config
  config = digits_config("pretrain.epochs=2", "transfer.strategies=('partial','lp_ft')",
                         "transfer.budgets=(5,)", "transfer.seeds=2", "transfer.epochs=3",
                         "transfer.lp_epochs=2", "transfer.min_steps=0", "transfer.probe_steps=0")
  sizes = {"block_0": 64 * 128 + 128, "block_1": 128 * 64 + 64, "block_2": 64 * 32 + 32,
           "head": 32 * 10 + 10}
  total = sum(sizes.values())
  for vmapped in (True, False):
    out = api.run(api.load_config(config, [f"transfer.vmap_seeds={vmapped}"]),
                  tmp_path / str(vmapped), progress=False)
    rows = {(r["strategy"], r["seed"]): r for r in out["rows"]}
    partial = rows[("partial", 0)]["phases"][0]
    assert (partial["frozen_parameters"], partial["trainable_parameters"]) == (
        sizes["block_0"], total - sizes["block_0"])
    probe, finetune = rows[("lp_ft", 1)]["phases"]
    assert (probe["trainable_parameters"], probe["frozen_parameters"]) == (sizes["head"],
                                                                           total - sizes["head"])
    assert (finetune["trainable_parameters"], finetune["frozen_parameters"]) == (total, 0)
    histories = [json.loads(l) for l in (tmp_path / str(vmapped) / "metrics" /
                                         "finetune.jsonl").read_text().splitlines()]
    for h in histories:
      assert len(h["history"]) == (3 if h["strategy"] == "partial" else 5)
      assert all({"val_loss", "val_accuracy"} <= set(e) for e in h["history"])
      final = rows[(h["strategy"], h["seed"])]["val_accuracy"]
      assert h["history"][-1]["val_accuracy"] == pytest.approx(final, abs=1e-6)
