"""Reconstruction pretraining with resumable Orbax checkpoints.

The whole epoch is one compiled call (or one call per batch, by config); the
Python loop is per epoch. Epoch ``e`` shuffles with ``fold_in(key, e)``, so a
run resumed from a checkpoint sees the same data order as an uninterrupted
one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import jax.numpy as jnp
from tqdm.auto import tqdm

from aetl_jax import checkpointing
from aetl_jax.data.streaming import (array_stream, choose_data_path, make_stream_epoch_fn,
                                     numpy_batches, prefetch_to_device)
from aetl_jax.evaluation.reconstruction import reconstruction_metrics
from aetl_jax.models.registry import build_autoencoder
from aetl_jax.objectives.registry import make_objective
from aetl_jax.training.guard import check_finite
from aetl_jax.training.launchers import launcher_from_config
from aetl_jax.training.compiler import train_compiler_options
from aetl_jax.training.loop import make_epoch_fn, resolve_runner
from aetl_jax.training.metrics_log import JsonlLog
from aetl_jax.training.state import TrainState
from aetl_jax.training.step import make_train_step
from aetl_jax.transfer.optim import learning_rate_schedule, make_optimizer

log = logging.getLogger(__name__)


# Where the encoder lives inside a saved pretraining checkpoint.
ENCODER_SUBTREE = ("state", "params", "encoder")


def checkpoint_dir(workdir) -> Path:
  return Path(workdir) / "pretrain" / "checkpoints"


def pretrain(config, train_images, eval_images, workdir, *, progress: bool = True,
             train_stream=None, num_train: int | None = None):
  """Pretrains ``config.model`` on ``train_images``; resumes from ``workdir``.

  Instead of in-memory ``train_images`` (None), ``train_stream(seed)`` may
  give an epoch of host batches ``{'image'}`` (e.g. ``tfds_stream`` over
  data on disk) with ``num_train`` examples. Returns (model, params,
  history). ``config.pretrain`` holds the schedule.
  """
  pcfg = config.pretrain
  image_shape = tuple(eval_images.shape[1:])
  model = build_autoencoder(config.model, image_shape)
  key = jax.random.PRNGKey(pcfg.seed)
  init_key, train_key = jax.random.split(key)
  # 'reconstruct' is deterministic and touches every parameter of every variant.
  params = model.init(init_key, jnp.zeros((1, *image_shape)), method="reconstruct")["params"]

  n = num_train if train_images is None else train_images.shape[0]
  steps_per_epoch = max(n // min(pcfg.batch_size, n), 1)
  schedule = learning_rate_schedule(pcfg.learning_rate, steps_per_epoch * pcfg.epochs,
                                    schedule=pcfg.schedule,
                                    warmup_steps=pcfg.warmup_epochs * steps_per_epoch)
  tx = make_optimizer(learning_rate=schedule, optimizer=pcfg.optimizer,
                      weight_decay=pcfg.weight_decay, l1_decay=pcfg.get("l1_decay", 0.0),
                      grad_clip_norm=pcfg.grad_clip_norm or None)
  state = TrainState.create(params, tx)
  launcher = launcher_from_config(config)
  step = make_train_step(make_objective(model, config.model, config.objective), tx,
                         axis_name=launcher.axis_name)
  compiler_options = train_compiler_options(config.model.family)
  epoch_fn = make_epoch_fn(step, batch_size=pcfg.batch_size,
                           runner=resolve_runner(pcfg.runner, config.model.family),
                           launcher=launcher, compiler_options=compiler_options)

  ckpt_dir = checkpoint_dir(workdir)
  metrics = JsonlLog(Path(workdir) / "metrics" / "pretrain.jsonl")
  metrics.repair()
  start_epoch = 0
  restored = checkpointing.restore_latest(ckpt_dir, {"state": state})
  if restored is not None:
    start_epoch, tree = restored
    state = tree["state"]
    metrics.keep(lambda r: r["epoch"] < start_epoch)
    log.info("pretraining: resumed from epoch %d in %s", start_epoch, ckpt_dir)
  checkpointing.write_sidecar(ckpt_dir, {"family": config.model.family,
                                         "variant": config.model.variant,
                                         "model": config.model.to_dict(),
                                         "image_shape": list(image_shape)})
  manager = checkpointing.make_manager(ckpt_dir, max_to_keep=pcfg.keep_checkpoints)
  state = launcher.replicate(state)

  data_path = "stream" if train_images is None else choose_data_path(
      pcfg.get("data_path", "memory"), train_images.nbytes, pcfg.get("memory_limit_mb", 1024.0))
  if train_stream is None:
    train_stream = lambda seed: array_stream({"image": train_images}, batch_size=pcfg.batch_size,
                                             seed=seed)
  if data_path == "stream":
    if launcher.kind != "jit":
      raise ValueError("pretrain.data_path='stream' runs with launch.launcher='jit' for now; "
                       "use data_path='memory' for pmap/shard_map")
    stream_epoch = make_stream_epoch_fn(step, compiler_options)
    log.info("pretraining: streaming %d images through tf.data", n)
  else:
    data = {"image": jax.device_put(train_images)}
  eval_images = jax.device_put(eval_images)
  bar = tqdm(range(start_epoch, pcfg.epochs), desc="pretrain", disable=not progress,
             initial=start_epoch, total=pcfg.epochs, leave=False)
  for epoch in bar:
    first_step = epoch * steps_per_epoch
    if data_path == "stream":
      batches = prefetch_to_device(numpy_batches(train_stream(pcfg.seed * 100_003 + epoch)))
      state, m = stream_epoch(state, batches, jax.random.fold_in(train_key, epoch))
    else:
      state, m = epoch_fn(state, data, jax.random.fold_in(train_key, epoch))
    m = {k: float(v) for k, v in m.items()}
    check_finite(m, phase="pretrain", epoch=epoch, first_step=first_step)
    m.pop("first_nonfinite_step")
    row = {"epoch": epoch, **{f"train_{k}": v for k, v in m.items()}}
    done = epoch + 1
    if done % pcfg.eval_every == 0 or done == pcfg.epochs:
      row.update({f"eval_{k}": v for k, v in
                  reconstruction_metrics(model, launcher.unreplicate(state).params,
                                                 eval_images).items()})
    metrics.append(row)
    bar.set_postfix(loss=f"{row['train_loss']:.4f}", refresh=False)
    if done % pcfg.checkpoint_every == 0 or done == pcfg.epochs:
      checkpointing.save(manager, done, {"state": launcher.unreplicate(state)})
  manager.close()
  return model, launcher.unreplicate(state).params, metrics.read()
