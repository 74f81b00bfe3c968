"""Throughput of each launcher on 1, 2 and 4 devices, and of vmapped seeds.

    python -m aetl_jax.bench.launchers [--devices 4] [--epochs 3]

Part 1 trains the dense autoencoder on MNIST-size inputs (28×28, synthetic
pixels: throughput does not depend on content) with a global batch of 256,
for every launcher × device count × runner, and prints examples/s (median of
``--epochs`` timed epochs after a warm-up epoch; compile time excluded).
On a CPU the devices are fake (``--xla_force_host_platform_device_count``):
they share the same cores, so this measures the launchers' overhead and
correctness of scaling code, not a speed-up; on a multi-GPU host it measures
real scaling.

Part 2 fine-tunes K seeds of one sweep cell sequentially (one ``run_strategy``
after another) and at once (``run_strategy_seeds``: ``jit(vmap(cell))``), on
the digits classifier and on an MNIST-size classifier.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--devices", type=int, default=4,
                      help="fake CPU devices to create (ignored on GPU/TPU)")
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--examples", type=int, default=8192)
  parser.add_argument("--seeds", type=int, default=5)
  args = parser.parse_args(argv)
  if "jax" not in sys.modules:
    os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={args.devices}")
  import jax
  print(f"backend={jax.default_backend()} devices={jax.device_count()} "
        f"cpu_count={os.cpu_count()} jax={jax.__version__}")
  launcher_rows(args.examples, args.epochs)
  seed_rows(args.seeds)


def launcher_rows(examples: int, epochs: int, batch: int = 256) -> None:
  """Part 1: a dense AE's epoch under every launcher × device count × runner."""
  import jax
  import jax.numpy as jnp

  from aetl_jax.bench.timing import time_calls
  from aetl_jax.core.optim import make_optimizer
  from aetl_jax.engine.launchers import make_launcher
  from aetl_jax.engine.loop import make_epoch_fn
  from aetl_jax.engine.state import TrainState
  from aetl_jax.engine.step import make_train_step
  from aetl_jax.models.autoencoder import Autoencoder
  from aetl_jax.models.mlp import MLPDecoder, MLPEncoder
  from aetl_jax.objectives.reconstruction import make_reconstruction_loss

  key = jax.random.PRNGKey(0)
  x = jax.random.uniform(key, (examples, 28, 28, 1))
  data = {"images": {"image": x}}
  model = Autoencoder(MLPEncoder((256, 128), 32), MLPDecoder((28, 28, 1), (128, 256)))
  params = model.init(key, x[:1])["params"]
  loss = make_reconstruction_loss(model, "bce")
  print(f"\nPart 1: dense AE 784-256-128-32, global batch {batch}, {examples} examples/epoch")
  print(f"{'launcher':<10} {'devices':>7} {'runner':<10} {'examples/s':>11}")
  counts = [n for n in (1, 2, 4) if n <= jax.device_count()]
  for kind in ("jit", "pmap", "shard_map"):
    for n, runner in itertools.product([1] if kind == "jit" else counts, ("scan", "per_batch")):
      launcher = make_launcher(kind, n)
      tx = make_optimizer(learning_rate=1e-3)
      step = make_train_step(loss, tx, axis_name=launcher.axis_name)
      epoch = make_epoch_fn(step, batch_size=batch, runner=runner, launcher=launcher)
      holder = {"state": launcher.replicate(TrainState.create(jax.tree.map(jnp.copy, params), tx))}

      def run():
        holder["state"], m = epoch(holder["state"], data, key)
        return m

      t = time_calls(run, repeats=epochs)
      usable = (examples // batch) * batch
      print(f"{kind:<10} {n:7d} {runner:<10} {usable / t['median_s']:11.0f}", flush=True)


def seed_rows(seeds: int) -> None:
  """Part 2: ``seeds`` seeds of one fine-tuning cell, one after another and as one program."""
  import jax

  from aetl_jax.data.digits import load_digits_arrays

  key = jax.random.PRNGKey(0)
  print(f"\nPart 2: {seeds} seeds of one fine-tuning cell, sequential vs vmapped")
  print(f"{'model':<28} {'sequential s':>12} {'vmapped s':>10} {'speed-up':>9}")
  digits_x, digits_y = load_digits_arrays()
  cases = [("digits MLP 64-128-64-32", digits_x, digits_y, (128, 64), 32, 100, 100),
           ("MNIST-size MLP 784-256-128-32", jax.random.uniform(key, (2000, 28, 28, 1)),
            jax.random.randint(key, (2000,), 0, 10), (256, 128), 32, 1000, 30)]
  for name, *case in cases:
    t_seq, t_vmap = _seed_case(seeds, *case)
    print(f"{name:<28} {t_seq:12.2f} {t_vmap:10.2f} {t_seq / t_vmap:8.1f}x", flush=True)


def _seed_case(seeds, images, labels, widths, code, n_train, epochs) -> tuple[float, float]:
  """(sequential seconds, vmapped seconds) of ``seeds`` fine-tuning cells."""
  import jax
  import jax.numpy as jnp

  from aetl_jax.bench.timing import time_calls
  from aetl_jax.engine.phase import Optim
  from aetl_jax.engine.runtime import make_runtime
  from aetl_jax.models.autoencoder import Classifier
  from aetl_jax.models.mlp import MLPEncoder
  from aetl_jax.strategies import StrategyContext, build_strategy
  from aetl_jax.tasks.transfer import default_config
  from aetl_jax.transfer.cell import run_cell, run_cells_vmapped

  clf = Classifier(MLPEncoder(widths, code), 10)
  tcfg = default_config().transfer
  tcfg.update(epochs=epochs, learning_rate=1e-3, batch_size=32)
  template = clf.init(jax.random.PRNGKey(0), jnp.asarray(images[:1]))["params"]
  strategy = build_strategy("finetune", StrategyContext("finetune", tcfg, clf, template,
                                                        Optim.from_config(tcfg)))
  runtime = make_runtime(runner="scan")
  cells = []
  for s in range(seeds):
    p = clf.init(jax.random.PRNGKey(s), jnp.asarray(images[:1]))["params"]
    lo = (s * 97) % max(1, len(images) - n_train - 400)
    split = lambda a, b: (jnp.asarray(images[a:b]), jnp.asarray(labels[a:b]))
    cells.append((p, {"train": split(lo, lo + n_train), "val": split(0, 0),
                      "test": split(len(images) - 300, len(images))}, jax.random.PRNGKey(s)))
  stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
  streams = lambda d: {"target_labelled": {"image": d["train"][0], "label": d["train"][1]}}
  stacked = (stack([c[0] for c in cells]), stack([streams(c[1]) for c in cells]),
             jnp.stack([c[2] for c in cells]))
  splits_k = {k: stack([c[1][k] for c in cells]) for k in ("train", "val", "test")}

  def sequential():
    return [run_cell(strategy, clf, p, streams(d), d, r, runtime=runtime)[0] for p, d, r in cells]

  def vmapped():
    return run_cells_vmapped(strategy, clf, stacked[0], stacked[1], splits_k, stacked[2],
                             runtime=runtime)[0]

  return (time_calls(sequential, repeats=2)["median_s"], time_calls(vmapped, repeats=2)["median_s"])


if __name__ == "__main__":
  from aetl_jax.core.heap import start
  start()
  main()
