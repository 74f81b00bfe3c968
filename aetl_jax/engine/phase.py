"""A phase of training as data, and the compiled pieces it turns into.

A :class:`Phase` says *what* trains and *on what*: an objective (a pure
``(params, batches, rng) -> (loss, aux)`` over named roles), the feed that
maps those roles to data streams, path rules (freeze / learning-rate and
weight-decay multipliers), optimiser settings and a length in epochs. A
phase may train one subtree only (``subtree='head'``) on data its
``prepare`` function derives at the phase start (cached encoder features).

:func:`build_program` turns a phase into its :class:`Program`: the optimiser
over the trainable leaves, the pure epoch body (which ``jax.vmap`` can
batch over seeds), and the epoch function of the runtime's runner and
launcher. Programs are cached on hashable specifications (bounded).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import optax

from aetl_jax.core.optim import learning_rate_schedule, make_optimizer
from aetl_jax.core.rules import (Rule, freeze_and_multipliers, split_by_mask,
                                 weight_decay_multipliers)
from aetl_jax.core.statistics import statistics_mask
from aetl_jax.engine.loop import Feed, epoch_body, make_epoch_fn, make_stream_epoch_fn
from aetl_jax.engine.runtime import Runtime
from aetl_jax.engine.state import TrainState
from aetl_jax.engine.step import make_train_step

EVERYTHING: tuple[Rule, ...] = ((".*", 1.0),)


@dataclasses.dataclass(frozen=True)
class Optim:
  """Hashable optimiser settings of a phase."""

  learning_rate: float
  optimizer: str = "adam"
  weight_decay: float = 0.0
  l1_decay: float = 0.0
  schedule: str = "cosine"
  warmup_epochs: int = 0
  grad_clip_norm: float = 0.0
  momentum: float = 0.9  # 'sgd' only
  nesterov: bool = True  # 'sgd' only

  @classmethod
  def from_config(cls, cfg) -> "Optim":
    """From a config section with learning_rate, optimizer, weight_decay, schedule ..."""
    return cls(learning_rate=float(cfg.learning_rate), optimizer=cfg.optimizer,
               weight_decay=float(cfg.weight_decay), l1_decay=float(cfg.get("l1_decay", 0.0)),
               schedule=cfg.schedule, warmup_epochs=int(cfg.warmup_epochs),
               grad_clip_norm=float(cfg.get("grad_clip_norm", 0.0)))

  def scaled(self, lr_mult: float) -> "Optim":
    return dataclasses.replace(self, learning_rate=self.learning_rate * lr_mult)


@dataclasses.dataclass(frozen=True)
class Phase:
  name: str
  loss: Callable  # (params, {role: batch}, rng) -> (scalar, {name: scalar})
  feed: Feed  # ((role, stream, global batch size), ...); the first role sets the epoch
  epochs: int
  optim: Optim
  rules: tuple[Rule, ...] = EVERYTHING  # (regex, 'frozen' | lr multiplier)
  wd_rules: tuple[Rule, ...] = ()  # (regex, weight-decay multiplier); unnamed leaves: 1.0
  subtree: str | None = None  # train params[subtree] only (the loss sees that subtree)
  prepare: Callable | None = None  # (params, data) -> data, once at the phase start

  @property
  def streams(self) -> tuple[str, ...]:
    return tuple(s for _, s, _ in self.feed)


class Program(NamedTuple):
  phase: Phase
  tx: optax.GradientTransformation
  mask: Any  # trainable mask over the trained tree, None = all
  step: Callable
  body: Callable  # pure (state, data, rng) -> (state, metrics), one device
  epoch_fn: Callable  # the runtime's runner and launcher
  stream_epoch_fn: Callable  # (state, iterator of device batches, rng), one device
  schedule: Callable  # optimiser step -> learning rate (before per-leaf multipliers)

  def trained(self, params):
    return params if self.phase.subtree is None else params[self.phase.subtree]

  def init_state(self, params) -> TrainState:
    return TrainState.create(self.trained(params), self.tx, self.mask)

  def merge(self, params, trained):
    return trained if self.phase.subtree is None else {**params, self.phase.subtree: trained}


def tree_spec(params) -> tuple:
  """A hashable description of a tree's structure, shapes and dtypes."""
  leaves, treedef = jax.tree.flatten(params)
  return treedef, tuple((tuple(x.shape), str(x.dtype)) for x in leaves)


def _template(spec):
  treedef, leaves = spec
  return jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(s, d) for s, d in leaves])


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  return max(num_examples // min(batch_size, num_examples), 1)


@functools.lru_cache(maxsize=64)
def build_program(phase: Phase, spec: tuple, lead_size: int, runtime: Runtime) -> Program:
  """The compiled pieces of ``phase`` for parameters of ``spec`` (see :func:`tree_spec`)."""
  template = _template(spec)
  mask, mults = freeze_and_multipliers(template, phase.rules)
  wd = weight_decay_multipliers(template, phase.wd_rules) if phase.wd_rules else None
  if phase.subtree is not None:
    mask, mults = mask[phase.subtree], mults[phase.subtree]
    wd = None if wd is None else wd[phase.subtree]
  stats = statistics_mask(mask)
  stats_mask = mask if any(jax.tree.leaves(stats)) else None  # BatchNorm statistics to update
  mask = jax.tree.map(lambda m, s: bool(m) and not s, mask, stats)  # never differentiated
  step_mask = None if all(jax.tree.leaves(mask)) else mask
  if step_mask is not None:
    mults = split_by_mask(mults, mask)[0]
    wd = None if wd is None else split_by_mask(wd, mask)[0]
  o = phase.optim
  per_epoch = steps_per_epoch(lead_size, phase.feed[0][2])
  schedule = learning_rate_schedule(o.learning_rate, per_epoch * phase.epochs, schedule=o.schedule,
                                    warmup_steps=o.warmup_epochs * per_epoch)
  tx = make_optimizer(learning_rate=schedule, optimizer=o.optimizer, weight_decay=o.weight_decay,
                      l1_decay=o.l1_decay, grad_clip_norm=o.grad_clip_norm or None,
                      momentum=o.momentum, nesterov=o.nesterov,
                      lr_multipliers=None if all(v == 1.0 for v in jax.tree.leaves(mults)) else mults,
                      wd_multipliers=wd)
  step = make_train_step(phase.loss, tx, step_mask, axis_name=runtime.launcher.axis_name,
                         stats_mask=stats_mask)
  single = make_train_step(phase.loss, tx, step_mask, stats_mask=stats_mask)
  epoch_fn = make_epoch_fn(step, feed=phase.feed, runner=runtime.runner,
                           launcher=runtime.launcher, compiler_options=runtime.options)
  return Program(phase, tx, step_mask, step, epoch_body(single, feed=phase.feed), epoch_fn,
                 make_stream_epoch_fn(single, runtime.options), schedule)
