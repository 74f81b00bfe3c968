"""The one engine: phases over named streams, open registries, the layer contract."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import pytest

from aetl_jax.core.config import ConfigError
from aetl_jax.core.rules import FROZEN
from aetl_jax.engine.driver import run_phases
from aetl_jax.engine.phase import Optim, Phase
from aetl_jax.engine.runtime import make_runtime
from aetl_jax.models.registry import build_autoencoder, build_classifier
from aetl_jax.objectives.contractive import jacobian_penalty
from aetl_jax.objectives.registry import OBJECTIVES, make_objective
from aetl_jax.strategies import STRATEGIES, StrategyContext, build_strategy
from aetl_jax.transfer.cell import train_strategy
from tests.conftest import ROOT, classifier_and_params, digits_config, normal, tiny_config, tree_equal


def test_layers_have_no_upward_imports():
  from pathlib import Path
  tool = Path(sys.executable).parent / "lint-imports"
  out = subprocess.run([str(tool), "--config", str(ROOT / "pyproject.toml")],
                       capture_output=True, text=True, cwd=ROOT)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
  assert "1 kept, 0 broken" in out.stdout


@pytest.mark.slow
def test_joint_objective_reads_two_streams_and_logs_each_term(digits):
  """One step: cross-entropy on a few labels + λ·reconstruction of many unlabelled images."""
  images, labels = digits
  config = tiny_config("transfer.epochs=3", "transfer.batch_size=16")
  model = build_classifier(config.model, 10, decoder_shape=(8, 8, 1))
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), method="init_all")["params"]
  assert set(params) == {"encoder", "decoder", "head"}

  class O(dict):
    __getattr__ = dict.__getitem__

  loss = OBJECTIVES.get("joint").fn(model, O(loss="bce", reconstruction_weight=0.5))
  phase = Phase("joint", loss, (("labelled", "target_labelled", 16), ("images", "target_unlabelled", 64)),
                3, Optim(1e-2))
  data = {"target_labelled": {"image": jnp.asarray(images[:40]), "label": jnp.asarray(labels[:40])},
          "target_unlabelled": {"image": jnp.asarray(images[40:600])}}
  out, rows = run_phases([phase], params, data, jax.random.PRNGKey(1), runtime=make_runtime())
  assert len(rows) == 3
  for r in rows:  # each term logged, and the loss is their weighted sum (epoch means)
    assert {"classification", "reconstruction", "accuracy", "loss"} <= set(r)
    assert r["loss"] == pytest.approx(r["classification"] + 0.5 * r["reconstruction"], rel=1e-5)
  assert rows[-1]["loss"] < rows[0]["loss"]
  # Every subtree trained (the decoder through the unlabelled term only).
  for k in ("encoder", "decoder", "head"):
    assert not tree_equal(out[k], params[k]), k


def test_a_phase_reading_a_missing_stream_fails_before_compiling(digits):
  config = tiny_config()
  model, params = classifier_and_params(config)
  phase = Phase("x", lambda p, b, r: (0.0, {}), (("labelled", "target_labelled", 8),), 1, Optim(1e-3))
  with pytest.raises(ValueError, match=r"phase 'x' reads stream\(s\) target_labelled.*provides: source"):
    run_phases([phase], params, {"source": {"image": jnp.zeros((4, 8, 8, 1))}},
               jax.random.PRNGKey(0), runtime=make_runtime())


@pytest.mark.slow
def test_joint_finetune_strategy_trains_through_the_sweep(digits):
  images, labels = digits
  config = tiny_config("transfer.epochs=2", "transfer.batch_size=16")
  model = build_classifier(config.model, 10, decoder_shape=(8, 8, 1))
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), method="init_all")["params"]
  split = lambda a, b: (jnp.asarray(images[a:b]), jnp.asarray(labels[a:b]))
  splits = {"train": split(0, 50), "val": split(50, 60), "test": split(100, 300)}
  out, result, history = train_strategy("joint_finetune", config.transfer, model, params, splits,
                                        jax.random.PRNGKey(2))
  assert [r["phase"] for r in history] == ["joint", "joint"]
  assert "reconstruction" in history[0] and result["test_accuracy"] > 0.1
  assert not tree_equal(out["decoder"], params["decoder"])


@pytest.mark.slow
def test_bitfit_trains_only_biases_and_the_head(digits):
  images, labels = digits
  config = tiny_config("transfer.epochs=3", "transfer.learning_rate=1e-2")
  model, params = classifier_and_params(config)
  split = lambda a, b: (jnp.asarray(images[a:b]), jnp.asarray(labels[a:b]))
  splits = {"train": split(0, 100), "val": split(100, 120), "test": split(200, 400)}
  out, _, _ = train_strategy("bitfit", config.transfer, model, params, splits, jax.random.PRNGKey(0))
  for block in params["encoder"]:
    assert tree_equal(out["encoder"][block]["kernel"], params["encoder"][block]["kernel"]), block
    assert not tree_equal(out["encoder"][block]["bias"], params["encoder"][block]["bias"]), block
  assert not tree_equal(out["head"], params["head"])


def test_contractive_penalty_equals_the_jacobian_norm_by_hand():
  w = normal(0, (5, 3))
  x = normal(1, (4, 5))
  encode = lambda v: jnp.tanh(v @ w)
  # d tanh(xW)/dx = diag(1 - tanh²) Wᵀ; its squared Frobenius norm by hand:
  h = np.tanh(np.asarray(x) @ np.asarray(w))
  expected = np.mean([np.sum(((1 - hi ** 2)[:, None] * np.asarray(w).T) ** 2) for hi in h])
  assert float(jacobian_penalty(encode, x)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow
def test_contractive_objective_trains_and_is_its_own_config_key(digits):
  from tests.conftest import digits_config
  config = digits_config("objective.name='contractive'", "objective.contractive_weight=0.5")
  assert config.objective.contractive_weight == 0.5 and "corruption" not in config.objective
  model = build_autoencoder(config.model, (8, 8, 1))
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), method="reconstruct")["params"]
  loss = make_objective(model, config.objective)
  value, aux = loss(params, {"images": {"image": jnp.asarray(digits[0][:16])}}, jax.random.PRNGKey(0))
  assert float(value) == pytest.approx(float(aux["reconstruction"] + 0.5 * aux["contractive"]), rel=1e-5)
  assert float(aux["contractive"]) > 0


def test_registries_name_close_matches():
  with pytest.raises(ConfigError, match=r"unknown strategy 'bitfitt' \(did you mean bitfit"):
    STRATEGIES.get("bitfitt")
  with pytest.raises(ConfigError, match=r"objective\.name.*unknown objective 'contractve'.*contractive"):
    OBJECTIVES.get("contractve")


def test_a_strategy_registered_in_a_users_module_runs_unchanged(digits):
  """Adding a strategy edits nothing central: register a function, name it in the config."""
  from aetl_jax.core.rules import FROZEN
  from aetl_jax.strategies.registry import Strategy

  @STRATEGIES.register("test_head_and_last_block")
  def mine(ctx):
    last = ctx.blocks()[-1]
    rules = ((f"encoder/{last}/.*", 1.0), ("head/.*", 1.0), (".*", FROZEN))
    return Strategy(ctx.name, "pretrained", (ctx.phase("mine", rules, ctx.cfg.epochs),))

  images, labels = digits
  config = tiny_config("transfer.epochs=2")
  model, params = classifier_and_params(config)
  split = lambda a, b: (jnp.asarray(images[a:b]), jnp.asarray(labels[a:b]))
  splits = {"train": split(0, 60), "val": split(60, 70), "test": split(100, 200)}
  out, _, _ = train_strategy("test_head_and_last_block", config.transfer, model, params, splits,
                             jax.random.PRNGKey(0))
  assert tree_equal(out["encoder"]["block_0"], params["encoder"]["block_0"])
  assert not tree_equal(out["encoder"]["block_2"], params["encoder"]["block_2"])


def test_rules_strategy_from_the_command_line_and_weight_decay_rules(digits):
  """transfer.rules is a strategy of its own; transfer.wd_rules re-weights decay per leaf."""
  images, labels = digits
  config = tiny_config("transfer.strategies=('rules',)", "transfer.epochs=2",
                       "transfer.rules=(('encoder/block_0/.*','frozen'),('encoder/.*',0.1),('.*',1.0))",
                       "transfer.weight_decay=0.5", "transfer.wd_rules=(('head/.*', 0.0),)")
  model, params = classifier_and_params(config)
  strategy = build_strategy("rules", StrategyContext("rules", config.transfer, model, params,
                                                     Optim.from_config(config.transfer)))
  (phase,) = strategy.phases
  assert phase.rules[0] == ("encoder/block_0/.*", "frozen") and phase.wd_rules == (("head/.*", 0.0),)
  split = lambda a, b: (jnp.asarray(images[a:b]), jnp.asarray(labels[a:b]))
  splits = {"train": split(0, 60), "val": split(60, 70), "test": split(100, 200)}
  out, _, _ = train_strategy("rules", config.transfer, model, params, splits, jax.random.PRNGKey(0))
  assert tree_equal(out["encoder"]["block_0"], params["encoder"]["block_0"])
  assert not tree_equal(out["encoder"]["block_1"], params["encoder"]["block_1"])


def test_weight_decay_multipliers_reach_the_update():
  """Zero loss: the only update is decay, lr × wd × multiplier × param, per leaf (by hand)."""
  params = {"a": jnp.ones(3), "b": jnp.ones(3)}
  phase = Phase("decay", lambda p, b, r: (0.0 * jnp.sum(p["a"]) + 0.0 * jnp.sum(p["b"]), {}),
                (("x", "data", 1),), 1,
                Optim(0.1, optimizer="sgd", weight_decay=0.5, schedule="constant"),
                wd_rules=(("b", 0.0),))
  out, _ = run_phases([phase], params, {"data": {"x": jnp.zeros((1, 1))}}, jax.random.PRNGKey(0),
                      runtime=make_runtime())
  np.testing.assert_allclose(out["a"], 1 - 0.1 * 0.5, rtol=1e-6)  # decayed
  np.testing.assert_allclose(out["b"], 1.0)  # multiplier 0: not decayed


def test_a_checkpoint_past_the_phases_is_one_error_naming_both_epoch_counts(tmp_path):
  """A rerun into a workdir whose checkpoint is further on than the phases now asked for (6
  epochs saved; then phases of 1, 2 and 1 epochs, then none) stops, naming both counts."""
  from aetl_jax.engine.store import CheckpointStore
  loss = lambda p, b, r: (jnp.sum(p["w"] ** 2), {})
  optim = Optim(0.1, optimizer="sgd", schedule="constant")
  phase = lambda name, epochs: Phase(name, loss, (("x", "data", 1),), epochs, optim)
  run = lambda phases: run_phases(phases, {"w": jnp.ones(2)}, {"data": {"x": jnp.zeros((1, 1))}},
                                  jax.random.PRNGKey(0), runtime=make_runtime(),
                                  store=CheckpointStore(tmp_path / "ckpt", every=1))
  run([phase("a", 6)])
  for phases, total in (([phase("a", 1), phase("b", 2), phase("c", 1)], 4), ([], 0)):
    with pytest.raises(ValueError, match=rf"checkpoint at epoch 6 in \S*ckpt is past the {total} "
                                         r"epochs of these phases$"):
      run(phases)


@pytest.mark.slow
def test_tensorboard_events_hold_every_term_and_the_learning_rate(tmp_path, digits):
  from tensorboardX.event_file_writer import EventFileWriter  # noqa: F401 - the writer used
  from aetl_jax.tasks.pretrain import pretrain
  config = tiny_config("pretrain.epochs=3", "pretrain.eval_every=3", "objective.name='sparse'")
  pretrain(config, digits[0][:128], digits[0][128:192], tmp_path, progress=False)
  events = list((tmp_path / "tensorboard" / "pretrain").glob("events.out.tfevents.*"))
  assert len(events) == 1
  tags = set()
  from tensorboardX.proto import event_pb2
  import struct
  data = events[0].read_bytes()
  i = 0
  while i < len(data):
    (n,) = struct.unpack("<Q", data[i:i + 8])
    ev = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
    tags |= {v.tag for v in ev.summary.value}
    i += 12 + n + 4
  assert {"train_loss", "train_reconstruction", "train_sparsity", "train_learning_rate",
          "eval_psnr", "reconstructions"} <= tags, tags


@pytest.mark.slow
def test_a_short_stream_beside_a_long_one_costs_one_vmapped_draw_not_a_sort_per_cycle():
  """10 labels beside 60,000 unlabelled images: the labelled order is ~1,900 permutations;
  the program must hold a constant number of sorts, not one per permutation (the old Python
  loop made the compile of such a phase take minutes)."""
  from aetl_jax.engine.loop import _plan
  hlo = jax.jit(lambda r: _plan(r, [60000, 10], [128, 32])).lower(jax.random.PRNGKey(0)).as_text()
  assert hlo.count("sort") < 10
  idx, _ = _plan(jax.random.PRNGKey(0), [60000, 10], [128, 32])
  counts = np.bincount(np.asarray(idx[1]).ravel(), minlength=10)
  assert counts.max() - counts.min() <= 1 and idx[1].shape == (468, 32)  # cycled evenly


def _compile_counter() -> list:
  """A list that grows by one entry for every XLA backend compilation from now on."""
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, duration, **kw: compiles.append(event)
      if event == "/jax/core/compile/backend_compile_duration" else None)
  return compiles


def test_the_curve_is_read_at_most_points_times_per_phase_and_at_its_last_epoch():
  from aetl_jax.engine.driver import curve_due
  traced, every = jax.jit(curve_due), np.arange(40, dtype=np.int32)  # one program
  for n in range(1, 40):
    for points in range(0, 12):
      due = [bool(curve_due(e, n, points)) for e in range(n)]
      assert due == np.asarray(traced(every, np.int32(n), np.int32(points)))[:n].tolist()
      assert sum(due) == (n if points == 0 else min(n, points)) and due[-1]
      if 0 < points < n:  # evenly spread: gaps differ by at most one epoch
        at = np.flatnonzero(due)
        gaps = np.diff(np.concatenate([[-1], at]))
        assert gaps.max() - gaps.min() <= 1


@pytest.mark.slow
def test_the_validation_curve_has_the_same_rows_sequential_and_vmapped_and_its_points_are_values():
  """``epoch_metrics`` runs after ``curve_points`` epochs of each phase (the last always): the
  sequential and the vmapped path give the same rows (a padded phase whose epochs follow its
  budget, ``min_steps``, included), each value the one an every-epoch curve reads at that
  epoch, and another number of points compiles nothing on the vmapped path."""
  from aetl_jax.engine.driver import curve_due, run_phases_vmapped
  compiles = _compile_counter()

  def loss(p, b, rng):
    return jnp.mean((b["x"]["image"] @ p["w"] - 1.0) ** 2), {}

  reads = []

  def metrics(p, d):
    jax.debug.callback(lambda: reads.append(1))  # runs where the curve is computed
    return {"val": jnp.sum(p["w"] * d)}

  params = {"w": jnp.zeros((3, 2))}
  x = jnp.asarray(np.random.default_rng(0).random((12, 3)), jnp.float32)
  optim = Optim(1e-2, schedule="constant")
  phases = [Phase("a", loss, (("x", "s", 4),), 7, optim),
            Phase("b", loss, (("x", "s", 4),), 1, optim, min_steps=20)]  # 7 epochs of 3 steps
  runtime, rng = make_runtime(runner="scan"), jax.random.PRNGKey(0)
  kw = dict(runtime=runtime, epoch_metrics=metrics, pad=("s",))
  _, every = run_phases(phases, params, {"s": {"image": x}}, rng, epoch_data=jnp.ones(()), **kw)
  _, rows = run_phases(phases, params, {"s": {"image": x}}, rng, epoch_data=jnp.ones(()),
                       curve_points=3, **kw)
  two = lambda t: jax.tree.map(lambda a: jnp.stack([a, a]), t)
  run_phases_vmapped(phases, two(params), {"s": {"image": two(x)}}, two(rng),
                     epoch_data=jnp.ones((2,)), curve_points=5, **kw)
  before, read = len(compiles), len(reads)
  _, vrows = run_phases_vmapped(phases, two(params), {"s": {"image": two(x)}}, two(rng),
                                epoch_data=jnp.ones((2,)), curve_points=3, **kw)
  assert len(compiles) == before  # the points are a value of the compiled cell
  assert len(reads) - read == 6  # computed only where read: 3 points in each of 2 phases
  assert [r["epoch"] for r in rows] == list(range(14)) and len(every) == 14
  start = {"a": 0, "b": 7}
  for r, v, e in zip(rows, vrows[0], every):
    due = bool(curve_due(r["epoch"] - start[r["phase"]], 7, 3))
    assert ("val" in r) == ("val" in v) == due
    if due:
      assert r["val"] == pytest.approx(e["val"], abs=1e-6)
      assert v["val"] == pytest.approx(e["val"], abs=1e-6)
  assert "val" in rows[6] and "val" in rows[13] and sum("val" in r for r in rows) == 6


@pytest.mark.slow
def test_phases_that_differ_only_in_their_epochs_share_the_vmapped_cell():
  """The vmapped cell scans a phase's epochs rounded up to their bucket and runs its own (a
  value): 5 and 7 epochs share one program, and each gives the sequential path's parameters
  and rows."""
  import dataclasses
  from aetl_jax.engine.driver import run_phases_vmapped
  compiles = _compile_counter()

  def loss(p, b, rng):
    return jnp.mean((b["x"]["image"] @ p["w"] - 1.0) ** 2), {}

  params = {"w": jnp.zeros((3, 2))}
  x = jnp.asarray(np.random.default_rng(0).random((12, 3)), jnp.float32)
  two = lambda t: jax.tree.map(lambda a: jnp.stack([a, a]), t)
  runtime, rng = make_runtime(runner="scan"), jax.random.PRNGKey(0)
  phase = Phase("p", loss, (("x", "s", 4),), 5, Optim(1e-2, schedule="cosine"))
  run_phases_vmapped([phase], two(params), {"s": {"image": two(x)}}, two(rng), runtime=runtime)
  before = len(compiles)
  longer = dataclasses.replace(phase, epochs=7)
  vout, vrows = run_phases_vmapped([longer], two(params), {"s": {"image": two(x)}}, two(rng),
                                   runtime=runtime)
  assert len(compiles) == before  # nothing compiled for 7 epochs after 5
  out, rows = run_phases([longer], params, {"s": {"image": x}}, rng, runtime=runtime)
  np.testing.assert_allclose(vout["w"][1], out["w"], rtol=1e-5, atol=1e-7)
  assert len(vrows[1]) == len(rows) == 7
  for a, b in zip(vrows[1], rows):
    assert a.keys() == b.keys() and a["loss"] == pytest.approx(b["loss"], rel=1e-5)


@pytest.mark.slow
def test_short_epochs_run_many_to_a_call_with_the_rows_of_one_at_a_time(tmp_path, monkeypatch):
  """Epochs of a few steps run many to a call (no host round trip per epoch): the parameters,
  rows, validation curve, evaluations and checkpoints are those of one epoch to a call, and a
  run stopped inside a phase resumes from its last checkpoint to the same end."""
  from aetl_jax.engine import driver
  from aetl_jax.engine.checkpoint import finished_steps
  from aetl_jax.engine.store import CheckpointStore

  def loss(p, b, rng):
    noise = 0.01 * jax.random.normal(rng, ())
    return jnp.mean((b["x"]["image"] @ p["w"] - 1.0 + noise) ** 2), {}

  params = {"w": jnp.zeros((3, 2))}
  data = {"s": {"image": jnp.asarray(np.random.default_rng(0).random((12, 3)), jnp.float32)}}
  phases = [Phase("a", loss, (("x", "s", 4),), 20, Optim(1e-2, schedule="cosine")),
            Phase("b", loss, (("x", "s", 4),), 7, Optim(3e-3, schedule="constant"))]

  def run(directory, on_epoch=None):
    evaluated = []
    out = run_phases(phases, params, data, jax.random.PRNGKey(0), runtime=make_runtime(runner="scan"),
                     store=CheckpointStore(directory, every=5, keep=None), eval_every=4,
                     evaluate=lambda p, e: evaluated.append(e) or {"w": float(p["w"].sum())},
                     epoch_metrics=lambda p, d: {"val": jnp.sum(p["w"]) * d},
                     epoch_data=jnp.float32(2), curve_points=6, on_epoch=on_epoch)
    return out, evaluated

  calls, original = [], driver._epoch
  monkeypatch.setattr(driver, "_epoch", lambda *a, **k: calls.append(1) or original(*a, **k))
  (chunked, rows), evaluated = run(tmp_path / "chunked")
  assert not calls  # no epoch ran alone
  monkeypatch.setattr(driver, "_CHUNK_STEPS", 1)
  (single, single_rows), single_evaluated = run(tmp_path / "single")
  assert len(calls) == 27
  np.testing.assert_allclose(chunked["w"], single["w"], rtol=1e-6, atol=1e-7)
  assert evaluated == single_evaluated == [3, 7, 11, 15, 19, 23, 26]
  assert finished_steps(tmp_path / "chunked") == finished_steps(tmp_path / "single") == [
      5, 10, 15, 20, 25, 27]
  assert [r.keys() for r in rows] == [r.keys() for r in single_rows]
  for a, b in zip(rows, single_rows):
    assert (a.pop("phase"), a.pop("epoch")) == (b.pop("phase"), b.pop("epoch"))
    assert a == pytest.approx(b, rel=1e-5, abs=1e-7)
  assert sum("val" in r for r in rows) == 6 + 6
  monkeypatch.undo()

  def stop(row):
    if row["epoch"] == 12:
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    run(tmp_path / "stopped", on_epoch=stop)
  assert finished_steps(tmp_path / "stopped") == [5, 10]
  (resumed, resumed_rows), _ = run(tmp_path / "stopped")
  np.testing.assert_allclose(resumed["w"], chunked["w"], rtol=1e-6, atol=1e-7)
  assert [r["epoch"] for r in resumed_rows] == list(range(10, 27))


def _second_optimiser_run(first, second, *, init: float):
  """A least-squares phase trained with optimiser settings ``first``, then ``second``, on the
  sequential and the vmapped (2 seeds) path: (sequential (params, rows) of each, the vmapped
  params of the second, compilations the second caused)."""
  import dataclasses
  from aetl_jax.engine.driver import run_phases, run_phases_vmapped
  from aetl_jax.engine.phase import Phase
  from aetl_jax.engine.runtime import make_runtime
  compiles = _compile_counter()

  def loss(p, b, rng):
    return jnp.mean((b["x"]["image"] @ p["w"] - 1.0) ** 2), {}

  params = {"w": jnp.full((3, 2), init)}
  data = {"s": {"image": jnp.asarray(np.random.default_rng(0).random((16, 3)), jnp.float32)}}
  phase = Phase("p", loss, (("x", "s", 4),), 2, first)
  runtime = make_runtime(runner="scan")
  stacked = {"w": jnp.full((2, 3, 2), init)}
  data2 = {"s": {"image": jnp.stack([data["s"]["image"]] * 2)}}
  rngs = jnp.stack([jax.random.PRNGKey(0)] * 2)
  one = run_phases([phase], params, data, jax.random.PRNGKey(0), runtime=runtime)
  run_phases_vmapped([phase], stacked, data2, rngs, runtime=runtime)
  before = len(compiles)
  phase = dataclasses.replace(phase, optim=second)
  two = run_phases([phase], params, data, jax.random.PRNGKey(0), runtime=runtime)
  vb, _ = run_phases_vmapped([phase], stacked, data2, rngs, runtime=runtime)
  return one, two, vb, len(compiles) - before


@pytest.mark.slow
def test_phases_that_differ_only_in_learning_rate_share_their_compiled_programs():
  """The learning rate is a value in the optimiser state, not a constant: a second phase
  with another rate trains with the first one's programs (no compilation), on both the
  sequential and the vmapped path, and its rate takes effect."""
  from aetl_jax.engine.phase import Optim
  (a, _), (b, rows), vb, compiled = _second_optimiser_run(Optim(1e-3, schedule="cosine"),
                                                         Optim(1e-1, schedule="cosine"), init=0.0)
  assert compiled == 0  # nothing compiled for the second learning rate
  assert float(jnp.abs(b["w"]).sum()) > 10 * float(jnp.abs(a["w"]).sum())
  np.testing.assert_allclose(vb["w"][0], b["w"], rtol=1e-5)
  assert rows[0]["learning_rate"] == pytest.approx(0.1 * (1 + np.cos(np.pi * 4 / 8)) / 2)


@pytest.mark.slow
def test_phases_that_differ_only_in_weight_decay_share_their_compiled_programs():
  """A non-zero weight decay is a value in the optimiser state too: a second decay trains
  with the first one's programs, sequential and vmapped, and takes effect (it pulls the
  weights towards 0 harder)."""
  from aetl_jax.engine.phase import Optim
  (a, _), (b, _), vb, compiled = _second_optimiser_run(
      Optim(1e-2, weight_decay=1e-4, schedule="constant"),
      Optim(1e-2, weight_decay=5.0, schedule="constant"), init=1.0)
  assert compiled == 0  # nothing compiled for the second decay
  assert float(jnp.abs(b["w"]).sum()) < 0.9 * float(jnp.abs(a["w"]).sum())
  np.testing.assert_allclose(vb["w"][0], b["w"], rtol=1e-5)


@pytest.mark.slow
def test_phases_that_differ_only_in_rule_multipliers_share_their_compiled_programs():
  """The rules' learning-rate and weight-decay multipliers are values in the optimiser state:
  a phase with other multipliers trains with the first one's programs (sequential and
  vmapped), and they act as before: a rule's multiplier m at learning rate r is the learning
  rate m·r for its leaves (its decoupled decay included), a weight-decay multiplier m at decay
  d the decay m·d."""
  import dataclasses
  from aetl_jax.engine.driver import run_phases_vmapped
  compiles = _compile_counter()

  def loss(p, b, rng):
    return jnp.mean((b["x"]["image"] @ p["w"] + p["b"] - 1.0) ** 2), {}

  params = {"b": jnp.zeros((2,)), "w": jnp.full((3, 2), 0.5)}
  data = {"s": {"image": jnp.asarray(np.random.default_rng(0).random((16, 3)), jnp.float32)}}
  stacked = jax.tree.map(lambda a: jnp.stack([a, a]), params)
  data2 = jax.tree.map(lambda a: jnp.stack([a, a]), data)
  runtime, rng = make_runtime(runner="scan"), jax.random.PRNGKey(0)
  rngs = jnp.stack([rng, rng])
  optim = Optim(1e-2, weight_decay=0.1, schedule="constant")
  first = Phase("p", loss, (("x", "s", 4),), 2, optim, rules=(("w", 0.1), ("b", 1.0)),
                wd_rules=(("w", 0.5),))
  run_phases([first], params, data, rng, runtime=runtime)
  run_phases_vmapped([first], stacked, data2, rngs, runtime=runtime)
  before = len(compiles)
  second = dataclasses.replace(first, rules=(("w", 0.3), ("b", 1.0)), wd_rules=(("w", 2.0),))
  out, _ = run_phases([second], params, data, rng, runtime=runtime)
  vout, _ = run_phases_vmapped([second], stacked, data2, rngs, runtime=runtime)
  assert len(compiles) == before  # nothing compiled for the second multipliers
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a[0], b, rtol=1e-5, atol=1e-7), vout, out)
  # the same as a rate and a decay given directly: w at 0.3 × 1e-2 with decay 2 × 0.1 (the
  # multiplier scales the whole update, decoupled decay included), compared over one step
  # (b frozen there, so one full-batch step)
  one = lambda ph: dataclasses.replace(ph, epochs=1, feed=(("x", "s", 16),))
  w_alone = Phase("w", loss, (("x", "s", 16),), 1,
                  Optim(3e-3, weight_decay=0.2, schedule="constant"), rules=(("w", 1.0), ("b", FROZEN)))
  a, _ = run_phases([one(second)], params, data, rng, runtime=runtime)
  b, _ = run_phases([w_alone], params, data, rng, runtime=runtime)
  assert not np.allclose(a["w"], params["w"])
  np.testing.assert_allclose(a["w"], b["w"], rtol=1e-6, atol=1e-8)


def _sparse_autoencoder():
  """A small MLP autoencoder, its parameters and digits images, for the sparse objective."""
  config = digits_config("objective.name='sparse'", "objective.sparsity='l1'",
                         "model.widths=(32,)", "model.code_dim=8")
  x = jnp.asarray(np.random.default_rng(0).random((32, 8, 8, 1)), jnp.float32)
  model = build_autoencoder(config.model, x.shape[1:], "autoencoder")
  params = model.init(jax.random.PRNGKey(0), x[:1], method="reconstruct")["params"]
  return config, model, params, {"source": {"image": x}}


@pytest.mark.slow
def test_an_objectives_weights_are_values_of_the_compiled_step_not_constants(tmp_path):
  """Keys declared ``Key(value=True)`` (here the sparse objective's ``sparsity_weight``)
  reach the loss as arguments: a phase with another weight trains with the first one's
  programs (sequential and vmapped), gives exactly what the loss with that weight compiled
  in gives, takes effect (a larger weight, smaller codes) and resumes from its checkpoint
  (the values are not in it: they come from the phase)."""
  from aetl_jax.engine.driver import run_phases_vmapped
  from aetl_jax.engine.store import CheckpointStore
  from aetl_jax.objectives.registry import ValuedLoss, make_loss
  compiles = _compile_counter()
  config, model, params, data = _sparse_autoencoder()
  runtime, rng = make_runtime(runner="scan"), jax.random.PRNGKey(1)

  def phase(weight, epochs=2):
    cfg = {**config.objective.to_dict(), "sparsity_weight": weight}
    loss, values = make_loss("sparse", model, cfg)
    assert isinstance(loss, ValuedLoss) and values == (("sparsity_weight", weight),)
    return Phase("p", loss, (("images", "source", 8),), epochs, Optim(3e-3, schedule="constant"), values=values)

  def constant(weight):
    cfg = ml_collections.ConfigDict({**config.objective.to_dict(), "sparsity_weight": weight})
    return Phase("p", make_objective(model, cfg), (("images", "source", 8),), 2, Optim(3e-3, schedule="constant"))

  stacked = jax.tree.map(lambda a: jnp.stack([a, a]), params)
  data2 = jax.tree.map(lambda a: jnp.stack([a, a]), data)
  rngs = jnp.stack([rng, rng])
  small, _ = run_phases([phase(1e-3)], params, data, rng, runtime=runtime)
  run_phases_vmapped([phase(1e-3)], stacked, data2, rngs, runtime=runtime)
  before = len(compiles)
  large, _ = run_phases([phase(2.0)], params, data, rng, runtime=runtime)
  vlarge, _ = run_phases_vmapped([phase(2.0)], stacked, data2, rngs, runtime=runtime)
  assert len(compiles) == before  # nothing compiled for the second weight
  same, _ = run_phases([constant(2.0)], params, data, rng, runtime=runtime)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), large, same)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a[0], b, rtol=1e-5, atol=1e-6),
               vlarge, large)
  codes = lambda p: float(jnp.abs(model.apply({"params": p}, data["source"]["image"],
                                              method="encode")).mean())
  assert codes(large) < 0.8 * codes(small)
  store = lambda: CheckpointStore(tmp_path / "ckpt", every=1)
  run_phases([phase(2.0, epochs=1)], params, data, rng, runtime=runtime, store=store())
  resumed, rows = run_phases([phase(2.0)], params, data, rng, runtime=runtime, store=store())
  assert [r["epoch"] for r in rows] == [1]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), resumed, large)


def test_strategies_that_differ_only_in_an_objective_weight_share_their_compile_key():
  """A sweep over transfer.adaptation_weight (or pseudo_label's weight) builds phases equal but
  for their values: one set of compiled programs for every point."""
  from aetl_jax.engine.phase import Optim, compile_key
  config = tiny_config()
  model, params = classifier_and_params(config)

  def phases(name, weight):
    cfg = ml_collections.ConfigDict(config.transfer.to_dict())
    cfg.adaptation_weight = weight
    ctx = StrategyContext(name, cfg, model, params, Optim(1e-3), budget=3)
    return build_strategy(name, ctx).phases

  for name in ("coral", "mmd", "dann"):
    (a,), (b,) = phases(name, 0.5), phases(name, 2.0)
    assert dict(a.values)["weight"] == 0.5 and dict(b.values)["weight"] == 2.0
    assert a != b and compile_key(a) == compile_key(b)


def test_linear_probes_that_differ_only_in_their_l2_share_their_compile_key():
  """The probe's L2 (1 / (C n)) is a value of its step: probes with another probe_c (or
  another budget of the same labelled-set size) share their programs, cached features or
  not, and the value is the one scikit-learn's C gives."""
  from aetl_jax.engine.phase import Optim, compile_key
  config = tiny_config()
  model, params = classifier_and_params(config)

  def phase(c, cache):
    cfg = ml_collections.ConfigDict(config.transfer.to_dict())
    cfg.probe_c = c
    ctx = StrategyContext("linear_probe", cfg, model, params, Optim(1e-3), cache, budget=3)
    return build_strategy("linear_probe", ctx).phases[0]

  for cache in (True, False):
    a, b = phase(1.0, cache), phase(4.0, cache)
    assert dict(a.values)["probe_l2"] == pytest.approx(1 / 30)
    assert dict(b.values)["probe_l2"] == pytest.approx(1 / 120)
    assert a != b and compile_key(a) == compile_key(b)


def test_every_declared_value_key_is_a_number_of_a_registered_objective():
  """``value=True`` is declared on numbers only (a string or a tuple cannot be an argument of
  the compiled step), and every objective's weights are values."""
  from aetl_jax.objectives.registry import OBJECTIVES
  declared = {(name, k) for name in OBJECTIVES.names()
              for k, key in OBJECTIVES.get(name).keys.items() if key.value}
  for name, k in declared:
    default = OBJECTIVES.get(name).keys[k].default
    assert isinstance(default, float), (name, k, default)
  weights = {(name, k) for name in OBJECTIVES.names() for k in OBJECTIVES.get(name).keys
             if k == "weight" or k.endswith("_weight") or k == "beta"}
  assert weights <= declared, weights - declared


def test_a_phase_without_decay_keeps_the_optimiser_state_its_checkpoints_were_written_in():
  """Zero decays are neither injected nor in the chain: the state of a phase without decay is
  the one 0.3 wrote (the learning rate alone injected around the bare optimiser) but for the
  schedule's length (injected since 0.6; ``engine.compat`` reads the earlier layouts); a
  non-zero decay adds its value and its term."""
  import optax
  from aetl_jax.core.optim import make_optimizer
  from aetl_jax.engine.compat import LENGTH, learning_rate_only
  from aetl_jax.engine.phase import Optim, Phase, build_program, tree_spec
  from aetl_jax.engine.runtime import make_runtime

  params = {"w": jnp.zeros((3, 2))}
  state = lambda optim: build_program(
      Phase("p", lambda p, b, r: (0.0, {}), (("x", "s", 4),), 1, optim), tree_spec(params), 16,
      make_runtime(runner="scan")).init_state(params).opt_state
  written_by_0_3 = optax.inject_hyperparams(lambda learning_rate: make_optimizer(
      learning_rate=lambda count: learning_rate * 1.0))(learning_rate=1e-3).init(params)
  plain = state(Optim(1e-3))
  assert set(plain.hyperparams) == {"learning_rate", *LENGTH}
  assert jax.tree.structure(learning_rate_only(plain)) == jax.tree.structure(written_by_0_3)
  assert float(plain.hyperparams["total_steps"]) == 4  # 16 examples in batches of 4, 1 epoch
  decayed = state(Optim(1e-3, weight_decay=0.1, l1_decay=0.01))
  assert set(decayed.hyperparams) == {"learning_rate", "weight_decay", "l1_decay", *LENGTH}
  assert float(decayed.hyperparams["weight_decay"]) == pytest.approx(0.1)
  assert len(decayed.inner_state) == len(plain.inner_state) + 2  # the two decays' terms


def test_a_leaf_shared_by_the_vmapped_seeds_trains_as_if_stacked():
  """``shared=('s/image',)``: every seed reads one copy of the images beside its own targets,
  and trains exactly as with the images stacked per seed."""
  from aetl_jax.engine.driver import seed_shapes, run_phases_vmapped, seed_axes
  from aetl_jax.engine.phase import Optim, Phase
  from aetl_jax.engine.runtime import make_runtime

  def loss(p, b, rng):
    return jnp.mean((b["x"]["image"] @ p["w"] - b["x"]["label"]) ** 2), {}

  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.random((16, 3)), jnp.float32)
  targets = jnp.asarray(rng.random((2, 16, 2)), jnp.float32)  # per seed
  phase = Phase("p", loss, (("x", "s", 4),), 2, Optim(1e-1, schedule="constant"))
  runtime = make_runtime(runner="scan")
  params = {"w": jnp.zeros((2, 3, 2))}
  rngs = jnp.stack([jax.random.PRNGKey(0), jax.random.PRNGKey(1)])
  shared = {"s": {"image": images, "label": targets}}
  stacked = {"s": {"image": jnp.stack([images] * 2), "label": targets}}
  assert seed_axes(shared, ("s/image",)) == (("s", (("image", None), ("label", 0))),)
  assert seed_shapes(shared, ("s/image",))["s"]["image"].shape == (16, 3)
  a, _ = run_phases_vmapped([phase], params, shared, rngs, runtime=runtime, shared=("s/image",))
  b, _ = run_phases_vmapped([phase], params, stacked, rngs, runtime=runtime)
  np.testing.assert_allclose(a["w"], b["w"], rtol=1e-6)
  assert not np.allclose(a["w"][0], a["w"][1])  # each seed fitted its own targets


def _fit(p, b, rng):
  noise = 0.01 * jax.random.normal(rng, b["x"]["label"].shape)
  return jnp.mean((b["x"]["image"] @ p["w"] - b["x"]["label"] + noise) ** 2), {}


def _fit_and_shrink(p, b, rng):
  return _fit(p, b, rng)[0] + 0.1 * jnp.mean((b["u"]["image"] @ p["w"]) ** 2), {}


def _budget_run(n: int, *, pad: bool, path: str):
  """A labelled stream of ``n`` examples beside a fixed pool, through two phases: one over the
  labelled stream whose epochs follow its size (``min_steps``), one led by the pool with the
  labelled stream drawn beside it. (params, rows, compilations it caused)."""
  from aetl_jax.engine.driver import run_phases, run_phases_vmapped
  from aetl_jax.engine.phase import Optim, Phase
  from aetl_jax.engine.runtime import make_runtime
  compiles = _compile_counter()

  rng = np.random.default_rng(n)  # numpy: building the data compiles nothing
  labelled = {"image": rng.random((n, 3), np.float32), "label": rng.random((n, 2), np.float32)}
  pool = {"image": np.random.default_rng(0).random((48, 3), np.float32)}
  phases = [Phase("fit", _fit, (("x", "lab", 16),), 1, Optim(0.05, warmup_epochs=1),
                  min_steps=30),
            Phase("both", _fit_and_shrink, (("u", "pool", 16), ("x", "lab", 8)), 2,
                  Optim(0.02, schedule="linear_tail"))]
  runtime = make_runtime(runner="per_batch" if path == "per_batch" else "scan")
  streams = ("lab",) if pad else ()
  if path != "vmapped":
    params, rows = run_phases(phases, {"w": jnp.zeros((3, 2))}, {"lab": labelled, "pool": pool},
                              jax.random.PRNGKey(3), runtime=runtime, pad=streams)
    return params, rows, len(compiles)
  two = lambda t: jax.tree.map(lambda a: np.stack([a, a[::-1]]), t)
  params, rows = run_phases_vmapped(
      phases, {"w": jnp.zeros((2, 3, 2))}, {"lab": two(labelled), "pool": pool},
      jnp.stack([jax.random.PRNGKey(3), jax.random.PRNGKey(4)]), runtime=runtime,
      shared=("pool",), pad=streams)
  return params, rows, len(compiles)


@pytest.mark.slow
@pytest.mark.parametrize("path", ["scan", "per_batch", "vmapped"])
def test_label_budgets_padded_to_one_bucket_share_programs_and_keep_their_numbers(path):
  """A labelled stream padded to its size bucket (100 and 200 examples both to 256) trains to
  the parameters and per-epoch rows of the unpadded run (its epochs, its schedule, its
  shuffles), and a second budget of the bucket compiles nothing: one seed (a whole epoch in
  a scan, or a step per call) and vmapped seeds."""
  from aetl_jax.engine.loop import bucket
  assert bucket(100) == bucket(200) == 256 and bucket(64) == 64
  vmapped = path == "vmapped"
  plain, plain_rows, _ = _budget_run(100, pad=False, path=path)
  padded, padded_rows, _ = _budget_run(100, pad=True, path=path)
  np.testing.assert_allclose(padded["w"], plain["w"], rtol=2e-5, atol=1e-6)
  if vmapped:
    plain_rows, padded_rows = plain_rows[1], padded_rows[1]
  assert [(r["phase"], r["epoch"]) for r in padded_rows] == [
      (r["phase"], r["epoch"]) for r in plain_rows]
  assert sum(r["phase"] == "fit" for r in plain_rows) == 5  # 30 steps at 6 steps an epoch
  for a, b in zip(padded_rows, plain_rows):
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert a["learning_rate"] == pytest.approx(b["learning_rate"], rel=1e-5)
  other, other_rows, compiled = _budget_run(200, pad=True, path=path)
  assert compiled == 0  # the second budget of the bucket ran the first one's programs
  rows = other_rows[0] if vmapped else other_rows
  assert sum(r["phase"] == "fit" for r in rows) == 3  # its own length: 12 steps an epoch
  _, _, unpadded_compiles = _budget_run(200, pad=False, path=path)
  assert unpadded_compiles > 0  # unpadded, the size is a shape: the same check can fail
