"""The registry of transfer strategies (``transfer.strategies``) and what a strategy gets.

A strategy is a function ``(ctx: StrategyContext) -> Strategy`` registered by
name with the ``transfer`` keys it owns. It says how the classifier starts
(``init``: the pretrained encoder or random) and returns the phases that
train it, built with ``ctx.phase(...)`` from path rules, or names a probe::

    @STRATEGIES.register("bitfit")
    def bitfit(ctx):
      rules = (("head/.*", 1.0), (".*/bias", 1.0), (".*", FROZEN))
      return Strategy("bitfit", "pretrained", (ctx.phase("bitfit", rules, ctx.cfg.epochs),))

``ctx.phase`` attaches the objective (classification by default), the data
streams it reads, the optimiser settings of the ``transfer`` section and,
for phases that train the head alone on a frozen encoder, the feature cache
(the encoder runs once per phase instead of every step).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from aetl_jax.core.registry import Registry
from aetl_jax.core.rules import FROZEN, Rule, trainable_mask
from aetl_jax.engine.phase import EVERYTHING, Optim, Phase  # noqa: F401 - strategies use it
from aetl_jax.engine.step import VALUES
from aetl_jax.models.family import FAMILIES
from aetl_jax.objectives.augmentation import augmenting, check_chain
from aetl_jax.objectives.classification import make_classification_loss
from aetl_jax.objectives.registry import make_loss
from aetl_jax.objectives.registry import roles as objective_roles
from aetl_jax.models.variables import variables

STRATEGIES = Registry("strategy", "transfer.strategies")

HEAD_ONLY: tuple[Rule, ...] = (("encoder/.*", FROZEN), ("head/.*", 1.0))
# Which data stream plays which role of an objective in a target task.
TARGET_STREAMS = {"labelled": "target_labelled", "images": "target_unlabelled",
                  "source": "source_labelled"}


@dataclasses.dataclass(frozen=True)
class Strategy:
  """``init`` is 'pretrained' (encoder from the checkpoint), 'source' (encoder and head of
  a classifier pretrained on the labelled source) or 'random'.

  A strategy either trains through ``phases`` or fits a closed-form ``probe``
  (a name in :data:`aetl_jax.strategies.probes.PROBES`) on frozen features.
  With ``labels_from`` (a probe that labels the pool: ``manifold.POOL_PROBES``) its
  labelled stream is the whole target pool, each image with that probe's label, fitted on
  the pretrained encoder's codes (the cell's labelled images keep their own).
  """

  name: str
  init: str
  phases: tuple[Phase, ...] = ()
  probe: str | None = None
  labels_from: str | None = None
  # params -> params once the encoder (and head) are loaded, before training: e.g. ADDA's
  # target encoder starts as a copy of the source encoder.
  start: Callable | None = None


@dataclasses.dataclass(frozen=True)
class StrategyContext:
  """What a strategy builds its phases from."""

  name: str
  cfg: Any  # the transfer config section
  model: Any  # the target model (Classifier, or AutoencoderClassifier for joint objectives)
  params: Any  # a parameter tree of ``model`` (names and shapes; values unused)
  optim: Optim
  cache_features: bool = True
  budget: int | None = None  # labels per class of the cell (0: none; None: not known yet)

  def blocks(self) -> list[str]:
    return encoder_blocks(self.params["encoder"])

  def phase(self, name: str, rules, epochs: int, *, objective: str = "classification",
            lr_mult: float = 1.0, objective_cfg=None, batch_sizes: dict | None = None,
            wd_rules=None, roles: tuple[str, ...] | None = None,
            optim: Optim | None = None, min_steps: int | None = None) -> Phase:
    """A phase of ``objective`` over the streams its roles name (``roles``: a subset or
    another order; the first one sets the epoch); weight-decay multipliers from
    ``wd_rules`` (default: the config's ``transfer.wd_rules``); ``optim`` replaces the
    ``transfer`` section's optimiser settings; at least ``min_steps`` optimiser steps
    (default: ``transfer.min_steps``)."""
    if min_steps is None:
      min_steps = int(self.cfg.get("min_steps", 0))
    rules = tuple(tuple(r) for r in rules)
    if wd_rules is None:
      wd_rules = tuple(tuple(r) for r in self.cfg.get("wd_rules", ()))
    optim = optim or self.optim
    optim = optim.scaled(lr_mult) if lr_mult != 1.0 else optim
    bs = self.cfg.batch_size
    feed = tuple((role, TARGET_STREAMS[role], (batch_sizes or {}).get(role, bs))
                 for role in (roles or objective_roles(objective)))
    chain = check_chain(self.cfg.get("augment", ()), "transfer.augment")
    l2 = 0.0
    if objective == "classification" and self._head_only(rules):
      # A linear probe: logistic regression on the frozen codes, trained to convergence (on
      # cached codes it is cheap) with scikit-learn's L2 penalty ||W||² / (2 C n), C =
      # transfer.probe_c, n the labelled examples.
      n = (self.budget or 0) * self.model.num_classes
      l2 = 1.0 / (float(self.cfg.get("probe_c", 1.0)) * n) if n else 0.0
      min_steps = max(min_steps, int(self.cfg.get("probe_steps", 0)))
      if self.cache_features and not chain:
        return Phase(name, _head_loss(self.model, bool(l2)), feed, epochs, optim, rules,
                     tuple(wd_rules), subtree="head", prepare=_features(self.model),
                     min_steps=min_steps, values=((PROBE_L2, l2),) if l2 else ())
    loss, values = objective_loss(objective, self.model, objective_cfg)
    if l2:
      loss = _with_l2(loss, _head_kernel)
      values = (*values, (PROBE_L2, l2))
    if chain:  # augmented labelled images: features cannot be cached
      loss = augmenting(loss, chain, ("labelled", "source"))
    return Phase(name, loss, feed, epochs, optim, rules, tuple(wd_rules), min_steps=min_steps,
                 values=values)

  def _head_only(self, rules) -> bool:
    mask = trainable_mask(self.params, rules)
    others = [k for k in mask if k != "head"]
    return (all(jax.tree.leaves(mask["head"]))
            and not any(l for k in others for l in jax.tree.leaves(mask[k])))


def objective_loss(objective: str, model, cfg=None):
  """(loss, run-time values) of the registered objective for ``model`` with the keys ``cfg``
  (a dict or a ConfigDict; see ``objectives.registry.make_loss``). The loss is shared with
  every equal request, so equal phases share compilations."""
  return _objective_loss(objective, model, ml_collections.FrozenConfigDict(dict(cfg or {})))


@functools.lru_cache(maxsize=64)
def _objective_loss(objective: str, model, cfg: ml_collections.FrozenConfigDict):
  """One loss function per (objective, model, keys): equal phases share compilations."""
  return make_loss(objective, model, cfg)


# The probe's L2 strength: a run-time value of its step (``batches['values']``), not a constant,
# so probes that differ only in it (another budget of the same size, another probe_c) share
# their compiled programs.
PROBE_L2 = "probe_l2"


def _head_kernel(params):
  return params["head"]["kernel"]


def _kernel(head):
  return head["kernel"]


@functools.lru_cache(maxsize=32)
def _with_l2(loss_fn, kernel):
  """``loss_fn`` + ``values['probe_l2']`` × ||kernel(params)||² / 2 (the head's kernel; its
  bias is not penalised, as scikit-learn's LogisticRegression does not)."""

  def penalised(params, batches, rng):
    loss, aux = loss_fn(params, batches, rng)
    penalty = 0.5 * batches[VALUES][PROBE_L2] * jnp.sum(kernel(params) ** 2)
    return loss + penalty, {**aux, "l2_penalty": penalty}

  return penalised


@functools.lru_cache(maxsize=32)
def _head_loss(model, penalised: bool = False):
  """Cross-entropy of the head on cached features (+ the L2 value × ||kernel||² / 2)."""
  ce = make_classification_loss(
      lambda head, f, rng: model.apply({"params": {"head": head}}, f, method="classify_features"))
  return _with_l2(ce, _kernel) if penalised else ce


@functools.lru_cache(maxsize=32)
def _features(model):
  """``prepare``: the labelled stream's images replaced by encoder features (computed once)."""
  encode = jax.jit(lambda params, x: model.apply(variables(params), x, method="encode"))

  def prepare(params, data):
    labelled = data["target_labelled"]
    return {**data, "target_labelled": {**labelled, "image": encode(params, labelled["image"])}}

  return prepare


def encoder_blocks(encoder_params) -> list[str]:
  """Block names of an encoder subtree, input to output: ``block_<i>`` in natural order, or
  the order a family declares (``blocks``: torchvision's conv1, bn1, layer1 … layer4)."""
  names = list(encoder_params)
  if all(re.fullmatch(r"block_\d+", n) for n in names):
    return sorted(names, key=lambda n: int(n.removeprefix("block_")))
  for family in FAMILIES.names():
    order = FAMILIES.get(family).info.get("blocks")
    if order and set(names) <= set(order):
      return [b for b in order if b in names]
  raise ValueError(f"encoder children {', '.join(names)} are neither block_<i> nor a family's "
                   "declared blocks; block-wise strategies need one of them")


def block_rule(blocks, value) -> Rule:
  return ("encoder/(" + "|".join(re.escape(b) for b in blocks) + ")/.*", value)


def build_strategy(name: str, ctx: StrategyContext) -> Strategy:
  return STRATEGIES.get(name).fn(dataclasses.replace(ctx, name=name))


def target_model_kind(name: str) -> str:
  """'classifier', 'autoencoder_classifier' (strategies whose objective reconstructs) or
  'domain_classifier' (adversarial adaptation)."""
  return STRATEGIES.get(name).info.get("model", "classifier")


def needs_target_labels(name: str) -> bool:
  return STRATEGIES.get(name).info.get("needs_target_labels", True)


def needs_source_labels(name: str) -> bool:
  return STRATEGIES.get(name).info.get("needs_source_labels", False)
