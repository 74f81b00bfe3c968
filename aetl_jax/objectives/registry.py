"""The registry of objectives (``objective.name``).

An objective registers ``make(model, objective_cfg) -> loss`` where ``loss``
is pure: ``(params, batches, rng) -> (scalar, {name: scalar})`` and
``batches`` maps the objective's *roles* to batches (``images``: unlabelled
``{'image'}``, ``labelled``: ``{'image', 'label'}``). ``info`` says which
roles it reads and which model it trains (``model``: ``autoencoder``,
``vae``, ``mae``, ``classifier`` or ``autoencoder_classifier``);
``model_defaults`` are model keys it needs (a VAE's ``latent_dim``).
"""

from __future__ import annotations

from aetl_jax.core.registry import Registry
from aetl_jax.models.variables import uses_batch_norm

OBJECTIVES = Registry("objective", "objective.name")


def make_objective(model, ocfg):
  """The pure loss of the objective ``ocfg.name`` for ``model``."""
  check_batch_norm(ocfg.name, model)
  return OBJECTIVES.get(ocfg.name).fn(model, ocfg)


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
