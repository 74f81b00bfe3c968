"""Fault injection: every kind of checkpoint file truncated, corrupted or deleted.

Whatever is damaged, a resume gets either the damaged step bitwise as saved
or an older intact step (the damaged one moved aside), and an encoder
transplant gets the saved encoder or a one-line CheckpointError: never other
numbers, never a raw traceback.
"""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aetl_jax.engine import checkpoint as checkpointing
from aetl_jax.engine.store import CheckpointStore
from aetl_jax.tasks.pretrain import checkpoint_dir, pretrain
from aetl_jax.transfer.encoder import ENCODER_SUBTREE
from tests.conftest import tiny_config, tree_equal

# One file of each kind Orbax writes for a step (paths inside the step folder).
KINDS = {
    "step metadata + manifest": "_CHECKPOINT_METADATA",
    "commit marker": "commit_success.txt",
    "tree metadata": "default/_METADATA",
    "sharding": "default/_sharding",
    "array metadata": "default/array_metadatas/process_0",
    "encoder array header": "default/params.encoder.block_0.kernel/.zarray",
    "encoder array chunk": "default/params.encoder.block_0.kernel/0.0",
    "decoder array chunk": "default/params.decoder.block_1.kernel/0.0",
    "optimiser state chunk": "default/opt_state.*.mu.encoder.block_1.kernel/0.0",
    "step counter chunk": "default/step/0",
}


def _damage(step_dir, pattern, mode):
  matches = list(step_dir.glob(pattern))  # '*' stands for the optimiser's own nesting
  assert len(matches) == 1, (pattern, matches)
  path = matches[0]
  data = path.read_bytes()
  if mode == "delete":
    path.unlink()
  elif mode == "truncate":
    path.write_bytes(data[: len(data) // 2])
  else:  # flip one byte in the middle
    i = len(data) // 2
    path.write_bytes(data[:i] + bytes([data[i] ^ 0x5A]) + data[i + 1:])


@pytest.fixture(scope="module")
def saved(tmp_path_factory, digits):
  root = tmp_path_factory.mktemp("faults")
  config = tiny_config("pretrain.epochs=4", "pretrain.checkpoint_every=2", "pretrain.keep_checkpoints=3")
  _, params, _ = pretrain(config, digits[0][:200], digits[0][200:300], root, progress=False)
  ckpt = checkpoint_dir(root)
  trees = {s: checkpointing.make_manager(ckpt).restore(s) for s in (2, 4)}
  return ckpt, trees


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["truncate", "corrupt", "delete"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_resume_never_reads_damaged_numbers(saved, tmp_path, kind, mode):
  src, trees = saved
  ckpt = tmp_path / "checkpoints"
  shutil.copytree(src, ckpt)
  _damage(ckpt / "4", KINDS[kind], mode)
  found = CheckpointStore(ckpt).restore(lambda s: trees[4])
  assert found is not None
  step, tree = found
  assert tree_equal(tree, trees[step]), (kind, mode, step)
  if step == 2:  # the damaged step is out of the way, so a rerun can save step 4 again
    assert checkpointing.finished_steps(ckpt) == [2]
    assert len(list((tmp_path / "quarantine").iterdir())) == 1


@pytest.mark.parametrize("mode", ["truncate", "corrupt", "delete"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_encoder_transplant_reads_the_saved_encoder_or_says_why_not(saved, tmp_path, kind, mode):
  src, trees = saved
  ckpt = tmp_path / "checkpoints"
  shutil.copytree(src, ckpt)
  _damage(ckpt / "4", KINDS[kind], mode)
  template = jax.tree.map(np.zeros_like, trees[4]["params"]["encoder"])
  try:
    step, encoder = checkpointing.restore_subtree(ckpt, template, subtree=ENCODER_SUBTREE, step=4)
  except checkpointing.CheckpointError as e:
    assert "\n" not in str(e)
    return
  assert step == 4 and tree_equal(encoder, trees[4]["params"]["encoder"]), (kind, mode)


def _updates(tx, params, state, n):
  """``n`` updates of ``tx`` with the gradient 2w + 1; (params, state)."""
  import optax
  for _ in range(n):
    updates, state = tx.update(jax.tree.map(lambda w: 2 * w + 1, params), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def _saved_after_two_updates(tx, params, directory):
  """(params, state) after two updates of ``tx``, saved as step 2 in ``directory``; and the
  params three updates later (what a resumed run must reach)."""
  p2, s2 = _updates(tx, params, tx.init(params), 2)
  store = CheckpointStore(directory)
  store.save(2, {"params": p2, "opt_state": s2, "step": jnp.int32(2)})
  store.close()
  return p2, s2, _updates(tx, p2, s2, 3)[0]


def test_a_step_saved_before_learning_rates_moved_into_the_state_resumes_bitwise(tmp_path):
  """Before 0.3 the optimiser state had no InjectHyperparamsState around it: such a step is
  read in that layout, converted, and the next updates equal the earlier version's."""
  import optax
  from aetl_jax.engine.compat import without_injection
  unit = optax.cosine_decay_schedule(1.0, 10)
  old_tx = optax.adam(lambda count: 0.1 * unit(count))
  new_tx = optax.inject_hyperparams(
      lambda learning_rate: optax.adam(lambda count: learning_rate * unit(count)))(learning_rate=0.1)
  params = {"w": jnp.linspace(-1.0, 1.0, 5)}
  p2, s2, reference = _saved_after_two_updates(old_tx, params, tmp_path / "checkpoints")

  fresh = {"params": params, "opt_state": new_tx.init(params), "step": jnp.int32(0)}
  assert jax.tree.structure(without_injection(fresh["opt_state"])) == jax.tree.structure(s2)
  step, tree = CheckpointStore(tmp_path / "checkpoints").restore(lambda s: fresh)
  assert step == 2 and int(tree["opt_state"].count) == 2
  resumed, _ = _updates(new_tx, tree["params"], tree["opt_state"], 3)
  assert tree_equal(resumed, reference)
  assert not (tmp_path / "quarantine").exists()


def test_a_step_saved_before_the_multipliers_were_injected_resumes_bitwise(tmp_path):
  """0.4 compiled the rules' learning-rate and weight-decay multipliers in; since 0.5 they are
  values in the optimiser state. A 0.4 step is read in its layout, given the configured
  multipliers, and the next updates equal 0.4's."""
  import optax
  from aetl_jax.core.optim import make_optimizer
  from aetl_jax.engine.compat import without_multipliers
  unit = optax.cosine_decay_schedule(1.0, 10)
  lr = lambda rate: (lambda count: rate * unit(count))
  mults, wd = {"b": 1.0, "w": 0.3}, {"b": 0.0, "w": 2.0}
  old_tx = optax.inject_hyperparams(lambda learning_rate, weight_decay: make_optimizer(
      learning_rate=lr(learning_rate), weight_decay=weight_decay, lr_multipliers=mults,
      wd_multipliers=wd))(learning_rate=0.1, weight_decay=0.05)

  def new(learning_rate, weight_decay, lr_multipliers, wd_multipliers):
    tree = lambda v: {"b": v[0], "w": v[1]}
    return make_optimizer(learning_rate=lr(learning_rate), weight_decay=weight_decay,
                          lr_multipliers=tree(lr_multipliers), wd_multipliers=tree(wd_multipliers))
  new_tx = optax.inject_hyperparams(new)(learning_rate=0.1, weight_decay=0.05,
                                         lr_multipliers=np.float32([1.0, 0.3]),
                                         wd_multipliers=np.float32([0.0, 2.0]))
  params = {"b": jnp.float32(0.5), "w": jnp.linspace(-1.0, 1.0, 5)}
  p2, s2, reference = _saved_after_two_updates(old_tx, params, tmp_path / "checkpoints")

  fresh = {"params": params, "opt_state": new_tx.init(params), "step": jnp.int32(0)}
  assert jax.tree.structure(without_multipliers(fresh["opt_state"])) == jax.tree.structure(s2)
  step, tree = CheckpointStore(tmp_path / "checkpoints").restore(lambda s: fresh)
  assert step == 2
  np.testing.assert_array_equal(tree["opt_state"].hyperparams["lr_multipliers"], np.float32([1.0, 0.3]))
  resumed, _ = _updates(new_tx, tree["params"], tree["opt_state"], 3)
  assert tree_equal(resumed, reference)
  assert not (tmp_path / "quarantine").exists()


def test_a_step_saved_before_the_decays_were_injected_resumes_bitwise(tmp_path):
  """0.3 injected the learning rate alone; since 0.4 a non-zero weight decay is injected too.
  A 0.3 step with weight decay is read in its layout, given the configured decay, and the
  next updates equal 0.3's."""
  import optax
  from aetl_jax.core.optim import make_optimizer
  from aetl_jax.engine.compat import learning_rate_only
  unit = optax.cosine_decay_schedule(1.0, 10)
  lr = lambda rate: (lambda count: rate * unit(count))
  old_tx = optax.inject_hyperparams(lambda learning_rate: make_optimizer(
      learning_rate=lr(learning_rate), weight_decay=0.05))(learning_rate=0.1)
  new_tx = optax.inject_hyperparams(lambda learning_rate, weight_decay: make_optimizer(
      learning_rate=lr(learning_rate), weight_decay=weight_decay))(learning_rate=0.1,
                                                                   weight_decay=0.05)
  params = {"w": jnp.linspace(-1.0, 1.0, 5)}
  p2, s2, reference = _saved_after_two_updates(old_tx, params, tmp_path / "checkpoints")

  fresh = {"params": params, "opt_state": new_tx.init(params), "step": jnp.int32(0)}
  assert jax.tree.structure(learning_rate_only(fresh["opt_state"])) == jax.tree.structure(s2)
  step, tree = CheckpointStore(tmp_path / "checkpoints").restore(lambda s: fresh)
  assert step == 2 and float(tree["opt_state"].hyperparams["weight_decay"]) == pytest.approx(0.05)
  resumed, _ = _updates(new_tx, tree["params"], tree["opt_state"], 3)
  assert tree_equal(resumed, reference)
  assert not (tmp_path / "quarantine").exists()


def test_a_step_saved_before_the_schedule_length_was_injected_resumes_bitwise(tmp_path):
  """0.5 compiled the schedule's total and warm-up steps in; since 0.6 they are values in the
  optimiser state (label budgets of one size bucket share programs). A 0.5 step is read in
  its layout, given the phase's length, and the next updates equal 0.5's."""
  import optax
  from aetl_jax.core.optim import make_optimizer, schedule_factor
  from aetl_jax.engine.compat import without_length
  old_tx = optax.inject_hyperparams(lambda learning_rate: make_optimizer(
      learning_rate=lambda c: learning_rate * schedule_factor("cosine", c, 10, 2)))(
          learning_rate=0.1)
  new_tx = optax.inject_hyperparams(lambda learning_rate, total_steps, warmup_steps: make_optimizer(
      learning_rate=lambda c: learning_rate * schedule_factor("cosine", c, total_steps,
                                                              warmup_steps)))(
          learning_rate=0.1, total_steps=10.0, warmup_steps=2.0)
  params = {"w": jnp.linspace(-1.0, 1.0, 5)}
  p2, s2, reference = _saved_after_two_updates(old_tx, params, tmp_path / "checkpoints")

  fresh = {"params": params, "opt_state": new_tx.init(params), "step": jnp.int32(0)}
  assert jax.tree.structure(without_length(fresh["opt_state"])) == jax.tree.structure(s2)
  step, tree = CheckpointStore(tmp_path / "checkpoints").restore(lambda s: fresh)
  assert step == 2 and float(tree["opt_state"].hyperparams["total_steps"]) == 10.0
  resumed, _ = _updates(new_tx, tree["params"], tree["opt_state"], 3)
  assert tree_equal(resumed, reference)
  assert not (tmp_path / "quarantine").exists()
