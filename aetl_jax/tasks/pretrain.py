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

from aetl_jax.core.config import ConfigError
from aetl_jax.data.streaming import array_stream, choose_data_path, numpy_batches, prefetch_to_device
from aetl_jax.engine import checkpoint
from aetl_jax.engine.driver import HostStream, run_phases
from aetl_jax.engine.metrics_log import JsonlLog, Logs, TensorBoard
from aetl_jax.engine.phase import Optim, Phase
from aetl_jax.engine.runtime import runtime_from_config
from aetl_jax.engine.store import CheckpointStore
from aetl_jax.evaluation.reconstruction import reconstruct, reconstruction_metrics
from aetl_jax.evaluation.batched import accuracy, batched_apply
from aetl_jax.models.registry import build_model, check_input_shape, classifies, init_method, reconstructs
from aetl_jax.objectives.registry import make_loss, model_kind
from aetl_jax.objectives.registry import roles as objective_roles
from aetl_jax.transfer.encoder import ENCODER_SUBTREE, backbone_weights  # noqa: F401 - re-exported
from aetl_jax.models.variables import tree_of, variables


def checkpoint_dir(workdir) -> Path:
  return Path(workdir) / "pretrain" / "checkpoints"


# Which source stream plays which role of a pretraining objective.
SOURCE_STREAMS = {"images": "source", "labelled": "source_labelled"}


def pretrain_model(config, image_shape, num_classes: int | None = None):
  return build_model(config.model, image_shape, model_kind(config.objective.name), num_classes)


def check_unlabelled_autoencoder(config, image_shape, task: str) -> None:
  """ConfigError unless ``config`` trains an autoencoder on unlabelled images of
  ``image_shape`` (the one-class and clustering tasks; ``task`` names the task's need)."""
  name = config.objective.name
  if objective_roles(name) != ("images",):
    raise ConfigError(f"config key 'objective.name': {task} from unlabelled images; "
                      f"{name!r} needs labels")
  try:
    check_input_shape(config.model, tuple(image_shape), model_kind(name))
  except ValueError as e:
    raise ConfigError(f"config key 'model': {e}") from None


def check_source(config, *, labelled: bool, streamed: bool = False) -> None:
  """ValueError when the pretraining objective needs what the source cannot give."""
  name = config.objective.name
  roles = objective_roles(name)
  unknown = [r for r in roles if r not in SOURCE_STREAMS]
  if unknown:
    raise ValueError(f"objective {name!r} reads role(s) {', '.join(unknown)}; pretraining "
                     f"provides: {', '.join(SOURCE_STREAMS)}")
  if "labelled" in roles and not labelled:
    raise ValueError(f"objective {name!r} trains on labelled source images, but the source has "
                     f"no labels here (a streamed source, or a dataset without labels); use an "
                     f"unsupervised objective (reconstruction, denoising, sparse, vae, mae)")
  if "labelled" in roles and streamed:
    raise ValueError(f"objective {name!r} needs source labels in memory; set "
                     f"data.stream_source=False")


def pretrain(config, train_images, eval_images, workdir, *, progress: bool = True,
             train_stream=None, num_train: int | None = None, train_labels=None,
             num_classes: int | None = None, eval_labels=None, vocabulary: str | None = None):
  """Pretrains ``config.model`` with ``config.objective`` on ``train_images``; resumes.

  Instead of in-memory ``train_images`` (None), ``train_stream(seed)`` may
  give an epoch of host batches ``{'image'}`` (e.g. ``tfds_stream`` over
  data on disk) with ``num_train`` examples. Objectives that classify read
  ``train_labels`` (``num_classes`` classes); with ``eval_labels`` their
  accuracy on ``eval_images`` is logged; ``vocabulary`` (a text model's tokenizer hash) is
  recorded beside the checkpoint. Returns (model, params, history).
  ``config.pretrain`` holds the schedule.
  """
  pcfg = config.pretrain
  image_shape = tuple(eval_images.shape[1:])
  check_source(config, labelled=train_labels is not None, streamed=train_images is None)
  model = pretrain_model(config, image_shape, num_classes)
  roles = objective_roles(config.objective.name)
  init_key, train_key = jax.random.split(jax.random.PRNGKey(pcfg.seed))
  params = tree_of(model.init(init_key, jnp.zeros((1, *image_shape)), method=init_method(model)))
  if config.model.get("weights"):  # a backbone: torchvision's or another run's weights
    params = {**params, "encoder": backbone_weights(config.model, params["encoder"], workdir)}
  runtime = runtime_from_config(config, "pretrain", image_shape)
  feed = tuple((role, SOURCE_STREAMS[role], pcfg.batch_size) for role in roles)
  loss, values = make_loss(config.objective.name, model, config.objective)
  phase = Phase("pretrain", loss, feed, pcfg.epochs, Optim.from_config(pcfg), values=values)
  ckpt_dir = checkpoint_dir(workdir)
  checkpoint.write_sidecar(ckpt_dir, {"family": config.model.family,
                                      "objective": config.objective.name,
                                      "model": config.model.to_dict(),
                                      "image_shape": list(image_shape),
                                      "num_classes": num_classes, "vocabulary": vocabulary})
  if pcfg.epochs == 0:  # the backbone as it is becomes the pretrained encoder
    store = CheckpointStore(ckpt_dir)
    if store.latest() is None:
      store.save(0, {"params": params, "step": 0})
    store.close()
    return model, params, []
  source = _source(config, train_images, train_stream, num_train, runtime)
  data = {"source": source}
  if "labelled" in roles:
    if isinstance(source, HostStream):
      raise ValueError(f"objective {config.objective.name!r} needs the labelled source in memory; "
                       f"set pretrain.data_path='memory' (or raise pretrain.memory_limit_mb)")
    data["source_labelled"] = {"image": source["image"], "label": jax.device_put(train_labels)}
  tensorboard = TensorBoard(Path(workdir) / "tensorboard" / "pretrain")
  evaluate = _evaluator(model, jax.device_put(eval_images), eval_labels, tensorboard)
  bar = _progress(progress, pcfg.epochs)
  log = Logs(JsonlLog(Path(workdir) / "metrics" / "pretrain.jsonl"), tensorboard,
             on_append=lambda row: _advance(bar, row))
  params, _ = run_phases(
      [phase], params, data, train_key, runtime=runtime,
      store=CheckpointStore(ckpt_dir, every=pcfg.checkpoint_every, keep=pcfg.keep_checkpoints),
      log=log, evaluate=evaluate, eval_every=pcfg.eval_every, metric_prefix="train_")
  bar.close()
  tensorboard.close()
  return model, params, log.read()


def _evaluator(model, eval_images, eval_labels, tensorboard):
  """Held-out reconstruction (autoencoders) and accuracy (classifiers, when labels are given)."""
  shown = eval_images[:8]
  can_reconstruct, can_classify = reconstructs(model), classifies(model)
  logits_fn = jax.jit(lambda q, x: model.apply(variables(q), x))

  def evaluate(p, epoch):
    out = {}
    if can_reconstruct:
      if shown.ndim == 4:  # images (a text model's reconstructions are token ids)
        tensorboard.images("reconstructions",
                           jnp.concatenate([shown, reconstruct(model, p, shown)], 2), epoch)
      out.update(reconstruction_metrics(model, p, eval_images))
    if can_classify and eval_labels is not None:
      logits = batched_apply(logits_fn, p, eval_images)
      out["accuracy"] = accuracy(logits, eval_labels)
    return out

  return evaluate


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
