"""The CPU convolution gap: conv autoencoder throughput per formulation and runner.

    python -m aetl_jax.bench.conv [--batch 128] [--epochs 2]

Trains the conv autoencoder (28×28×1, channels 32-64, code 32) with each
upsampling (transposed conv, sub-pixel) × conv implementation (XLA's native
convolution 'xla'; 'hybrid': XLA's for wide layers, the narrow formulation for
narrow stride-1 layers, bias gradients as matmuls; the matmul formulations of
:mod:`aetl_jax.models.conv_ops`: 'im2col' patches for every layer,
'shift_add' for every layer, 'matmul' the smaller of the two per layer;
transposed convolutions are sub-pixel phases as patches @ kernel for 'im2col'
and 'matmul', matmul + overlap-add for 'shift_add') × epoch runner (whole epoch
in one ``lax.scan``, one jitted call per batch), and prints examples/s (median of timed epochs after a warm-up
epoch). The default ``model.conv_impl``/``runner`` per backend follow these
numbers (``conv_ops.resolve_conv_impl``, ``engine.runtime.resolve_runner``).
"""

from __future__ import annotations

import argparse
import itertools


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--examples", type=int, default=1024)
  parser.add_argument("--epochs", type=int, default=2)
  parser.add_argument("--impls", default="xla,hybrid,im2col,shift_add,matmul")
  parser.add_argument("--upsampling", default="transpose,subpixel")
  parser.add_argument("--runners", default="scan,per_batch")
  parser.add_argument("--xla-defaults", action="store_true",
                      help="also time each row with XLA's default compiler options (YNNPACK "
                           "convolutions on), not only with the ones the library picks")
  args = parser.parse_args(argv)

  import jax
  import jax.numpy as jnp

  from aetl_jax.bench.timing import time_calls
  from aetl_jax.models.registry import build_autoencoder
  from aetl_jax.objectives.registry import make_objective
  from aetl_jax.engine.compiler import train_compiler_options
  from aetl_jax.engine.loop import make_epoch_fn
  from aetl_jax.engine.state import TrainState
  from aetl_jax.engine.step import make_train_step
  from aetl_jax.core.optim import make_optimizer
  from aetl_jax.api import load_config
  from aetl_jax.tasks.transfer import default_config

  x = jax.random.uniform(jax.random.PRNGKey(0), (args.examples, 28, 28, 1))
  data = {"images": {"image": x}}
  usable = (args.examples // args.batch) * args.batch
  print(f"backend={jax.default_backend()} batch={args.batch} examples/epoch={usable}")
  chosen = train_compiler_options("conv")
  variants = [("library", chosen)] + ([("xla default", {})] if args.xla_defaults and chosen else [])
  print(f"compiler options picked for conv families here: {chosen or 'none'}")
  print(f"{'upsampling':<11} {'conv impl':<9} {'runner':<10} {'options':<12} {'examples/s':>11}")
  rows = []
  for upsampling in args.upsampling.split(","):
    for impl in args.impls.split(","):
      for runner, (label, options) in itertools.product(args.runners.split(","), variants):
        config = load_config(default_config(), [
            "model.family='conv'", f"model.upsampling='{upsampling}'",
            f"model.conv_impl='{impl}'"])
        model = build_autoencoder(config.model, (28, 28, 1))
        params = model.init(jax.random.PRNGKey(0), x[:1], method="reconstruct")["params"]
        tx = make_optimizer(learning_rate=1e-3)
        step = make_train_step(make_objective(model, config.objective), tx)
        epoch = make_epoch_fn(step, batch_size=args.batch, runner=runner,
                              compiler_options=options)
        holder = {"state": TrainState.create(jax.tree.map(jnp.copy, params), tx)}

        def run():
          holder["state"], m = epoch(holder["state"], data, jax.random.PRNGKey(1))
          return m

        t = time_calls(run, repeats=args.epochs)
        rate = usable / t["median_s"]
        rows.append({"upsampling": upsampling, "conv_impl": impl, "runner": runner,
                     "compiler_options": label, "examples_per_s": rate})
        print(f"{upsampling:<11} {impl:<9} {runner:<10} {label:<12} {rate:11.0f}", flush=True)
  return rows


if __name__ == "__main__":
  from aetl_jax.core.heap import start
  start()
  main()
