"""The registry of objectives (``objective.name``).

An objective registers ``make(model, objective_cfg) -> loss`` where ``loss``
is pure: ``(params, batches, rng) -> (scalar, {name: scalar})`` and
``batches`` maps the objective's *roles* to batches (``images``: unlabelled
``{'image'}``, ``labelled``: ``{'image', 'label'}``). ``info`` says which
roles it reads and which model it trains (``model``: ``autoencoder``,
``vae``, ``mae``, ``classifier`` or ``autoencoder_classifier``);
``model_defaults`` are model keys it needs (a VAE's ``latent_dim``).

Keys declared ``Key(..., value=True)`` (an objective's weights) are run-time values:
:func:`make_loss` returns the loss with them read from ``batches['values']`` (the train
state's, see :mod:`aetl_jax.engine.step`) and the numbers for ``Phase.values``, so phases
that differ only in them share their compiled programs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from aetl_jax.core.registry import Registry
from aetl_jax.engine.step import VALUES
from aetl_jax.models.variables import uses_batch_norm

OBJECTIVES = Registry("objective", "objective.name")


def make_objective(model, ocfg):
  """The pure loss of the objective ``ocfg.name`` for ``model``, its keys as constants."""
  check_batch_norm(ocfg.name, model)
  return OBJECTIVES.get(ocfg.name).fn(model, ocfg)


def value_names(name: str, cfg) -> tuple[str, ...]:
  """The keys of objective ``name`` declared ``value=True`` that ``cfg`` holds."""
  return tuple(sorted(k for k, key in OBJECTIVES.get(name).keys.items()
                      if key.value and k in cfg))


@dataclasses.dataclass(frozen=True)
class ValuedLoss:
  """Objective ``name``'s loss for ``model`` with the keys ``cfg``, except ``names``: those
  are read from ``batches['values']`` when the step is traced. Equal for any values of them
  (``cfg`` holds them at 1.0), so its phases share their compiled programs."""

  name: str
  model: Any
  cfg: ml_collections.FrozenConfigDict
  names: tuple[str, ...]

  def __call__(self, params, batches, rng):
    values = batches[VALUES]
    batches = {k: v for k, v in batches.items() if k != VALUES}
    cfg = {**{k: self.cfg[k] for k in self.cfg.keys()}, **{k: values[k] for k in self.names}}
    return OBJECTIVES.get(self.name).fn(self.model, ml_collections.FrozenConfigDict(cfg))(
        params, batches, rng)


def make_loss(name: str, model, cfg=None):
  """(loss, values): objective ``name``'s loss for ``model`` with the keys ``cfg`` (a dict
  or a ConfigDict), and its run-time values ``((key, number), ...)`` for ``Phase.values``.
  Without value keys in ``cfg``: the plain loss and ``()``."""
  check_batch_norm(name, model)
  cfg = ml_collections.FrozenConfigDict(dict(cfg or {}))
  names = value_names(name, cfg)
  if not names:
    return OBJECTIVES.get(name).fn(model, cfg), ()
  constant = {**{k: cfg[k] for k in cfg.keys()}, **{k: 1.0 for k in names}}
  return (ValuedLoss(name, model, ml_collections.FrozenConfigDict(constant), names),
          tuple((k, float(cfg[k])) for k in names))


def check_batch_norm(name: str, model) -> None:
  """A model with BatchNorm trains only under objectives that return its running statistics
  (registered with ``batch_norm=True``)."""
  if uses_batch_norm(model) and name not in batch_norm_objectives():
    raise ValueError(f"objective {name!r} does not update BatchNorm statistics, which this "
                     f"model keeps; valid with BatchNorm: {', '.join(batch_norm_objectives())}")


def batch_norm_objectives() -> tuple[str, ...]:
  return tuple(n for n in OBJECTIVES.names() if OBJECTIVES.get(n).info.get("batch_norm"))


def roles(name: str) -> tuple[str, ...]:
  return tuple(OBJECTIVES.get(name).info.get("roles", ("images",)))


def model_kind(name: str) -> str:
  return OBJECTIVES.get(name).info.get("model", "autoencoder")
