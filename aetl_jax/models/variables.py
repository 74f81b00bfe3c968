"""Parameter trees ↔ Flax variable collections.

The project carries one tree per model (see :mod:`aetl_jax.core.statistics`):
the ``params`` collection with BatchNorm running statistics merged in at their
modules. :func:`variables` splits it back into Flax collections for ``apply``;
:func:`tree_of` merges what ``init`` returns. For models without BatchNorm the
tree *is* the ``params`` collection and nothing changes.
"""

from __future__ import annotations

from aetl_jax.core.statistics import FROZEN_PREFIX, RUNNING

_FROZEN = tuple(FROZEN_PREFIX + k for k in RUNNING)


def _split(tree):
  """(params, batch_stats, frozen_stats) nested dicts; empty dicts dropped."""
  params, stats, frozen = {}, {}, {}
  for k, v in tree.items():
    if isinstance(v, dict):
      parts = _split(v)
      for out, part in zip((params, stats, frozen), parts):
        if part:
          out[k] = part
    elif k in RUNNING:
      stats[k] = v
    elif k in _FROZEN:
      frozen[k.removeprefix(FROZEN_PREFIX)] = v
    else:
      params[k] = v
  return params, stats, frozen


def variables(tree) -> dict:
  """Flax variables of a project tree: ``params`` (+ ``batch_stats``, ``frozen_stats``)."""
  if not isinstance(tree, dict):
    return {"params": tree}
  params, stats, frozen = _split(tree)
  out = {"params": params}
  if stats:
    out["batch_stats"] = stats
  if frozen:
    out["frozen_stats"] = frozen
  return out


def _merge(a, b):
  out = dict(a)
  for k, v in b.items():
    out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) else v
  return out


def tree_of(flax_variables) -> dict:
  """The project tree of what ``model.init`` returned (params + running statistics)."""
  tree = flax_variables["params"]
  if "batch_stats" in flax_variables:
    tree = _merge(tree, flax_variables["batch_stats"])
  return tree


def apply_train(model, tree, *args, **kwargs):
  """``model.apply`` in training mode → (output, ``{'batch_stats': updates}`` or ``{}``).

  Objectives merge the second value into their aux dict; the train step writes
  the updated running statistics back into the tree.
  """
  v = variables(tree)
  if "batch_stats" not in v:
    return model.apply(v, *args, train=True, **kwargs), {}
  out, updates = model.apply(v, *args, train=True, mutable=["batch_stats"], **kwargs)
  return out, {"batch_stats": updates["batch_stats"]}


def apply(model, tree, *args, **kwargs):
  """``model.apply`` on a project tree (inference mode unless ``train=True`` is passed;
  running statistics are then used as given and not updated)."""
  return model.apply(variables(tree), *args, **kwargs)


def uses_batch_norm(model) -> bool:
  """Whether ``model`` (or its encoder/decoder) keeps BatchNorm running statistics."""
  parts = (model, getattr(model, "encoder", None), getattr(model, "decoder", None))
  return any(getattr(p, "batch_norm", False) for p in parts if p is not None)
