"""Ten one-class models: one vmapped program against the sequential loop (and PyTorch).

    python -m aetl_jax.bench.one_class [--models 10] [--examples 6000] [--batch 128]
                                       [--epochs 2] [--repeats 3] [--no-torch] [--json FILE]

Times ``--epochs`` epochs of ``--models`` dense autoencoders (784-256-128-32, the main
suite's dense row), each on its own ``--examples`` images, as the ``one_class`` task
trains them: ``vmapped`` (:func:`run_phases_vmapped`, parameters and data stacked, one
compiled program), ``sequential`` (:func:`run_phases` per model, one compiled epoch
reused) and, optionally, the same models one after another in plain PyTorch. Median of
``--repeats`` interleaved rounds after warm-up; compilations during the timed part counted.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp

from aetl_jax.bench.__main__ import torch_pretrain
from aetl_jax.bench.timing import timed_interleaved
from aetl_jax.bench.timing import write_json


def contenders(models: int, n: int, batch: int, epochs: int) -> dict:
  from aetl_jax.api import load_config
  from aetl_jax.engine.phase import Optim, Phase
  from aetl_jax.engine.runtime import make_runtime
  from aetl_jax.models.registry import build_autoencoder
  from aetl_jax.objectives.registry import make_objective
  from aetl_jax.tasks.one_class import default_config, init_models, train_models
  config = load_config(default_config(), ["model.widths=(256, 128)", "model.code_dim=32"])
  model = build_autoencoder(config.model, (28, 28, 1))
  phase = Phase("one_class", make_objective(model, config.objective), (("images", "source", batch),),
                epochs, Optim(1e-3))
  params, rngs = init_models(model, (28, 28, 1), range(models), seed=0)
  images = jax.random.uniform(jax.random.PRNGKey(1), (models, n, 28, 28, 1))
  runtime = make_runtime(family="mlp")
  run = lambda vmap: lambda: train_models(phase, jax.tree.map(jnp.copy, params), images, rngs,
                                          runtime=runtime, vmap=vmap)[0]
  return {"vmapped": run(True), "sequential": run(False)}


def torch_sequential(models: int, n: int, batch: int, epochs: int):
  fns = [torch_pretrain("mlp", batch, n) for _ in range(models)]

  def run():
    for fn in fns:
      for _ in range(epochs):
        fn()
  return run


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", type=int, default=10)
  parser.add_argument("--examples", type=int, default=6000)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--epochs", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--no-torch", action="store_true")
  parser.add_argument("--json")
  a = parser.parse_args(argv)
  fns = contenders(a.models, a.examples, a.batch, a.epochs)
  if not a.no_torch:
    try:
      import torch
      torch.set_num_threads(os.cpu_count() or 1)
      fns["torch sequential"] = torch_sequential(a.models, a.examples, a.batch, a.epochs)
    except ImportError:
      pass
  results = timed_interleaved(fns, a.repeats)
  examples = a.models * a.epochs * (a.examples // a.batch) * a.batch
  print(f"{a.models} dense AEs × {a.epochs} epochs × {a.examples} examples, batch {a.batch}, "
        f"backend={jax.default_backend()}, cpu_count={os.cpu_count()}")
  print(f"{'contender':<18} {'seconds':>8} {'ex/s':>9} {'vs sequential':>13} {'compiles':>8}")
  rows = []
  for name, (seconds, compiles) in results.items():
    speedup = results["sequential"][0] / seconds
    rows.append({"contender": name, "seconds": seconds, "examples_per_s": examples / seconds,
                 "speedup_vs_sequential": speedup, "compiles": compiles, "models": a.models,
                 "epochs": a.epochs, "examples": a.examples, "batch": a.batch})
    print(f"{name:<18} {seconds:8.2f} {examples / seconds:9.0f} {speedup:12.2f}x {compiles:8d}")
  write_json(a.json, rows)
  return rows


if __name__ == "__main__":
  from aetl_jax.core.heap import start
  start()
  main()
