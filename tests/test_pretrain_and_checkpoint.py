"""Pretraining lowers held-out error; the encoder moves through Orbax intact."""

import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from aetl_jax.core.rules import tree_paths
from aetl_jax.engine import checkpoint as checkpointing
from aetl_jax.data.transfer_split import make_transfer_split
from aetl_jax.evaluation.reconstruction import reconstruction_metrics
from aetl_jax.engine.metrics_log import JsonlLog
from aetl_jax.tasks.pretrain import ENCODER_SUBTREE, checkpoint_dir, pretrain
from aetl_jax.transfer.encoder import load_encoder
from tests.conftest import classifier_and_params, tiny_config, tree_equal


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, digits):
  images, labels = digits
  split = make_transfer_split(labels, test_fraction=0.3, source_fraction=0.5, seed=0)
  config = tiny_config("pretrain.epochs=30", "pretrain.checkpoint_every=10",
                       "pretrain.keep_checkpoints=5")
  workdir = tmp_path_factory.mktemp("pretrain")
  model, params, history = pretrain(config, images[split.source], images[split.test], workdir,
                                    progress=False)
  return dict(config=config, workdir=workdir, model=model, params=params, history=history,
              images=images, split=split)


@pytest.mark.slow
def test_pretraining_lowers_heldout_reconstruction_error(pretrained):
  p = pretrained
  init = p["model"].init(jax.random.PRNGKey(123), p["images"][:1])["params"]
  test = p["images"][p["split"].test]
  before = reconstruction_metrics(p["model"], init, test)
  after = reconstruction_metrics(p["model"], p["params"], test)
  assert after["mse"] < 0.5 * before["mse"], (before, after)
  assert after["psnr"] > before["psnr"] + 3
  # The held-out numbers logged during training agree with a fresh evaluation.
  assert p["history"][-1]["eval_mse"] == pytest.approx(after["mse"], rel=1e-5)


def test_checkpoints_are_kept_and_finished(pretrained):
  assert checkpointing.finished_steps(checkpoint_dir(pretrained["workdir"])) == [10, 20, 30]


def test_restored_encoder_equals_saved_leaf_by_leaf(pretrained):
  config = pretrained["config"]
  _, template = classifier_and_params(config)
  step, encoder, reinit = load_encoder(config, checkpoint_dir(pretrained["workdir"]), template)
  assert step == 30 and reinit == []
  assert tree_equal(encoder, pretrained["params"]["encoder"])


def test_partial_restore_reads_only_the_encoder(pretrained, tmp_path):
  """Damaged decoder and optimiser arrays do not stop the encoder from loading."""
  ckpt = tmp_path / "ckpt"
  shutil.copytree(checkpoint_dir(pretrained["workdir"]), ckpt)
  damaged = 0
  for array_dir in (ckpt / "30" / "default").iterdir():
    if array_dir.name.startswith(("params.decoder", "opt_state")):
      for f in array_dir.iterdir():
        f.write_bytes(b"garbage")
      damaged += 1
  assert damaged > 0
  _, params = classifier_and_params(pretrained["config"])
  _, encoder = checkpointing.restore_subtree(ckpt, params["encoder"], subtree=ENCODER_SUBTREE)
  assert tree_equal(encoder, pretrained["params"]["encoder"])
  # Reading the damaged decoder does fail: the damage is real.
  with pytest.raises(Exception):
    checkpointing.restore_subtree(ckpt, pretrained["params"]["decoder"],
                                  subtree=("params", "decoder"))


def test_shape_mismatch_lists_every_path_with_both_shapes(pretrained):
  config = tiny_config("model.widths=(128, 32)", "model.code_dim=16")
  _, params = classifier_and_params(config)
  with pytest.raises(checkpointing.CheckpointError) as e:
    checkpointing.restore_subtree(checkpoint_dir(pretrained["workdir"]), params["encoder"],
                                  subtree=ENCODER_SUBTREE)
  msg = str(e.value)
  assert "block_1/kernel: checkpoint shape (128, 64) != target shape (128, 32)" in msg
  assert "block_2/kernel: checkpoint shape (64, 32) != target shape (32, 16)" in msg
  assert "block_2/bias" in msg


def test_missing_and_extra_leaves_are_listed(pretrained):
  config = tiny_config("model.widths=(128, 64, 32)")
  _, params = classifier_and_params(config)
  with pytest.raises(checkpointing.CheckpointError, match="block_3/kernel: missing in checkpoint"):
    checkpointing.restore_subtree(checkpoint_dir(pretrained["workdir"]), params["encoder"],
                                  subtree=ENCODER_SUBTREE)


def test_reinit_rules_keep_fresh_values_and_are_logged(pretrained, caplog):
  config = tiny_config("transfer.reinit=('encoder/block_2/.*',)")
  model, fresh = classifier_and_params(config)
  _, encoder, reinit = load_encoder(config, checkpoint_dir(pretrained["workdir"]), fresh)
  assert sorted(reinit) == ["block_2/bias", "block_2/kernel"]
  assert tree_equal(encoder["block_2"], fresh["encoder"]["block_2"])
  assert tree_equal(encoder["block_0"], pretrained["params"]["encoder"]["block_0"])
  assert "block_2/kernel" in caplog.text


def test_other_family_checkpoint_fails_clearly(pretrained, tmp_path):
  ckpt = tmp_path / "ckpt"
  shutil.copytree(checkpoint_dir(pretrained["workdir"]), ckpt)
  checkpointing.write_sidecar(ckpt, {"family": "conv"})
  _, template = classifier_and_params(pretrained["config"])
  with pytest.raises(checkpointing.CheckpointError, match="'conv' encoder"):
    load_encoder(pretrained["config"], ckpt, template)


def test_directory_without_finished_checkpoint(tmp_path):
  (tmp_path / "7.orbax-checkpoint-tmp-123").mkdir()
  with pytest.raises(checkpointing.CheckpointError, match="no finished checkpoint.*7.orbax"):
    checkpointing.restore_subtree(tmp_path, {"w": np.zeros(2)})
  with pytest.raises(checkpointing.CheckpointError, match="empty or missing"):
    checkpointing.restore_subtree(tmp_path / "nothing", {"w": np.zeros(2)})


def test_rerun_of_finished_pretraining_does_no_work(pretrained, digits):
  p = pretrained
  log = JsonlLog(Path(p["workdir"]) / "metrics" / "pretrain.jsonl")
  rows = log.read()
  _, params, history = pretrain(p["config"], p["images"][p["split"].source],
                                p["images"][p["split"].test], p["workdir"], progress=False)
  assert history == rows
  assert tree_equal(params, p["params"])


def test_restore_refuses_leaves_the_target_lacks(pretrained):
  """A smaller target (2 dense blocks) than the checkpoint (3): the extra leaves are refused."""
  config = tiny_config("model.widths=(128,)", "model.code_dim=64")
  _, params = classifier_and_params(config)
  with pytest.raises(checkpointing.CheckpointError,
                     match=r"block_2/kernel: in checkpoint \(shape \(64, 32\)\) but not in target"):
    checkpointing.restore_subtree(checkpoint_dir(pretrained["workdir"]), params["encoder"],
                                  subtree=ENCODER_SUBTREE)


def test_restore_verifies_the_manifest_checksum(pretrained, tmp_path):
  import json
  ckpt = tmp_path / "ckpt"
  shutil.copytree(checkpoint_dir(pretrained["workdir"]), ckpt)
  meta = ckpt / "30" / "_CHECKPOINT_METADATA"
  record = json.loads(meta.read_text())
  record["custom_metadata"]["aetl_jax_manifest"]["params/encoder/block_1/bias"]["crc32"] ^= 1
  meta.write_text(json.dumps(record))
  _, params = classifier_and_params(pretrained["config"])
  with pytest.raises(checkpointing.CheckpointError,
                     match=r"checksum mismatch in params/encoder/block_1/bias"):
    checkpointing.restore_subtree(ckpt, params["encoder"], subtree=ENCODER_SUBTREE)


def test_restore_of_an_unknown_step_lists_the_finished_ones(pretrained):
  _, params = classifier_and_params(pretrained["config"])
  with pytest.raises(checkpointing.CheckpointError,
                     match=r"step 25 not found .*finished steps: \[10, 20, 30\]"):
    checkpointing.restore_subtree(checkpoint_dir(pretrained["workdir"]), params["encoder"],
                                  subtree=ENCODER_SUBTREE, step=25)


def _shapes(tree):
  return dict(zip(tree_paths(tree), (tuple(np.shape(x)) for x in jax.tree.leaves(tree))))


def test_saved_shapes_are_the_newest_steps_subtree_shapes_without_reading_arrays(pretrained,
                                                                                 tmp_path):
  ckpt = tmp_path / "ckpt"
  shutil.copytree(checkpoint_dir(pretrained["workdir"]), ckpt)
  arrays = [f for f in ckpt.rglob("*") if f.is_file() and f.parent.name.startswith("params.")]
  assert arrays
  for f in arrays:  # the array files gone: the manifest alone answers
    f.unlink()
  params = pretrained["params"]
  assert checkpointing.saved_shapes(ckpt) == _shapes(params["encoder"])
  assert checkpointing.saved_shapes(ckpt, ("params", "decoder")) == _shapes(params["decoder"])
  with pytest.raises(checkpointing.CheckpointError, match=r"/30 has no 'params/head' subtree"):
    checkpointing.saved_shapes(ckpt, ("params", "head"))
  with pytest.raises(checkpointing.CheckpointError, match="no finished checkpoint in"):
    checkpointing.saved_shapes(tmp_path / "empty")


def test_a_missing_sidecar_reads_as_none(tmp_path):
  assert checkpointing.read_sidecar(tmp_path) is None
  checkpointing.write_sidecar(tmp_path, {"family": "mlp"})
  assert checkpointing.read_sidecar(tmp_path) == {"family": "mlp"}


def test_save_writes_the_step_asked_for_even_below_the_latest(tmp_path):
  manager = checkpointing.make_manager(tmp_path)
  checkpointing.save(manager, 4, {"w": np.ones(2)})
  checkpointing.save(manager, 2, {"w": np.zeros(2)})  # no Orbax policy skips a step
  assert checkpointing.finished_steps(tmp_path) == [2, 4]


@pytest.mark.parametrize("error, cause", [
    (RuntimeError("disk on fire\nsecond line"), "disk on fire"),
    (RuntimeError(), "RuntimeError"),
    (OSError("x" * 400), "x" * 300),
])
def test_a_failed_save_is_one_line_naming_the_step_and_the_cause(tmp_path, error, cause):
  manager = checkpointing.make_manager(tmp_path)

  def fail(*args, **kwargs):
    raise error

  manager.save = fail
  with pytest.raises(checkpointing.CheckpointSaveError) as e:
    checkpointing.save(manager, 3, {"w": np.ones(2)})
  assert str(e.value) == (f"cannot save checkpoint step 3 in {manager.directory}: {cause}; "
                          f"the previous steps are intact and a rerun resumes from them")


def test_every_saved_step_carries_each_leafs_shape_and_crc32(tmp_path):
  import json
  import zlib
  tree = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, "step": np.int32(7)}
  checkpointing.save(checkpointing.make_manager(tmp_path), 1, tree)
  meta = json.loads((tmp_path / "1" / "_CHECKPOINT_METADATA").read_text())
  manifest = meta["custom_metadata"][checkpointing.MANIFEST_KEY]
  assert manifest == {
      "params/w": {"shape": [2, 3], "crc32": zlib.crc32(tree["params"]["w"].tobytes())},
      "step": {"shape": [], "crc32": zlib.crc32(np.int32(7).tobytes())}}
