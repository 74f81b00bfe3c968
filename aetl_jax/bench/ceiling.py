"""The rate a train step's own matmuls and convolutions reach, each run alone.

A step cannot beat the speed of its heaviest kernels. To tell "the step is slow"
from "its matmuls are slow at these shapes", :func:`kernel_ceiling` collects
every ``dot_general`` and ``conv_general_dilated`` the step executes (from its
jaxpr, backward pass included, custom-VJP rules too), runs each alone on random
operands of the same shapes with the step's compiler options, and adds up their
times. FLOPs come from XLA's cost analysis of each kernel's HLO (a matmul's or a
convolution's count is fixed by its shapes, so the program need not be compiled
for it), so
``kernel seconds / step seconds`` is the share of the step the kernels would
take at their own best speed, and the rest is everything else (elementwise
passes, layout copies, the optimiser, dispatch).
"""

from __future__ import annotations

import functools

import numpy as np

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core

from aetl_jax.bench.timing import block, hlo_flops, time_calls

HEAVY_PRIMITIVES = ("dot_general", "conv_general_dilated")
LOOP = 8  # a matmul alone is timed as this many back-to-back runs in one compiled loop


def heavy_equations(jaxpr) -> list:
  """The ``dot_general``/``conv_general_dilated`` equations of a (closed) jaxpr,
  nested jaxprs included, in program order. A loop body counts once; an equation
  XLA would drop as dead code counts too (a train step has none: its forward pass
  feeds the loss it returns)."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in HEAVY_PRIMITIVES:
      found.append(eqn)
    for sub in jex_core.jaxprs_in_params(eqn.params):
      found.extend(heavy_equations(sub))
  return found


def random_operands(eqn, seed: int) -> list:
  """Standard-normal operands of ``eqn``'s shapes (drawn with NumPy: one jax.random program
  per shape would be compiled otherwise)."""
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.standard_normal(v.aval.shape).astype(v.aval.dtype))
          if jnp.issubdtype(v.aval.dtype, jnp.floating) else jnp.zeros(v.aval.shape, v.aval.dtype)
          for v in eqn.invars]


def kernel_alone(eqn, *, compiler_options=None, seed: int = 0):
  """(thunk, runs per call of the thunk, XLA-counted FLOPs per run) of one kernel.

  A matmul runs ``LOOP`` times per call in one compiled loop, so a short one is
  not timed as dispatch overhead; each run adds 0·(an output element) to one
  element of the carried first operand, so no run can be hoisted out of the
  loop, and writes its output over the previous one's (a carry, not a stacked
  output), so operands and output stay in cache as between a step's layers. A
  convolution runs once per call: inside a loop XLA:CPU's convolutions lose
  their fast layouts (jax#12868) and would understate it.
  """
  operands = random_operands(eqn, seed)
  jit = functools.partial(jax.jit, compiler_options=compiler_options or None)
  bind = lambda *ops: eqn.primitive.bind(*ops, **eqn.params)
  once = jit(lambda ops: bind(*ops))
  flops = hlo_flops(once, operands)
  if eqn.primitive.name != "dot_general":
    return (lambda: once(operands)), 1, flops

  def body(carry, rest):
    first, _ = carry
    out = bind(first, *rest)
    corner = (0,) * first.ndim
    return first.at[corner].add(out[(0,) * out.ndim] * 0), out

  def loop(first, rest):
    out = jax.eval_shape(bind, first, *rest)
    carry = (first, jnp.zeros(out.shape, out.dtype))
    return jax.lax.fori_loop(0, LOOP, lambda _, c: body(c, rest), carry)[1]

  loop = jit(loop)
  return (lambda: loop(operands[0], operands[1:])), LOOP, flops


def _signature(eqn, compiler_options) -> tuple:
  """What makes two kernels the same program: primitive, parameters, operand shapes, options."""
  return (eqn.primitive.name, repr(sorted(eqn.params.items())),
          tuple((v.aval.shape, str(v.aval.dtype)) for v in eqn.invars),
          repr(sorted((compiler_options or {}).items())))


def kernels_thunk(step, args, *, compiler_options=None, cache: dict | None = None):
  """(thunk running each of ``step(*args)``'s matmuls and convolutions ``LOOP``
  times alone, their FLOPs per step, how many) — divide its time by ``LOOP``.
  Equal kernels share one compiled program, within the step and, through a
  ``cache`` dict the caller keeps, across steps (two runners of one model)."""
  cache = {} if cache is None else cache
  kernels = []
  for i, eqn in enumerate(heavy_equations(jax.make_jaxpr(step)(*args))):
    key = _signature(eqn, compiler_options)
    if key not in cache:
      cache[key] = kernel_alone(eqn, compiler_options=compiler_options, seed=i)
    kernels.append(cache[key])

  def run():
    for thunk, runs, _ in kernels:
      for _ in range(LOOP // runs):
        block(thunk())

  return run, sum(f for _, _, f in kernels), len(kernels)


def kernel_ceiling(step, args, *, compiler_options=None, repeats: int = 5) -> dict:
  """``step(*args)``'s matmuls and convolutions, each run alone: how many
  (``count``), their seconds per step, FLOPs and GFLOP/s."""
  run, flops, count = kernels_thunk(step, args, compiler_options=compiler_options)
  seconds = time_calls(run, repeats=repeats)["median_s"] / LOOP
  return {"count": count, "seconds": seconds, "flops": flops,
          "gflops": flops / seconds / 1e9 if seconds else float("nan")}
