"""Checkpoints written by aetl_jax before 0.3 resume as they are.

Since 0.3 every optimiser takes its learning rate from its state
(``optax.inject_hyperparams``): its state is an ``InjectHyperparamsState`` around the state
earlier versions saved. A checkpoint in the earlier layout is read into that inner state and
wrapped again; the update that follows is the one the earlier version would have made (the
schedule lives inside the wrapped optimiser and counts its own steps; the wrapper's count
only records updates).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _is_namedtuple(x) -> bool:
  return isinstance(x, tuple) and hasattr(x, "_fields")


def _injected(x) -> bool:
  """An ``optax.inject_hyperparams`` state (``InjectHyperparamsState`` or, in newer Optax,
  ``InjectStatefulHyperparamsState``)."""
  return _is_namedtuple(x) and {"count", "hyperparams", "inner_state"} <= set(x._fields)


def without_injection(tree):
  """``tree`` with every ``InjectHyperparamsState`` replaced by its inner state."""
  if _injected(tree):
    return without_injection(tree.inner_state)
  if _is_namedtuple(tree):
    return type(tree)(*(without_injection(x) for x in tree))
  if isinstance(tree, (tuple, list)):
    return type(tree)(without_injection(x) for x in tree)
  if isinstance(tree, dict):
    return {k: without_injection(v) for k, v in tree.items()}
  return tree


def with_injection(fresh, old, count):
  """``fresh`` (a new-layout tree) holding ``old``'s values (the earlier layout's tree):
  each wrapper keeps its configured hyper-parameters and counts ``count`` updates."""
  if _injected(fresh):
    return fresh._replace(count=jnp.asarray(count, jnp.asarray(fresh.count).dtype),
                          inner_state=with_injection(fresh.inner_state, old, count))
  if _is_namedtuple(fresh):
    return type(fresh)(*(with_injection(f, o, count) for f, o in zip(fresh, old)))
  if isinstance(fresh, (tuple, list)):
    return type(fresh)(with_injection(f, o, count) for f, o in zip(fresh, old))
  if isinstance(fresh, dict):
    return {k: with_injection(fresh[k], old[k], count) for k in fresh}
  return old


def legacy_layout(template: dict):
  """(the earlier layout of a ``{'params', 'opt_state', 'step'}`` checkpoint template, a
  function from a tree read in that layout to the current one); None when the layouts agree."""
  if "opt_state" not in template:
    return None
  old = {**template, "opt_state": without_injection(template["opt_state"])}
  if jax.tree.structure(old["opt_state"]) == jax.tree.structure(template["opt_state"]):
    return None

  def convert(tree):
    return {**tree, "opt_state": with_injection(template["opt_state"], tree["opt_state"],
                                                 tree["step"])}

  return old, convert
