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
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from aetl_jax import checkpointing
from aetl_jax.evaluation.batched import accuracy, batched_apply
from aetl_jax.objectives.classification import make_classification_loss
from aetl_jax.training.guard import NonFiniteError, check_finite
from aetl_jax.training.launchers import make_launcher
from aetl_jax.training.compiler import train_compiler_options
from aetl_jax.training.loop import epoch_body, make_epoch_fn, resolve_runner
from aetl_jax.training.state import TrainState
from aetl_jax.training.step import make_train_step
from aetl_jax.transfer import probes
from aetl_jax.transfer.optim import learning_rate_schedule, make_optimizer
from aetl_jax.transfer.rules import freeze_and_multipliers, split_by_mask, trainable_mask
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
  launcher: str = "jit"
  num_devices: int = 0  # 0: every device
  model_family: str = "mlp"  # picks the 'auto' runner

  @classmethod
  def from_config(cls, cfg, launch=None, model_family: str = "mlp") -> "OptimSettings":
    extra = {"model_family": model_family}
    if launch is not None:
      extra.update(launcher=launch.launcher, num_devices=int(launch.num_devices))
    return cls(learning_rate=float(cfg.learning_rate), optimizer=cfg.optimizer,
               weight_decay=float(cfg.weight_decay), schedule=cfg.schedule,
               warmup_epochs=int(cfg.warmup_epochs), batch_size=int(cfg.batch_size),
               runner=cfg.runner, **extra)

  def make_launcher(self):
    return make_launcher(self.launcher, self.num_devices or None)


def _head_only(mask) -> bool:
  enc = jax.tree.leaves(mask["encoder"])
  return not any(enc) and all(jax.tree.leaves(mask["head"]))


@functools.lru_cache(maxsize=None)
def _param_shapes(model, input_shape):
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                           jnp.zeros((1, *input_shape)))["params"])


def _uses_cache(model, rules, input_shape, cache_features: bool) -> bool:
  """Head-only phases train on features computed once (when allowed)."""
  return cache_features and _head_only(trainable_mask(_param_shapes(model, input_shape), rules))


@functools.lru_cache(maxsize=None)
def _predict_fn(model):
  return jax.jit(lambda params, x: model.apply({"params": params}, x))


@functools.lru_cache(maxsize=None)
def _encode_fn(model):
  return jax.jit(lambda params, x: model.apply({"params": params}, x, method="encode"))


class PhaseProgram(NamedTuple):
  epoch_fn: Callable
  step: Callable
  tx: optax.GradientTransformation
  mask: Any
  cached: bool


@functools.lru_cache(maxsize=None)
def _phase_program(model, rules, opt: OptimSettings, num_train: int, epochs: int,
                   input_shape: tuple, cached: bool) -> PhaseProgram:
  """The compiled pieces of one phase; memoised so seeds reuse compilations."""
  mask, mults = freeze_and_multipliers(_param_shapes(model, input_shape), rules)
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
  launcher = opt.make_launcher()
  step = make_train_step(make_classification_loss(apply), tx, step_mask,
                         axis_name=launcher.axis_name)
  runner = resolve_runner(opt.runner, opt.model_family)
  epoch_fn = make_epoch_fn(step, batch_size=opt.batch_size, runner=runner, launcher=launcher,
                           compiler_options=train_compiler_options(
                               None if cached else opt.model_family))
  return PhaseProgram(epoch_fn, step, tx, step_mask, cached)


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
    prog = _phase_program(model, phase.rules, opt, num_train, phase.epochs, input_shape,
                          _uses_cache(model, phase.rules, input_shape, cache_features))
    return prog.cached, prog.epoch_fn, prog.tx, prog.mask

  launcher = opt.make_launcher()

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
      restored_state = (launcher.replicate(tree["state"]) if resume_epoch < phase_end
                        else None)
      log.info("%s: resumed at epoch %d of phase '%s'", strategy.name, resume_epoch, phase.name)
    if phase_end <= resume_epoch:
      phase_log.append({"phase": phase.name, "cached_features": cached, "resumed": True})
      epoch_index = phase_end
      continue
    if cached and cached_features is None:
      cached_features = _features(model, params, train["input"])
    phase_data = ({"input": cached_features, "label": train["label"]} if cached else train)
    state = (restored_state if restored_state is not None
             else launcher.replicate(fresh_state(cached, tx, mask, params)))
    restored_state = None
    if epoch_index < resume_epoch:
      epoch_index = resume_epoch
    start_params = params
    def merged(st, params=params, cached=cached):
      st = launcher.unreplicate(st)
      return {**params, "head": st.params} if cached else st.params
    metrics = {}
    while epoch_index < phase_end:
      first_step = int(launcher.unreplicate(state).step)
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
        checkpointing.save(manager, epoch_index, {"params": merged(state),
                                                  "state": launcher.unreplicate(state)})
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


# ---------------------------------------------------------------------------
# K seeds at once: a whole cell as one pure program, vmapped over seeds.


@functools.lru_cache(maxsize=None)
def _seeds_program(model, strategy: Strategy, opt: OptimSettings, num_train: int,
                   input_shape: tuple, cache_features: bool):
  """``jit(vmap(cell))``: every phase and epoch of a cell in one compiled call.

  ``cell(params, train, rng) -> (params, per-phase per-epoch metrics)``; the
  epoch loop is a ``lax.scan`` and epoch ``e`` uses ``fold_in(rng, e)``, as in
  :func:`run_strategy`, so both give the same result.
  """
  phases = [(phase, _phase_program(model, phase.rules, opt, num_train, phase.epochs, input_shape,
                                   _uses_cache(model, phase.rules, input_shape, cache_features)))
            for phase in strategy.phases]

  def cell(params, train, rng):
    features = None
    history = []
    epoch_index = 0
    for phase, prog in phases:
      body = epoch_body(prog.step, batch_size=opt.batch_size)
      if prog.cached:
        if features is None:
          features = model.apply({"params": params}, train["input"], method="encode")
        phase_data = {"input": features, "label": train["label"]}
        state = TrainState.create(params["head"], prog.tx)
      else:
        phase_data = train
        state = TrainState.create(params, prog.tx, prog.mask)

      def one_epoch(state, e, body=body, phase_data=phase_data):
        return body(state, phase_data, jax.random.fold_in(rng, e))

      state, metrics = jax.lax.scan(one_epoch, state,
                                    jnp.arange(epoch_index, epoch_index + phase.epochs))
      params = {**params, "head": state.params} if prog.cached else state.params
      history.append(metrics)
      epoch_index += phase.epochs
    return params, history

  options = train_compiler_options(opt.model_family) or None
  return (jax.jit(jax.vmap(cell), compiler_options=options),
          [prog.cached for _, prog in phases])


@functools.lru_cache(maxsize=None)
def _predict_seeds_fn(model):
  return jax.jit(jax.vmap(lambda params, x: model.apply({"params": params}, x)))


def run_strategy_seeds(strategy: Strategy, model, params, data: dict, opt: OptimSettings, rngs, *,
                       probe_cfg=None, cache_features: bool = True):
  """:func:`run_strategy` for K seeds at once (every leaf has a leading seed axis).

  ``params``, ``data['train'|'val'|'test']`` and ``rngs`` are stacked over
  seeds (a shared test split may be stacked by broadcasting). Returns
  (stacked params, list of K result dicts, list of K per-epoch histories).
  """
  num_seeds = int(rngs.shape[0])
  if strategy.probe is not None:
    results, out = [], []
    for k in range(num_seeds):
      pick = lambda t: jax.tree.map(lambda a: a[k], t)
      p, r = run_strategy(strategy, model, pick(params), {n: pick(d) for n, d in data.items()},
                          opt, rngs[k], probe_cfg=probe_cfg)
      out.append(p)
      results.append(r)
    return jax.tree.map(lambda *xs: jnp.stack(xs), *out), results, [[] for _ in results]

  train = data["train"]
  num_train = int(train["label"].shape[1])
  input_shape = tuple(train["input"].shape[2:])
  # Seeds are the parallel axis here: the vmapped program runs on one device.
  opt = dataclasses.replace(opt, launcher="jit", num_devices=0)
  program, cached = _seeds_program(model, strategy, opt, num_train, input_shape, cache_features)
  params, history = program(params, train, rngs)
  histories = [[] for _ in range(num_seeds)]
  phase_logs = [[] for _ in range(num_seeds)]
  epoch_index = 0
  for phase, metrics, was_cached in zip(strategy.phases, history, cached):
    metrics = jax.tree.map(np.asarray, metrics)  # (K, epochs)
    for k in range(num_seeds):
      bad = np.flatnonzero(metrics["first_nonfinite_step"][k] >= 0)
      if len(bad):
        raise NonFiniteError(f"non-finite loss or gradient in phase '{strategy.name}/{phase.name}' "
                             f"of seed {k} at epoch {epoch_index + int(bad[0])}")
      for e in range(phase.epochs):
        histories[k].append({"phase": phase.name, "epoch": epoch_index + e,
                             **{n: float(v[k, e]) for n, v in metrics.items()
                                if n != "first_nonfinite_step"}})
      phase_logs[k].append({"phase": phase.name, "cached_features": was_cached,
                            "final_train_loss": float(metrics["loss"][k, -1])})
    epoch_index += phase.epochs

  predict = _predict_seeds_fn(model)

  def acc(split):
    if split["label"].shape[1] == 0:
      return [None] * num_seeds
    logits = np.asarray(predict(params, split["input"]))
    return list(np.mean(np.argmax(logits, -1) == np.asarray(split["label"]), axis=1).astype(float))

  test, val, tr = acc(data["test"]), acc(data["val"]), acc(train)
  results = [{"test_accuracy": test[k], "val_accuracy": val[k], "train_accuracy": tr[k],
              "phases": phase_logs[k], "vmapped_seeds": num_seeds} for k in range(num_seeds)]
  return params, results, histories
