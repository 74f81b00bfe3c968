"""Checkpoints written by earlier versions of aetl_jax resume as they are.

Since 0.3 every optimiser takes its learning rate from its state
(``optax.inject_hyperparams``): its state is an ``InjectHyperparamsState`` around the state
earlier versions saved. A checkpoint in the earlier layout is read into that inner state and
wrapped again; the update that follows is the one the earlier version would have made (the
schedule lives inside the wrapped optimiser and counts its own steps; the wrapper's count
only records updates). Since 0.4 the weight and L1 decays are injected too (when not zero):
a 0.3 state holding the learning rate alone gets the configured decays. Since 0.5 the rules'
learning-rate and weight-decay multipliers are injected too (``lr_multipliers``,
``wd_multipliers``): a 0.4 state without them gets the configured ones. Since 0.6 the
schedule's length is injected too (``total_steps``, ``warmup_steps``: label budgets of one
size bucket share their programs): an earlier state without it gets the phase's own.
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


def _at_states(fresh, old, fn):
  """``fn(fresh_state, old_subtree)`` at every injected state of ``fresh``, the containers
  around them rebuilt; ``old`` is walked alongside (``fresh`` itself where there is none);
  elsewhere ``old``'s leaves are kept."""
  if _injected(fresh):
    return fn(fresh, old)
  if _is_namedtuple(fresh):
    return type(fresh)(*(_at_states(f, o, fn) for f, o in zip(fresh, old)))
  if isinstance(fresh, (tuple, list)):
    return type(fresh)(_at_states(f, o, fn) for f, o in zip(fresh, old))
  if isinstance(fresh, dict):
    return {k: _at_states(fresh[k], old[k], fn) for k in fresh}
  return old


def without_injection(tree):
  """``tree`` with every ``InjectHyperparamsState`` replaced by its inner state."""
  return _at_states(tree, tree, lambda state, _: without_injection(state.inner_state))


def with_injection(fresh, old, count):
  """``fresh`` (a new-layout tree) holding ``old``'s values (the earlier layout's tree):
  each wrapper keeps its configured hyper-parameters and counts ``count`` updates."""
  return _at_states(fresh, old, lambda state, o: state._replace(
      count=jnp.asarray(count, jnp.asarray(state.count).dtype),
      inner_state=with_injection(state.inner_state, o, count)))


def learning_rate_only(tree):
  """``tree`` with every injected state holding its learning rate alone (0.3's layout)."""
  return _at_states(tree, tree, lambda state, _: state._replace(
      hyperparams={k: v for k, v in state.hyperparams.items() if k == "learning_rate"},
      inner_state=learning_rate_only(state.inner_state)))


MULTIPLIERS = ("lr_multipliers", "wd_multipliers")


def without_multipliers(tree):
  """``tree`` with no injected multipliers (0.4's layout)."""
  return _at_states(tree, tree, lambda state, _: state._replace(
      hyperparams={k: v for k, v in state.hyperparams.items() if k not in MULTIPLIERS},
      inner_state=without_multipliers(state.inner_state)))


LENGTH = ("total_steps", "warmup_steps")


def without_length(tree):
  """``tree`` with no injected schedule length (0.5's layout)."""
  return _at_states(tree, tree, lambda state, _: state._replace(
      hyperparams={k: v for k, v in state.hyperparams.items() if k not in LENGTH},
      inner_state=without_length(state.inner_state)))


def with_configured_decays(fresh, old):
  """``old`` (an earlier layout) with the hyper-parameters it lacks taken from ``fresh``."""
  return _at_states(fresh, old, lambda state, o: o._replace(
      hyperparams={**state.hyperparams, **o.hyperparams},
      inner_state=with_configured_decays(state.inner_state, o.inner_state)))


def legacy_layouts(template: dict) -> list:
  """[(an earlier layout of a ``{'params', 'opt_state', 'step'}`` checkpoint template, a
  function from a tree read in that layout to the current one)], newest first; empty when
  no earlier layout differs from the current one."""
  if "opt_state" not in template:
    return []
  fresh = template["opt_state"]
  same = lambda a: jax.tree.structure(a) == jax.tree.structure(fresh)
  out = []
  configured = lambda tree: {**tree, "opt_state": with_configured_decays(fresh, tree["opt_state"])}
  before_length = without_length(fresh)
  if not same(before_length):
    out.append(({**template, "opt_state": before_length}, configured))
  plain = without_multipliers(before_length)
  if not same(plain):
    out.append(({**template, "opt_state": plain}, configured))
  lr_only = learning_rate_only(fresh)
  if not same(lr_only):
    out.append(({**template, "opt_state": lr_only}, configured))
  bare = without_injection(fresh)
  if not same(bare):
    out.append(({**template, "opt_state": bare},
                lambda tree: {**tree, "opt_state": with_injection(fresh, tree["opt_state"],
                                                                   tree["step"])}))
  return out
