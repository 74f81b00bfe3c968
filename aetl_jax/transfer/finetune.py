"""Runs a transfer strategy on the target task.

Each phase builds its optimiser over the trainable leaves its rules name and
trains with the shared epoch runner. When a phase trains the head alone, the
encoder's features are computed once and the head trains on them (no encoder
forward or backward pass per step). Compiled programs are memoised on
everything that shapes them, so seeds of one sweep cell share compilations.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from aetl_jax import checkpointing
from aetl_jax.evaluation.batched import accuracy, batched_apply
from aetl_jax.objectives.classification import make_classification_loss
from aetl_jax.training.guard import check_finite
from aetl_jax.training.loop import make_epoch_fn
from aetl_jax.training.state import TrainState
from aetl_jax.training.step import make_train_step
from aetl_jax.transfer import probes
from aetl_jax.transfer.optim import learning_rate_schedule, make_optimizer
from aetl_jax.transfer.rules import lr_multipliers, split_by_mask, trainable_mask
from aetl_jax.transfer.strategies import Strategy

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class OptimSettings:
  """Hashable optimiser settings of a fine-tuning phase."""

  learning_rate: float
  optimizer: str = "adam"
  weight_decay: float = 0.0
  schedule: str = "cosine"
  warmup_epochs: int = 0
  batch_size: int = 32
  runner: str = "scan"

  @classmethod
  def from_config(cls, cfg) -> "OptimSettings":
    return cls(learning_rate=float(cfg.learning_rate), optimizer=cfg.optimizer,
               weight_decay=float(cfg.weight_decay), schedule=cfg.schedule,
               warmup_epochs=int(cfg.warmup_epochs), batch_size=int(cfg.batch_size),
               runner=cfg.runner)


def _head_only(mask) -> bool:
  enc = jax.tree.leaves(mask["encoder"])
  return not any(enc) and all(jax.tree.leaves(mask["head"]))


@functools.lru_cache(maxsize=None)
def _predict_fn(model):
  return jax.jit(lambda params, x: model.apply({"params": params}, x))


@functools.lru_cache(maxsize=None)
def _encode_fn(model):
  return jax.jit(lambda params, x: model.apply({"params": params}, x, method="encode"))


@functools.lru_cache(maxsize=None)
def _head_fn(model):
  return jax.jit(lambda head, f: model.apply({"params": {"head": head}}, f,
                                             method="classify_features"))


@functools.lru_cache(maxsize=None)
def _phase_program(model, rules, opt: OptimSettings, num_train: int, epochs: int,
                   input_shape: tuple, cached: bool):
  """(epoch_fn, tx, mask) for one phase; memoised so seeds reuse compilations."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, *input_shape)))["params"])
  mask = trainable_mask(shapes, rules)
  mults = lr_multipliers(shapes, rules)
  steps_per_epoch = max(num_train // min(opt.batch_size, num_train), 1)
  schedule = learning_rate_schedule(opt.learning_rate, steps_per_epoch * epochs,
                                    schedule=opt.schedule,
                                    warmup_steps=opt.warmup_epochs * steps_per_epoch)
  if cached:
    mask, mults = mask["head"], mults["head"]
    apply = lambda head, f, rng: model.apply({"params": {"head": head}}, f,
                                             method="classify_features")
    step_mask = None
  else:
    apply = lambda params, x, rng: model.apply({"params": params}, x, train=True,
                                               rngs={"dropout": rng})
    step_mask = mask
    mults = split_by_mask(mults, mask)[0]
  tx = make_optimizer(learning_rate=schedule, optimizer=opt.optimizer,
                      weight_decay=opt.weight_decay, lr_multipliers=mults)
  step = make_train_step(make_classification_loss(apply), tx, step_mask)
  epoch_fn = make_epoch_fn(step, batch_size=opt.batch_size, runner=opt.runner)
  return epoch_fn, tx, step_mask


def _copy(tree):
  """The epoch runner donates its state: train on copies so that the caller's
  trees (one pretrained encoder shared by many cells, phase snapshots) survive."""
  return jax.tree.map(jnp.copy, tree)


def _features(model, params, x):
  return batched_apply(_encode_fn(model), params, x)


def evaluate(model, params, split) -> float:
  logits = batched_apply(_predict_fn(model), params, split["input"])
  return accuracy(logits, split["label"])


def run_strategy(strategy: Strategy, model, params, data: dict, opt: OptimSettings, rng, *,
                 probe_cfg=None, on_epoch: Callable[[dict], None] | None = None,
                 on_phase_end: Callable[[str, dict, dict], None] | None = None,
                 cache_features: bool = True, checkpoint_dir=None, checkpoint_every: int = 0):
  """Trains ``params`` (a classifier tree) by ``strategy``.

  ``data`` maps 'train', 'val', 'test' to dicts of device arrays
  {'input', 'label'}. Returns (params, result dict with accuracies).
  ``on_phase_end(phase_name, params_at_start, params_at_end)`` sees every
  phase boundary; ``cache_features=False`` forces the masked full
  forward/backward even for head-only phases (for benchmarks and tests).
  With ``checkpoint_dir``, the state is saved with Orbax at every phase end
  and every ``checkpoint_every`` epochs, and a rerun resumes from there.
  """
  num_classes = model.num_classes
  if strategy.probe is not None:
    feats = {k: (np.asarray(_features(model, params, v["input"])), np.asarray(v["label"]))
             for k, v in data.items()}
    if strategy.probe == "ridge":
      res = probes.ridge_probe(feats["train"], feats["val"], feats["test"],
                               num_classes=num_classes, l2_grid=tuple(probe_cfg.ridge_l2_grid))
    elif strategy.probe == "knn":
      res = probes.knn_probe(feats["train"], feats["val"], feats["test"],
                             k_grid=tuple(probe_cfg.knn_k_grid))
    else:
      raise ValueError(f"unknown probe {strategy.probe!r}; valid: 'ridge', 'knn'")
    return params, res

  train = data["train"]
  num_train = int(train["label"].shape[0])
  input_shape = tuple(train["input"].shape[1:])
  manager = None
  resume_epoch = 0
  if checkpoint_dir is not None:
    manager = checkpointing.make_manager(checkpoint_dir, max_to_keep=2)
    steps = checkpointing.finished_steps(checkpoint_dir)
    resume_epoch = steps[-1] if steps else 0

  def program(phase):
    cached = cache_features and _head_only(trainable_mask(jax.eval_shape(lambda: params),
                                                          phase.rules))
    return (cached, *_phase_program(model, phase.rules, opt, num_train, phase.epochs,
                                    input_shape, cached))

  def fresh_state(cached, tx, mask, params):
    return (TrainState.create(_copy(params["head"]), tx) if cached
            else TrainState.create(_copy(params), tx, mask))

  epoch_index = 0
  cached_features = None
  phase_log = []
  restored_state = None
  for phase in strategy.phases:
    phase_start, phase_end = epoch_index, epoch_index + phase.epochs
    cached, epoch_fn, tx, mask = program(phase)
    if resume_epoch and phase_start < resume_epoch <= phase_end:
      # Resume inside (or at the end of) this phase from the cell's checkpoint.
      template = fresh_state(cached, tx, mask, params)
      _, tree = checkpointing.restore_latest(checkpoint_dir, {"params": params, "state": template})
      params = tree["params"]
      restored_state = tree["state"] if resume_epoch < phase_end else None
      log.info("%s: resumed at epoch %d of phase '%s'", strategy.name, resume_epoch, phase.name)
    if phase_end <= resume_epoch:
      phase_log.append({"phase": phase.name, "cached_features": cached, "resumed": True})
      epoch_index = phase_end
      continue
    if cached and cached_features is None:
      cached_features = _features(model, params, train["input"])
    phase_data = ({"input": cached_features, "label": train["label"]} if cached else train)
    state = restored_state if restored_state is not None else fresh_state(cached, tx, mask, params)
    restored_state = None
    if epoch_index < resume_epoch:
      epoch_index = resume_epoch
    start_params = params
    merged = lambda st: {**params, "head": st.params} if cached else st.params
    metrics = {}
    while epoch_index < phase_end:
      first_step = int(state.step)
      state, metrics = epoch_fn(state, phase_data, jax.random.fold_in(rng, epoch_index))
      metrics = {k: float(v) for k, v in metrics.items()}
      check_finite(metrics, phase=f"{strategy.name}/{phase.name}", epoch=epoch_index,
                   first_step=first_step)
      metrics.pop("first_nonfinite_step")
      if on_epoch is not None:
        on_epoch({"phase": phase.name, "epoch": epoch_index, **metrics})
      epoch_index += 1
      if manager is not None and (epoch_index == phase_end or
                                  (checkpoint_every and epoch_index % checkpoint_every == 0)):
        checkpointing.save(manager, epoch_index, {"params": merged(state), "state": state})
    params = merged(state)
    if on_phase_end is not None:
      on_phase_end(phase.name, start_params, params)
    phase_log.append({"phase": phase.name, "cached_features": cached,
                      "final_train_loss": metrics.get("loss", math.nan)})
  if manager is not None:
    manager.close()

  result = {
      "test_accuracy": evaluate(model, params, data["test"]),
      "val_accuracy": evaluate(model, params, data["val"]) if data["val"]["label"].shape[0] else None,
      "train_accuracy": evaluate(model, params, train),
      "phases": phase_log,
  }
  return params, result
