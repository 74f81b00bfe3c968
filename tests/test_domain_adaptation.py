"""Domain adaptation as published: DANN's schedules, the engine's two-player step, ADDA's
start, the bounding-box common shape, and a clean budget-0 protocol."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from aetl_jax.core.optim import learning_rate_schedule
from aetl_jax.core.rules import FROZEN, freeze_and_multipliers
from aetl_jax.data.preprocessing import bounding_box, to_shape
from aetl_jax.engine.state import TrainState
from aetl_jax.engine.step import make_two_player_step
from aetl_jax.objectives.adaptation import dann_ramp
from aetl_jax.engine.driver import run_phases
from tests.conftest import digits_config, tree_equal


def test_dann_ramp_and_annealing_equal_their_formulas():
  for p in (0.0, 0.1, 0.37, 0.5, 0.99, 1.0):
    assert float(dann_ramp(p)) == pytest.approx(2 / (1 + math.exp(-10 * p)) - 1, rel=1e-6,
                                                abs=1e-7)
  lr = learning_rate_schedule(0.01, 1000, schedule="inverse_power")
  for step in (0, 1, 250, 999, 1000):
    assert float(lr(step)) == pytest.approx(0.01 / (1 + 10 * step / 1000) ** 0.75, rel=1e-6)
  assert float(learning_rate_schedule(1.0, 10, schedule="inverse_power")(10)) == pytest.approx(
      11 ** -0.75)
  tail = learning_rate_schedule(0.002, 150, schedule="linear_tail")
  assert float(tail(0)) == float(tail(99)) == pytest.approx(0.002)
  assert float(tail(125)) == pytest.approx(0.001, rel=1e-6) and float(tail(150)) == 0.0


@pytest.mark.slow
def test_the_dann_objective_reverses_the_ramped_gradient_into_the_encoder():
  """The encoder's gradient of the domain term is -λ_p × that of plain domain classification;
  the domain classifier's own gradient is not reversed."""
  from aetl_jax.models.registry import build_classifier
  from aetl_jax.objectives.adaptation import binary_cross_entropy, dann
  config = digits_config("model.widths=(8,)", "model.code_dim=4")
  model = build_classifier(config.model, 3, domain_hidden=(5,))
  x = jnp.asarray(np.random.default_rng(0).random((6, 8, 8, 1)), jnp.float32)
  params = model.init(jax.random.PRNGKey(0), x, method="init_all")["params"]
  loss = dann(model, _Section(weight=1.0, ramp=True))
  p = 0.3
  batches = {"source": {"image": x[:3], "label": jnp.array([0, 1, 2])},
             "images": {"image": x[3:]}, "progress": jnp.float32(p)}
  grads = jax.grad(lambda q: loss(q, batches, jax.random.PRNGKey(0))[0])(params)

  def plain(q):
    z = model.apply({"params": q}, x, method="encode")
    logits = model.apply({"params": q}, z, method="domain_logits")[:, 0]
    return binary_cross_entropy(logits, jnp.array([0.0, 0, 0, 1, 1, 1]))

  def supervised(q):
    logits = model.apply({"params": q}, x[:3])
    return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.array([0, 1, 2])).mean()

  g_dom, g_sup = jax.grad(plain)(params), jax.grad(supervised)(params)
  lam = 2 / (1 + math.exp(-10 * p)) - 1
  np.testing.assert_allclose(grads["encoder"]["block_0"]["kernel"],
                             g_sup["encoder"]["block_0"]["kernel"]
                             - lam * g_dom["encoder"]["block_0"]["kernel"], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(grads["domain"]["layers_0"]["kernel"],
                             g_dom["domain"]["layers_0"]["kernel"], rtol=1e-4, atol=1e-6)


class _Section(dict):
  __getattr__ = dict.__getitem__

  def __init__(self, **kw):
    super().__init__(kw)


def _toy_game():
  """params {'g': player weight, 'd': discriminator weight, 'c': a constant};
  player loss (g - d)^2 / 2, adversary loss (d - 2 g)^2 / 2, on a batch scale s."""
  params = {"g": jnp.array(1.0), "d": jnp.array(0.5), "c": jnp.array(3.0)}
  player = lambda q, b, r: ((b["s"] * (q["g"] - q["d"]) ** 2 / 2), {"gap": q["g"] - q["d"]})
  adversary = lambda q, b, r: ((b["s"] * (q["d"] - 2 * q["g"]) ** 2 / 2), {})
  mask = lambda rules: freeze_and_multipliers(params, rules)[0]
  return params, player, adversary, mask((("g", 1.0), (".*", FROZEN))), mask((("d", 1.0), (".*", FROZEN)))


@pytest.mark.parametrize("order", ["alternating", "simultaneous"])
def test_the_two_player_step_moves_each_players_own_leaves_by_its_own_loss(order):
  params, player, adversary, pmask, amask = _toy_game()
  tx_p, tx_a = optax.sgd(0.1), optax.sgd(0.2)
  step = make_two_player_step(player, tx_p, pmask, adversary, tx_a, amask, order=order)
  state = TrainState(jnp.zeros((), jnp.int32), params, (tx_p.init({"g": params["g"]}),
                                                        tx_a.init({"d": params["d"]})))
  new, metrics = jax.jit(step)(state, {"s": 1.0}, jax.random.PRNGKey(0))
  g, d = 1.0, 0.5
  d_new = d - 0.2 * (d - 2 * g)  # the adversary first: its gradient d - 2g
  d_seen = d_new if order == "alternating" else d
  g_new = g - 0.1 * (g - d_seen)  # the player against the adversary it sees
  assert float(new.params["d"]) == pytest.approx(d_new)
  assert float(new.params["g"]) == pytest.approx(g_new)
  assert float(new.params["c"]) == 3.0 and int(new.step) == 1
  assert float(metrics["loss"]) == pytest.approx((g - d_seen) ** 2 / 2)
  assert float(metrics["adversary_loss"]) == pytest.approx((d - 2 * g) ** 2 / 2)
  assert float(metrics["gap"]) == pytest.approx(g - d_seen)


@pytest.mark.slow
def test_a_two_player_phase_trains_vmapped_and_resumable_through_the_driver(tmp_path):
  """The same phase through run_phases (checkpointed, resumed) and run_phases_vmapped gives
  the same parameters; overlapping players are refused."""
  from aetl_jax.engine.driver import run_phases, run_phases_vmapped
  from aetl_jax.engine.phase import Adversary, Optim, Phase
  from aetl_jax.engine.runtime import make_runtime
  from aetl_jax.engine.store import CheckpointStore

  def player(q, b, r):
    return jnp.mean((b["x"]["image"] * q["g"] - q["d"]) ** 2), {}

  def adversary(q, b, r):
    return jnp.mean((q["d"] - 2 * q["g"] * b["x"]["image"]) ** 2), {}

  params = {"g": jnp.ones((3,)), "d": jnp.full((3,), 0.5)}
  data = {"s": {"image": jnp.asarray(np.random.default_rng(0).random((20, 3)), jnp.float32)}}
  adv = Adversary(adversary, (("d", 1.0), (".*", FROZEN)), Optim(0.05, schedule="constant"))
  phase = Phase("game", player, (("x", "s", 4),), 3, Optim(0.1, schedule="constant"),
                (("g", 1.0), (".*", FROZEN)), adversary=adv)
  runtime = make_runtime(runner="scan")
  rng = jax.random.PRNGKey(1)
  full, _ = run_phases([phase], params, data, rng, runtime=runtime)
  store = CheckpointStore(tmp_path / "ck", every=1, keep=3)
  short = Phase("game", player, phase.feed, 2, phase.optim, phase.rules, adversary=adv)
  run_phases([short], params, data, rng, runtime=runtime, store=store)
  store.close()
  resumed, _ = run_phases([phase], params, data, rng, runtime=runtime,
                          store=CheckpointStore(tmp_path / "ck", every=1, keep=3))
  for k in params:
    np.testing.assert_allclose(resumed[k], full[k], rtol=1e-6)
  stacked = jax.tree.map(lambda a: jnp.stack([a, a]), params)
  data2 = {"s": jax.tree.map(lambda a: jnp.stack([a, a]), data["s"])}
  vm, _ = run_phases_vmapped([phase], stacked, data2, jnp.stack([rng, rng]), runtime=runtime)
  for k in params:
    np.testing.assert_allclose(vm[k][1], full[k], rtol=1e-5)
  assert not np.allclose(full["d"], params["d"]) and not np.allclose(full["g"], params["g"])
  both = Phase("game", player, phase.feed, 3, phase.optim, ((".*", 1.0),), adversary=adv)
  with pytest.raises(ValueError, match="rules both train d; each parameter belongs"):
    run_phases([both], params, data, rng, runtime=runtime)


def test_adda_starts_its_target_encoder_as_the_source_encoder():
  """As the paper's text has it (adda_features='codes'): the discriminator on the codes."""
  from aetl_jax.engine.phase import Optim
  from aetl_jax.strategies.registry import StrategyContext, build_strategy
  from aetl_jax.transfer.encoder import strategy_model
  from aetl_jax.models.variables import tree_of
  config = digits_config("objective.name='classification'", "transfer.strategies=('adda',)",
                         "transfer.budgets=(0,)", "transfer.adda_features='codes'",
                         "transfer.adda_order='alternating'")
  model = strategy_model(config, "adda", 10, (8, 8, 1))
  params = tree_of(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), method="init_all"))
  assert set(params) == {"encoder", "source_encoder", "head", "domain"}
  strategy = build_strategy("adda", StrategyContext("adda", config.transfer, model, params,
                                                     Optim.from_config(config.transfer), budget=0))
  loaded = strategy.start({**params, "encoder": jax.tree.map(lambda a: a + 1, params["encoder"])})
  for a, b in zip(jax.tree.leaves(loaded["encoder"]), jax.tree.leaves(loaded["source_encoder"])):
    np.testing.assert_array_equal(a, b)
  assert strategy.init == "source" and strategy.phases[0].adversary.order == "alternating"
  assert [w for w in jax.tree.map(jnp.shape, params["domain"])["layers_0"]["kernel"]] == [
      params["encoder"]["block_2"]["kernel"].shape[1], 500]


@pytest.mark.slow
def test_adda_on_logits_as_the_papers_code_trains_the_target_network_against_the_frozen_source():
  """adda_features='logits' (the default, as the paper's code): the discriminator reads the
  two classifiers' outputs (10 wide),
  the target network (encoder and head) is the player and starts as the source network; a few
  simultaneous steps move the target network and the discriminator, never the source one."""
  from aetl_jax.engine.phase import Optim
  from aetl_jax.engine.runtime import make_runtime
  from aetl_jax.models.variables import tree_of
  from aetl_jax.strategies.registry import StrategyContext, build_strategy
  from aetl_jax.transfer.encoder import strategy_model
  config = digits_config("objective.name='classification'", "transfer.strategies=('adda',)",
                         "transfer.budgets=(0,)", "transfer.adda_features='logits'",
                         "transfer.adda_order='simultaneous'", "transfer.adda_steps=4",
                         "transfer.batch_size=8", "transfer.adda_discriminator=(16,)")
  model = strategy_model(config, "adda", 10, (8, 8, 1))
  params = tree_of(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), method="init_all"))
  assert set(params) == {"encoder", "source_encoder", "head", "source_head", "domain"}
  assert params["domain"]["layers_0"]["kernel"].shape == (10, 16)
  strategy = build_strategy("adda", StrategyContext("adda", config.transfer, model, params,
                                                     Optim.from_config(config.transfer), budget=0))
  (phase,) = strategy.phases
  assert phase.adversary.order == "simultaneous"
  start = strategy.start(params)
  for name in ("encoder", "head"):
    assert tree_equal(start[name], start["source_" + name])
  rng = np.random.default_rng(0)
  data = {s: {"image": jnp.asarray(rng.random((16, 8, 8, 1)), jnp.float32),
              "label": jnp.asarray(rng.integers(0, 10, 16))} for s in phase.streams}
  out, rows = run_phases([phase], start, data, jax.random.PRNGKey(0), runtime=make_runtime())
  for name in ("source_encoder", "source_head"):
    assert tree_equal(out[name], start[name])
  for name in ("encoder", "head", "domain"):
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(out[name]),
                                                      jax.tree.leaves(start[name]))), name
  assert {"mapping", "adversary_loss"} <= set(rows[-1])


def test_the_bounding_box_resize_of_a_known_image_equals_a_hand_made_one():
  """A 4×2 block of ink in a 16×16 frame, into 28×28: cropped, scaled to 20×10 (aspect kept),
  centred by mass at (13.5, 13.5) → rows 4..23, columns 9..18."""
  image = np.zeros((1, 16, 16, 1), np.float32)
  image[0, 3:7, 10:12, 0] = 1.0
  out = bounding_box(image, 28, 28)
  hand = np.zeros((28, 28), np.float32)
  hand[4:24, 9:19] = 1.0
  np.testing.assert_allclose(out[0, ..., 0], hand, atol=1e-6)
  np.testing.assert_array_equal(to_shape(image, (28, 28, 1), "bbox"), out)
  # an image without ink stays empty; a pixel below 10% of the maximum is not ink
  faint = image.copy()
  faint[0, 0, 0, 0] = 0.05
  np.testing.assert_allclose(bounding_box(faint, 28, 28)[0, ..., 0], hand, atol=1e-6)
  assert not bounding_box(np.zeros((1, 16, 16, 1)), 28, 28).any()
