"""The Ladder network's step against a plain classifier step, and the two-player (ADDA) step
against a one-player classification step: examples/s and compilations after warm-up.

    python -m aetl_jax.bench.steps [--repeats 5] [--quick] [--json FILE]

Rows (timed round-robin, :func:`aetl_jax.bench.timing.timed_interleaved`):

* ``ladder`` — one step of the Ladder network (784-1000-500-250-250-250-10, a corrupted and a
  clean encoder pass, the decoder; 100 labelled + 100 unlabelled images) against
  ``classifier`` — one cross-entropy step of the same dense classifier on the 100 labelled
  ones; examples/s counts the labelled images (the ladder also reads 100 unlabelled ones);
* ``two_player`` — one ADDA step (the LeNet target encoder against a 500-500 discriminator;
  64 source + 64 target images) against ``one_player`` — one classification step of the LeNet
  classifier on 64 labelled images.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from aetl_jax.bench.timing import block, timed_interleaved, write_json


def _jitted_step(phase, params, batch, runtime):
  """(a jitted ``state -> state`` of one step of ``phase`` on ``batch``, its initial state)."""
  from aetl_jax.engine.phase import build_program, tree_spec
  prog = build_program(phase, tree_spec(params), len(jax.tree.leaves(batch)[0]), runtime)
  step = jax.jit(lambda state, rng: prog.step(state, batch, rng)[0], donate_argnums=0)
  return step, prog.init_state(jax.tree.map(jnp.copy, params))  # leaves may share buffers


def _contender(step, state):
  box = {"state": state, "i": 0}

  def run():
    box["i"] += 1
    box["state"] = step(box["state"], jax.random.PRNGKey(box["i"]))
    return box["state"].params

  return run


def _strategy(config, name, shape, budget):
  from aetl_jax.engine.phase import Optim
  from aetl_jax.models.registry import init_method
  from aetl_jax.models.variables import tree_of
  from aetl_jax.strategies.registry import StrategyContext, build_strategy
  from aetl_jax.transfer.encoder import strategy_model
  model = strategy_model(config, name, 10, shape)
  # One compiled program: eagerly, each of init's operations compiles alone (the quick
  # ladder's and classifier's inits: 10.5 s eagerly, 4.0 s compiled, in a fresh process).
  init = jax.jit(functools.partial(model.init, method=init_method(model)))
  params = tree_of(init(jax.random.PRNGKey(0), jnp.zeros((1, *shape))))
  strategy = build_strategy(name, StrategyContext(name, config.transfer, model, params,
                                                  Optim.from_config(config.transfer), budget=budget))
  if strategy.start is not None:
    params = strategy.start(params)
  return strategy.phases[0], params


def _images(n, shape, seed):
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.random((n, *shape)), jnp.float32),
          "label": jnp.asarray(rng.integers(0, 10, n), jnp.int32)}


def rows(repeats: int = 5, quick: bool = False) -> list[dict]:
  """The rows; ``quick`` checks the harness with a narrow ladder (64-32-16-16-16-10)."""
  from aetl_jax import api
  from aetl_jax.engine.runtime import make_runtime
  out = []
  # The ladder against the plain classifier of the same widths.
  widths, code = ((64, 32, 16, 16), 16) if quick else ((1000, 500, 250, 250), 250)
  config = api.load_config("experiments/mnist_semisupervised.py", [
      "data.source=digits", "data.target=digits",
      "transfer.strategies=('ladder','scratch')", f"model.widths={widths}",
      f"model.code_dim={code}", f"transfer.ladder_widths={(*widths, code)}"])
  shape = (28, 28, 1)
  ladder, lp = _strategy(config, "ladder", shape, 10)
  scratch, sp = _strategy(config, "scratch", shape, 10)
  labelled, unlabelled = _images(100, shape, 0), {"image": _images(100, shape, 1)["image"]}
  runtime = make_runtime(runner="scan")
  steps = {
      "ladder": _jitted_step(ladder, lp, {"labelled": labelled, "images": unlabelled}, runtime),
      "classifier": _jitted_step(dataclasses.replace(scratch, feed=(("labelled", "x", 100),)),
                                 sp, {"labelled": labelled}, runtime)}
  out += _report("ladder", steps, 100, repeats)
  # ADDA's two-player step against the one-player classification step of the same LeNet.
  config = api.load_config("experiments/digits_adaptation.py", [
      "transfer.strategies=('adda','scratch')"])
  adda, ap = _strategy(config, "adda", shape, 0)
  scratch, sp = _strategy(config, "scratch", shape, 10)
  runtime = make_runtime(family="lenet", runner="per_batch")
  source, target = _images(64, shape, 2), {"image": _images(64, shape, 3)["image"]}
  steps = {
      "two_player": _jitted_step(adda, ap, {"source": source, "images": target}, runtime),
      "one_player": _jitted_step(scratch, sp, {"labelled": source}, runtime)}
  out += _report("two_player", steps, 64, repeats)
  return out


def _report(kind, steps, batch, repeats) -> list[dict]:
  fns = {name: _contender(*s) for name, s in steps.items()}
  for fn in fns.values():
    block(fn())
  results = timed_interleaved(fns, repeats)
  names = list(results)
  rows = []
  for name in names:
    seconds, compiles = results[name]
    rows.append({"row": kind, "step": name, "examples_per_s": batch / seconds,
                 "ms_per_step": 1000 * seconds, "compiles": compiles})
  base = results[names[1]][0]
  print(f"{kind}: {names[0]} {batch / results[names[0]][0]:,.0f} ex/s "
        f"({1000 * results[names[0]][0]:.1f} ms/step) vs {names[1]} {batch / base:,.0f} ex/s "
        f"({1000 * base:.1f} ms/step): {results[names[0]][0] / base:.2f}x the time; compilations "
        f"after warm-up: {sum(r['compiles'] for r in rows)}")
  return rows


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--quick", action="store_true", help="3 repeats, a narrow ladder")
  parser.add_argument("--json", help="write the rows to this file")
  args = parser.parse_args(argv)
  write_json(args.json, rows(3 if args.quick else args.repeats, quick=args.quick))


if __name__ == "__main__":
  from aetl_jax.core.heap import start
  start()
  main()
