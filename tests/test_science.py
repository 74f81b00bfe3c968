"""Tests that guard the science: each would catch a small, plausible planted bug.

Every expected value here comes from an independent computation (hand values,
numpy, scipy), not from the code's own output.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aetl_jax.core.optim import learning_rate_schedule
from aetl_jax.core.rules import FROZEN, freeze_and_multipliers
from aetl_jax.engine.driver import run_phases, run_phases_vmapped
from aetl_jax.engine.guard import NonFiniteError
from aetl_jax.engine.phase import Optim, Phase
from aetl_jax.engine.runtime import make_runtime
from aetl_jax.engine.store import CheckpointStore
from aetl_jax.reporting.tables import paired_differences
from aetl_jax.strategies import StrategyContext, build_strategy
from tests.conftest import classifier_and_params, tiny_config, tree_equal

# ---------------------------------------------------------------------------
# Paired differences pair by (budget, seed).


def test_paired_differences_over_two_budgets_equal_hand_values():
  acc = {(10, "scratch", 0): 0.50, (10, "scratch", 1): 0.60, (10, "ft", 0): 0.70, (10, "ft", 1): 0.70,
         (20, "scratch", 0): 0.80, (20, "scratch", 1): 0.90, (20, "ft", 0): 0.85, (20, "ft", 1): 0.95}
  rows = [{"budget": b, "strategy": s, "seed": k, "test_accuracy": v} for (b, s, k), v in acc.items()]
  got = {d["budget"]: d for d in paired_differences(rows, baseline="scratch")}
  # budget 10: ft − scratch = +0.20, +0.10; budget 20: +0.05, +0.05 (by hand)
  assert got[10]["mean"] == pytest.approx(0.15) and got[10]["n"] == 2
  assert got[10]["std"] == pytest.approx(np.std([0.2, 0.1], ddof=1))
  assert got[20]["mean"] == pytest.approx(0.05) and got[20]["std"] == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------------------
# The NaN guard names the exact step, after checkpoints, on every path.


def _ramp_loss(threshold):
  """loss = −w until w exceeds ``threshold``, then NaN. Adam moves w by lr per step
  (constant gradient), so with lr 1 the NaN step is known by hand."""
  def loss(params, batches, rng):
    w = params["w"][0]
    return jnp.where(w > threshold, jnp.nan, -w), {}
  return loss


def _ramp_phase(name, epochs, threshold=6.5):
  return Phase(name, _ramp_loss(threshold), (("x", "data", 1),), epochs,
               Optim(1.0, schedule="constant"))


DATA = {"data": {"x": jnp.zeros((3, 1))}}  # 3 examples, batch 1: 3 steps per epoch


def test_nan_step_is_exact_in_a_second_phase_after_a_checkpoint(tmp_path):
  # Phase 'a': 1 epoch, steps 0-2, w: 0 → 3. Phase 'b' restarts its step count: w = 3 + s,
  # first NaN when 3 + s > 6.5, i.e. at phase-b step 4 = its 2nd epoch (global epoch 2), index 1.
  store = CheckpointStore(tmp_path / "ckpt", every=1)
  with pytest.raises(NonFiniteError, match=r"phase 'cell/b' at step 4 \(epoch 2\)"):
    run_phases([_ramp_phase("a", 1), _ramp_phase("b", 3)], {"w": jnp.zeros(1)}, DATA,
               jax.random.PRNGKey(0), runtime=make_runtime(), store=store, label="cell")
  from aetl_jax.engine import checkpoint
  assert checkpoint.finished_steps(tmp_path / "ckpt") == [1, 2]  # good epochs were saved
  tree = checkpoint.make_manager(tmp_path / "ckpt").restore(2)
  assert np.isfinite(np.asarray(tree["params"]["w"])).all()


def test_nan_step_is_exact_in_one_phase():
  # One phase: w = s; first NaN at step 7 = epoch 2 (steps 6, 7, 8), index 1.
  with pytest.raises(NonFiniteError, match=r"phase 'pretrain' at step 7 \(epoch 2\)"):
    run_phases([_ramp_phase("pretrain", 4)], {"w": jnp.zeros(1)}, DATA, jax.random.PRNGKey(0),
               runtime=make_runtime())


def test_nan_step_is_exact_on_the_vmapped_path():
  # Seed 1 starts at w = 2: NaN at step 5 (epoch 1, index 2); seed 0 at step 7.
  params = {"w": jnp.asarray([[0.0], [2.0]])}
  data = {"data": {"x": jnp.zeros((2, 3, 1))}}
  with pytest.raises(NonFiniteError, match=r"phase 'ramp \(seed 0\)' at step 7 \(epoch 2\)"):
    run_phases_vmapped([_ramp_phase("ramp", 4)], params, data, jnp.stack([jax.random.PRNGKey(0)] * 2),
                       runtime=make_runtime())
  params = {"w": jnp.asarray([[-5.0], [2.0]])}
  # the stream shared by the seeds (no seed axis), as a sweep's unlabelled pool; the cell's label
  with pytest.raises(NonFiniteError, match=r"phase 'cell/ramp \(seed 1\)' at step 5 \(epoch 1\)"):
    run_phases_vmapped([_ramp_phase("ramp", 4)], params, {"data": {"x": jnp.zeros((3, 1))}},
                       jnp.stack([jax.random.PRNGKey(0)] * 2), runtime=make_runtime(),
                       label="cell", shared=("data",))


# ---------------------------------------------------------------------------
# Every strategy freezes and re-weights exactly what it says, phase by phase.

CFG = dict(epochs=4, lp_epochs=2, ft_lr_mult=0.3, encoder_lr_mult=0.1, layer_decay=0.5,
           unfreeze_epochs=1, partial_freeze_blocks=1)
# (phase name, {block: multiplier or FROZEN}) with blocks block_0..block_2 and the head.
EXPECTED = {
    "scratch": [("train", dict(block_0=1, block_1=1, block_2=1, head=1))],
    "finetune": [("finetune", dict(block_0=1, block_1=1, block_2=1, head=1))],
    "linear_probe": [("probe", dict(block_0=FROZEN, block_1=FROZEN, block_2=FROZEN, head=1))],
    "partial": [("partial", dict(block_0=FROZEN, block_1=1, block_2=1, head=1))],
    "discriminative": [("discriminative", dict(block_0=0.1, block_1=0.1, block_2=0.1, head=1))],
    "layerwise": [("layerwise", dict(block_0=0.125, block_1=0.25, block_2=0.5, head=1))],
    "lp_ft": [("probe", dict(block_0=FROZEN, block_1=FROZEN, block_2=FROZEN, head=1)),
              ("finetune", dict(block_0=0.3, block_1=0.3, block_2=0.3, head=0.3))],
    "gradual_unfreeze": [
        ("unfreeze_0", dict(block_0=FROZEN, block_1=FROZEN, block_2=FROZEN, head=1)),
        ("unfreeze_1", dict(block_0=FROZEN, block_1=FROZEN, block_2=1, head=1)),
        ("unfreeze_2", dict(block_0=FROZEN, block_1=1, block_2=1, head=1)),
        ("unfreeze_3", dict(block_0=1, block_1=1, block_2=1, head=1))],
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_freeze_sets_and_multipliers_of_every_strategy_and_phase(name):
  config = tiny_config(*[f"transfer.{k}={v}" for k, v in CFG.items()])
  model, params = classifier_and_params(config)
  strategy = build_strategy(name, StrategyContext(name, config.transfer, model, params,
                                                  Optim.from_config(config.transfer)))
  assert [p.name for p in strategy.phases] == [n for n, _ in EXPECTED[name]]
  assert [p.epochs for p in strategy.phases] == (
      [2, 4] if name == "lp_ft" else [1] * 4 if name == "gradual_unfreeze" else [4])
  for phase, (_, want) in zip(strategy.phases, EXPECTED[name]):
    mask, mults = freeze_and_multipliers(params, phase.rules)
    for block in ("block_0", "block_1", "block_2", "head"):
      tree_mask = mask["head"] if block == "head" else mask["encoder"][block]
      tree_mult = mults["head"] if block == "head" else mults["encoder"][block]
      for m, v in zip(jax.tree.leaves(tree_mask), jax.tree.leaves(tree_mult)):
        if want[block] == FROZEN:
          assert not m, (name, phase.name, block)
        else:
          assert m and v == pytest.approx(want[block]), (name, phase.name, block, v)


def test_multipliers_reach_the_optimiser_step(digits):
  """One Adam step moves each leaf by lr × its multiplier (Adam's first step is ±lr)."""
  images, labels = digits
  config = tiny_config("transfer.encoder_lr_mult=0.1", "transfer.epochs=1",
                       "transfer.learning_rate=0.01", "transfer.schedule='constant'",
                       "transfer.batch_size=8")
  model, params = classifier_and_params(config)
  strategy = build_strategy("discriminative", StrategyContext(
      "discriminative", config.transfer, model, params, Optim.from_config(config.transfer)))
  data = {"target_labelled": {"image": jnp.asarray(images[:8]), "label": jnp.asarray(labels[:8])}}
  out, _ = run_phases(strategy.phases, params, data, jax.random.PRNGKey(0), runtime=make_runtime())
  step = lambda a, b: np.abs(np.asarray(a) - np.asarray(b))
  enc = step(out["encoder"]["block_1"]["kernel"], params["encoder"]["block_1"]["kernel"])
  head = step(out["head"]["kernel"], params["head"]["kernel"])
  moved_enc, moved_head = enc[enc > 0], head[head > 0]
  np.testing.assert_allclose(np.median(moved_enc), 0.01 * 0.1, rtol=0.05)
  np.testing.assert_allclose(np.median(moved_head), 0.01, rtol=0.05)


# ---------------------------------------------------------------------------
# The sweep: same labels across strategies, scratch is random, fine-tune starts pretrained.


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, digits):
  from aetl_jax.data.domains import build_transfer_data
  from aetl_jax.engine.runtime import runtime_from_config
  from aetl_jax.tasks.pretrain import checkpoint_dir, pretrain
  from aetl_jax.transfer.sweep import Sweep, SweepData
  config = tiny_config("transfer.budgets=(2,4)", "transfer.seeds=2",
                       "transfer.strategies=('scratch','finetune')")
  data = build_transfer_data(config.data)
  workdir = tmp_path_factory.mktemp("sweep")
  _, params, _ = pretrain(config, data.source_images, data.images[data.split.test][:50], workdir,
                          progress=False)
  s = Sweep(config, workdir, SweepData(data.images, data.labels, data.split, data.num_classes),
            checkpoint_dir(workdir), runtime_from_config(config, "transfer"))
  return s, params, data


@pytest.mark.slow
def test_cells_of_a_budget_and_seed_share_labels_across_strategies(sweep):
  s, _, data = sweep
  for budget in (2, 4):
    for seed in (0, 1):
      a, b = s.cell_inputs(budget, "scratch", seed), s.cell_inputs(budget, "finetune", seed)
      np.testing.assert_array_equal(a.splits["train"][0], b.splits["train"][0])
      np.testing.assert_array_equal(a.splits["val"][1], b.splits["val"][1])
      assert np.bincount(np.asarray(a.splits["train"][1]), minlength=10).tolist() == [budget] * 10
      pool = data.images[data.split.target_pool].reshape(len(data.split.target_pool), -1)
      rows = {r.tobytes() for r in pool}
      assert all(x.tobytes() in rows for x in np.asarray(a.splits["train"][0]).reshape(10 * budget, -1))
  other = s.cell_inputs(2, "scratch", 1)
  assert not np.array_equal(s.cell_inputs(2, "scratch", 0).splits["train"][0], other.splits["train"][0])


def test_scratch_starts_random_and_finetune_starts_pretrained(sweep):
  s, pretrained, _ = sweep
  scratch, ft = s.cell_inputs(2, "scratch", 0), s.cell_inputs(2, "finetune", 0)
  assert tree_equal(ft.params["encoder"], pretrained["encoder"])
  for block in pretrained["encoder"]:
    assert not np.allclose(scratch.params["encoder"][block]["kernel"],
                           pretrained["encoder"][block]["kernel"]), block
  # Same seed, same fresh head and same random init where scratch keeps it.
  assert tree_equal(scratch.params["head"], ft.params["head"])


# ---------------------------------------------------------------------------
# Schedules, against optax-free hand formulas.


def test_cosine_schedule_with_warmup_equals_the_formula():
  lr, total, warm = 0.1, 100, 10
  f = learning_rate_schedule(lr, total, schedule="cosine", warmup_steps=warm)
  for t in (0, 5, 10, 55, 99, 100):
    want = lr * t / warm if t < warm else 0.5 * lr * (1 + math.cos(math.pi * (t - warm) / (total - warm)))
    assert float(f(t)) == pytest.approx(want, rel=1e-5, abs=1e-8), t
  g = learning_rate_schedule(lr, total, schedule="constant", warmup_steps=warm)
  assert [float(g(t)) for t in (0, 5, 10, 50)] == pytest.approx([0.0, 0.05, 0.1, 0.1])
