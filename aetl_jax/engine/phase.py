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
import jax.numpy as jnp
import numpy as np
import optax

from aetl_jax.core.optim import make_optimizer, schedule_factor
from aetl_jax.core.rules import (FROZEN, Rule, freeze_and_multipliers, split_by_mask, tree_paths,
                                 weight_decay_multipliers)
from aetl_jax.core.statistics import statistics_mask
from aetl_jax.engine.loop import (Feed, as_feed, epoch_body, make_epoch_fn,
                                  make_stream_epoch_fn)
from aetl_jax.engine.runtime import Runtime
from aetl_jax.engine.state import TrainState
from aetl_jax.engine.step import make_train_step, make_two_player_step

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
  beta1: float = 0.9  # 'adam' only (GANs: 0.5)

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
class Adversary:
  """The second player of a two-player phase (a discriminator, a domain critic): the leaves
  its ``rules`` leave trainable, minimising its own ``loss`` with its own ``optim``. The
  phase's ``rules`` and ``loss`` are the other player's; the two groups must not overlap.
  ``order``: 'alternating' (the adversary steps first, the player against its update) or
  'simultaneous' (both gradients at the same parameters)."""

  loss: Callable
  rules: tuple[Rule, ...]
  optim: Optim
  order: str = "alternating"


@dataclasses.dataclass(frozen=True)
class Phase:
  name: str
  loss: Callable  # (params, {role: batch}, rng) -> (scalar, {name: scalar})
  feed: Feed  # (Source(role, stream, global batch size), ...); the first sets the epoch
  epochs: int
  optim: Optim
  rules: tuple[Rule, ...] = EVERYTHING  # (regex, 'frozen' | lr multiplier)
  wd_rules: tuple[Rule, ...] = ()  # (regex, weight-decay multiplier); unnamed leaves: 1.0
  subtree: str | None = None  # train params[subtree] only (the loss sees that subtree)
  prepare: Callable | None = None  # (params, data) -> data, once at the phase start
  # At least this many optimiser steps: a phase over 100 labelled images in batches of 32 is
  # 3 steps an epoch, so its epochs are raised to reach min_steps (0: epochs as given).
  min_steps: int = 0
  adversary: Adversary | None = None  # a two-player phase (see Adversary)
  # The losses get ``batches['progress']``: the step's share of the phase, in [0, 1) (for
  # weights ramped over training, as DANN's gradient-reversal weight).
  progress: bool = False
  # ((name, number), ...): the loss's run-time values, in ``batches['values']`` (an
  # objective's weights, see ``objectives.registry.make_loss``); arguments of the compiled
  # step, not constants, like the learning rate.
  values: tuple[tuple[str, float], ...] = ()

  def __post_init__(self):  # plain (role, stream, batch_size) tuples become Sources
    object.__setattr__(self, "feed", as_feed(self.feed))

  @property
  def streams(self) -> tuple[str, ...]:
    return tuple(f.stream for f in self.feed)

  def for_size(self, num_examples: int) -> "Phase":
    """This phase with its length resolved for a first stream of ``num_examples``:
    ``epochs``, or more to give ``min_steps`` optimiser steps."""
    if not self.min_steps:
      return self
    need = -(-self.min_steps // steps_per_epoch(num_examples, self.feed[0].batch_size))
    return self if need <= self.epochs else dataclasses.replace(self, epochs=need)


# The optimiser settings held in the optimiser state (``optax.inject_hyperparams``) instead of
# compiled in: a decay only when not zero (a zero decay leaves its term out of the program).
INJECTED = ("learning_rate", "weight_decay", "l1_decay")


def injected(o: Optim) -> dict:
  """The values of ``o`` that are arguments of the compiled programs, by name."""
  return {k: float(getattr(o, k)) for k in INJECTED if k == "learning_rate" or getattr(o, k)}


# A learning-rate multiplier other than 1 in a compile key: which leaves are scaled is the
# program's structure, by how much a value in the optimiser state (``lr_multipliers``).
_SCALED = 0.5


def _unit_rules(rules) -> tuple:
  return tuple((r, v if v == FROZEN or v == 1.0 else _SCALED) for r, v in rules)


def compile_key(phase: Phase) -> Phase:
  """``phase`` without the values that are arguments of its compiled programs, not constants
  (learning rate, decays and the rules' learning-rate and weight-decay multipliers, and the
  schedule's length: held in the optimiser state, ``optax.inject_hyperparams``; the loss's
  ``values``: in the train state); phases equal but for them share one set of programs (a
  sweep over them compiles once per shape). Its length (``epochs``, ``min_steps``) is not in
  it either: the schedule reads its total as a value, and a loop over epochs is the caller's
  (the vmapped cell takes its length from the phase's size bucket, ``engine.driver``)."""
  unit = lambda o: dataclasses.replace(o, **{k: 1.0 for k in injected(o)})
  adversary = phase.adversary and dataclasses.replace(
      phase.adversary, optim=unit(phase.adversary.optim), rules=_unit_rules(phase.adversary.rules))
  return dataclasses.replace(phase, optim=unit(phase.optim), adversary=adversary,
                             epochs=0, min_steps=0, rules=_unit_rules(phase.rules),
                             wd_rules=tuple((r, 1.0) for r, _ in phase.wd_rules),
                             values=tuple((k, 1.0) for k, _ in phase.values))


def schedule_length(phase: Phase, lead_size: int, optim: Optim | None = None) -> dict:
  """The schedule's total and warm-up steps of ``phase`` (its length resolved) over a first
  stream of ``lead_size`` examples, for ``optim`` (default the phase's): values in the
  optimiser state, like the learning rate."""
  per_epoch = steps_per_epoch(lead_size, phase.feed[0].batch_size)
  return {"total_steps": float(per_epoch * phase.epochs),
          "warmup_steps": float((optim or phase.optim).warmup_epochs * per_epoch)}


def hyperparameters(phase: Phase, spec: tuple, lead_size: int) -> tuple[dict, ...]:
  """The values :func:`compile_key` takes out, for parameters of ``spec`` and a first stream
  of ``lead_size`` examples: (player's,) or (player's, adversary's)."""
  template = _template(spec)
  player = _Masks.of(template, phase.rules, phase.wd_rules, phase.subtree)
  out = ({**injected(phase.optim), **player.vectors(phase.optim),
          **schedule_length(phase, lead_size)},)
  if phase.adversary is not None:
    a = phase.adversary
    out += ({**injected(a.optim), **_Masks.of(template, a.rules, (), None).vectors(a.optim),
             **schedule_length(phase, lead_size, a.optim)},)
  return out


def _with_values(opt_state, values: dict):
  return opt_state._replace(hyperparams={**opt_state.hyperparams, **{
      k: jnp.asarray(v, jnp.float32) for k, v in values.items()}})


def merge_subtree(subtree: str | None, params, trained):
  """``params`` with the trained part replaced: ``trained`` itself when the phase trains the
  whole tree (``subtree`` None), else ``params`` with ``trained`` at key ``subtree``."""
  return trained if subtree is None else {**params, subtree: trained}


class Program(NamedTuple):
  phase: Phase
  tx: optax.GradientTransformation
  mask: Any  # trainable mask over the trained tree, None = all
  step: Callable
  body: Callable  # pure (state, data, rng) -> (state, metrics), one device
  epoch_fn: Callable  # the runtime's runner and launcher
  stream_epoch_fn: Callable  # (state, iterator of device batches, rng), one device
  unit: Callable  # (step, total_steps, warmup_steps) -> the schedule at learning rate 1
  # The injected values the state starts with, per optimiser (:func:`hyperparameters`).
  hyper: tuple = ({"learning_rate": 1.0},)
  values: dict = {}  # the loss's run-time values (``Phase.values``; numbers or traced arrays)

  @property
  def learning_rate(self):
    """The player's peak learning rate (a number or a traced array)."""
    return self.hyper[0]["learning_rate"]

  def with_hyper(self, hyper, values=None) -> "Program":
    """The same compiled pieces for other injected and run-time values (numbers or traced
    arrays)."""
    return self._replace(hyper=tuple(hyper), values=self.values if values is None else values)

  def trained(self, params):
    return params if self.phase.subtree is None else params[self.phase.subtree]

  def init_state(self, params) -> TrainState:
    state = TrainState.create(self.trained(params), self.tx, self.mask, self.values)
    if self.phase.adversary is None:
      return state.replace(opt_state=_with_values(state.opt_state, self.hyper[0]))
    return state.replace(opt_state=tuple(_with_values(s, v) for s, v in
                                         zip(state.opt_state, self.hyper)))

  def merge(self, params, trained):
    return merge_subtree(self.phase.subtree, params, trained)


def tree_spec(params) -> tuple:
  """A hashable description of a tree's structure, shapes and dtypes."""
  leaves, treedef = jax.tree.flatten(params)
  return treedef, tuple((tuple(x.shape), str(x.dtype)) for x in leaves)


def _template(spec):
  treedef, leaves = spec
  return jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(s, d) for s, d in leaves])


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  return max(num_examples // min(batch_size, num_examples), 1)


class _Masks(NamedTuple):
  """What the rules make of one group of leaves."""

  mask: Any  # the differentiated leaves (running statistics never are)
  step_mask: Any  # ``mask``, or None when every leaf trains
  stats_mask: Any  # the rules' mask where running statistics are updated, or None
  mults: Any  # learning-rate multipliers of the differentiated leaves
  wd: Any  # their weight-decay multipliers (None without wd_rules)

  @classmethod
  def of(cls, template, rules, wd_rules, subtree) -> "_Masks":
    """The rules' freeze mask and multipliers over ``template`` (or its ``subtree``)."""
    mask, mults = freeze_and_multipliers(template, rules)
    wd = weight_decay_multipliers(template, wd_rules) if wd_rules else None
    if subtree is not None:
      mask, mults = mask[subtree], mults[subtree]
      wd = None if wd is None else wd[subtree]
    stats = statistics_mask(mask)
    stats_mask = mask if any(jax.tree.leaves(stats)) else None  # BatchNorm statistics to update
    mask = jax.tree.map(lambda m, s: bool(m) and not s, mask, stats)  # never differentiated
    step_mask = None if all(jax.tree.leaves(mask)) else mask
    if step_mask is not None:
      mults = split_by_mask(mults, mask)[0]
      wd = None if wd is None else split_by_mask(wd, mask)[0]
    return cls(mask, step_mask, stats_mask, mults, wd)

  def vectors(self, o: Optim) -> dict:
    """The multipliers the optimiser state holds, one number per differentiated leaf: the
    learning rate's when one differs from 1, the weight decay's under wd_rules (when the
    decay is not zero)."""
    out = {}
    if any(v != 1.0 for v in jax.tree.leaves(self.mults)):
      out["lr_multipliers"] = np.asarray(jax.tree.leaves(self.mults), np.float32)
    if self.wd is not None and o.weight_decay:
      out["wd_multipliers"] = np.asarray(jax.tree.leaves(self.wd), np.float32)
    return out


def _as_tree(treedef, vector):
  """A multiplier vector (numbers or a traced array) as a tree of scalars."""
  return None if vector is None else jax.tree.unflatten(
      treedef, [vector[i] for i in range(treedef.num_leaves)])


class _Optimiser(NamedTuple):
  tx: optax.GradientTransformation  # its learning rate a hyperparameter in its state
  mask: Any  # the differentiated leaves (running statistics never are)
  step_mask: Any  # ``mask``, or None when every leaf trains
  stats_mask: Any  # the rules' mask where running statistics are updated, or None
  unit: Callable  # (step, total_steps, warmup_steps) -> the schedule at learning rate 1


# What a program's optimiser state holds before :meth:`Program.init_state` sets the phase's
# own values (:func:`hyperparameters`).
_PLACEHOLDER_LENGTH = {"total_steps": 1.0, "warmup_steps": 0.0}


def _optimiser(template, rules, wd_rules, o: Optim, subtree):
  """The optimiser of one group of leaves: the rules' freeze mask and multipliers over
  ``template`` (or its ``subtree``), the named schedule. The multipliers and the schedule's
  total and warm-up steps are values in its state (see :meth:`_Masks.vectors`,
  :func:`schedule_length`)."""
  m = _Masks.of(template, rules, wd_rules, subtree)
  treedef = jax.tree.structure(m.mults)
  unit = functools.partial(schedule_factor, o.schedule)

  # The decays and multipliers default to None, not 0: inject_hyperparams injects every
  # numeric argument, defaults included, and an injected decay puts its term in the chain
  # (see core.optim).
  def optimiser(learning_rate, total_steps, warmup_steps, weight_decay=None, l1_decay=None,
                lr_multipliers=None, wd_multipliers=None):
    wd = m.wd if m.wd is None or wd_multipliers is None else _as_tree(treedef, wd_multipliers)
    return make_optimizer(learning_rate=lambda count: learning_rate * unit(
                              count, total_steps, warmup_steps),
                          optimizer=o.optimizer, weight_decay=weight_decay, l1_decay=l1_decay,
                          grad_clip_norm=o.grad_clip_norm or None, momentum=o.momentum,
                          nesterov=o.nesterov, beta1=o.beta1,
                          lr_multipliers=_as_tree(treedef, lr_multipliers), wd_multipliers=wd)

  tx = optax.inject_hyperparams(optimiser)(**injected(o), **m.vectors(o), **_PLACEHOLDER_LENGTH)
  return _Optimiser(tx, m.mask, m.step_mask, m.stats_mask, unit)


def _both(player: _Optimiser, adversary: _Optimiser) -> optax.GradientTransformation:
  """The two players' optimiser states as one ``init`` (the step updates each itself)."""
  def init(params):
    return (player.tx.init(split_by_mask(params, player.mask)[0]),
            adversary.tx.init(split_by_mask(params, adversary.mask)[0]))

  def update(*_):
    raise NotImplementedError("a two-player phase updates through its own step")

  return optax.GradientTransformation(init, update)


def _two_player_steps(phase: Phase, template, runtime: Runtime):
  """(combined init, the step on the runtime's device axis, the step on one device, the
  player's schedule) of a phase with an adversary."""
  a = phase.adversary
  if phase.subtree is not None or phase.wd_rules:
    raise ValueError(f"phase '{phase.name}': a two-player phase trains the whole tree with "
                     f"its rules (no subtree, no wd_rules)")
  player = _optimiser(template, phase.rules, (), phase.optim, None)
  adversary = _optimiser(template, a.rules, (), a.optim, None)
  if player.stats_mask is not None or adversary.stats_mask is not None:
    raise ValueError(f"phase '{phase.name}': two-player phases do not update BatchNorm statistics")
  shared = [path for path, p, q in zip(tree_paths(template), jax.tree.leaves(player.mask),
                                       jax.tree.leaves(adversary.mask)) if p and q]
  if shared:
    raise ValueError(f"phase '{phase.name}': the player's and the adversary's rules both train "
                     f"{', '.join(shared[:5])}{' ...' if len(shared) > 5 else ''}; each "
                     f"parameter belongs to one player")
  def make(axis_name):
    return make_two_player_step(phase.loss, player.tx, player.mask, a.loss, adversary.tx,
                                adversary.mask, order=a.order, axis_name=axis_name,
                                progress=phase.progress)

  return _both(player, adversary), make(runtime.launcher.axis_name), make(None), player.unit


def build_program(phase: Phase, spec: tuple, lead_size: int, runtime: Runtime) -> Program:
  """The compiled pieces of ``phase`` for parameters of ``spec`` (see :func:`tree_spec`) and
  a first stream of ``lead_size`` examples, shared by every phase with the same
  :func:`compile_key`, its injected values (and schedule length) bound. The pieces are
  jitted functions: data of another shape compiles again, data padded to a shared size
  (``engine.loop.Padded``) does not."""
  hyper = hyperparameters(phase, spec, lead_size)  # checks the rules before anything is built
  return _build_program(compile_key(phase), spec, runtime)._replace(
      phase=phase, hyper=hyper, values=dict(phase.values))


@functools.lru_cache(maxsize=64)
def _build_program(phase: Phase, spec: tuple, runtime: Runtime) -> Program:
  template = _template(spec)
  if phase.adversary is not None:
    tx, step, single, unit = _two_player_steps(phase, template, runtime)
    step_mask = None
  else:
    o = _optimiser(template, phase.rules, phase.wd_rules, phase.optim, phase.subtree)
    tx, step_mask, unit = o.tx, o.step_mask, o.unit
    step = make_train_step(phase.loss, tx, step_mask, axis_name=runtime.launcher.axis_name,
                           stats_mask=o.stats_mask, progress=phase.progress)
    single = make_train_step(phase.loss, tx, step_mask, stats_mask=o.stats_mask,
                             progress=phase.progress)
  epoch_fn = make_epoch_fn(step, feed=phase.feed, runner=runtime.runner,
                           launcher=runtime.launcher, compiler_options=runtime.options)
  return Program(phase, tx, step_mask, step, epoch_body(single, feed=phase.feed), epoch_fn,
                 make_stream_epoch_fn(single, runtime.options), unit)
