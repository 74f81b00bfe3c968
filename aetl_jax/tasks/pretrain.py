"""Pretraining: one phase of the registered objective over the ``source`` stream.

The whole epoch is one compiled call (or one call per batch, by config); the
Python loop is per epoch. Epoch ``e`` shuffles with ``fold_in(key, e)``, so a
run resumed from a checkpoint sees the same data order as an uninterrupted
one. The checkpoint holds ``{'params', 'opt_state', 'step'}``; the encoder a
target task receives is ``params/encoder`` (:data:`ENCODER_SUBTREE`).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from aetl_jax.data.streaming import array_stream, choose_data_path, numpy_batches, prefetch_to_device
from aetl_jax.engine import checkpoint
from aetl_jax.engine.driver import HostStream, run_phases
from aetl_jax.engine.metrics_log import JsonlLog, Logs, TensorBoard
from aetl_jax.engine.phase import Optim, Phase
from aetl_jax.engine.runtime import runtime_from_config
from aetl_jax.engine.store import CheckpointStore
from aetl_jax.evaluation.reconstruction import reconstruct, reconstruction_metrics
from aetl_jax.models.registry import build_autoencoder
from aetl_jax.objectives.registry import make_objective, model_kind
from aetl_jax.objectives.registry import roles as objective_roles
from aetl_jax.transfer.encoder import ENCODER_SUBTREE  # noqa: F401 - re-exported



def checkpoint_dir(workdir) -> Path:
  return Path(workdir) / "pretrain" / "checkpoints"


def pretrain_model(config, image_shape):
  return build_autoencoder(config.model, image_shape, model_kind(config.objective.name))


def pretrain(config, train_images, eval_images, workdir, *, progress: bool = True,
             train_stream=None, num_train: int | None = None):
  """Pretrains ``config.model`` with ``config.objective`` on ``train_images``; resumes.

  Instead of in-memory ``train_images`` (None), ``train_stream(seed)`` may
  give an epoch of host batches ``{'image'}`` (e.g. ``tfds_stream`` over
  data on disk) with ``num_train`` examples. Returns (model, params,
  history). ``config.pretrain`` holds the schedule.
  """
  pcfg = config.pretrain
  image_shape = tuple(eval_images.shape[1:])
  model = pretrain_model(config, image_shape)
  roles = objective_roles(config.objective.name)
  if roles != ("images",):
    raise ValueError(f"objective {config.objective.name!r} reads {roles}; pretraining provides "
                     f"unlabelled source images only (role 'images')")
  init_key, train_key = jax.random.split(jax.random.PRNGKey(pcfg.seed))
  # 'reconstruct' is deterministic and touches every parameter of every variant.
  params = model.init(init_key, jnp.zeros((1, *image_shape)), method="reconstruct")["params"]
  runtime = runtime_from_config(config, "pretrain")
  phase = Phase("pretrain", make_objective(model, config.objective),
                (("images", "source", pcfg.batch_size),), pcfg.epochs, Optim.from_config(pcfg))
  ckpt_dir = checkpoint_dir(workdir)
  checkpoint.write_sidecar(ckpt_dir, {"family": config.model.family,
                                      "objective": config.objective.name,
                                      "model": config.model.to_dict(),
                                      "image_shape": list(image_shape)})
  source = _source(config, train_images, train_stream, num_train, runtime)
  eval_images = jax.device_put(eval_images)
  bar = _progress(progress, pcfg.epochs)
  tensorboard = TensorBoard(Path(workdir) / "tensorboard" / "pretrain")
  shown = eval_images[:8]

  def evaluate(p, epoch):
    tensorboard.images("reconstructions", jnp.concatenate([shown, reconstruct(model, p, shown)], 2),
                       epoch)
    return reconstruction_metrics(model, p, eval_images)

  log = Logs(JsonlLog(Path(workdir) / "metrics" / "pretrain.jsonl"), tensorboard,
             on_append=lambda row: _advance(bar, row))
  params, _ = run_phases(
      [phase], params, {"source": source}, train_key, runtime=runtime,
      store=CheckpointStore(ckpt_dir, every=pcfg.checkpoint_every, keep=pcfg.keep_checkpoints),
      log=log, evaluate=evaluate, eval_every=pcfg.eval_every, metric_prefix="train_")
  bar.close()
  tensorboard.close()
  return model, params, log.read()


def _source(config, train_images, train_stream, num_train, runtime):
  """The source stream: arrays on the device, or batches streamed from disk."""
  pcfg = config.pretrain
  data_path = "stream" if train_images is None else choose_data_path(
      pcfg.data_path, train_images.nbytes, pcfg.memory_limit_mb)
  if data_path == "memory":
    return {"image": jax.device_put(train_images)}
  if runtime.launcher.kind != "jit":
    raise ValueError("pretrain.data_path='stream' runs with launch.launcher='jit' for now; "
                     "use data_path='memory' for pmap/shard_map")
  if train_stream is None:
    train_stream = lambda seed: array_stream({"image": train_images}, batch_size=pcfg.batch_size,
                                             seed=seed)
    num_train = train_images.shape[0]
  return HostStream(lambda e: prefetch_to_device(numpy_batches(train_stream(pcfg.seed * 100_003 + e))),
                    num_train)


def _progress(progress: bool, total: int):
  from tqdm.auto import tqdm
  return tqdm(total=total, desc="pretrain", disable=not progress, leave=False)


def _advance(bar, row) -> None:
  bar.update(1)
  bar.set_postfix(loss=f"{row['train_loss']:.4f}", refresh=False)
