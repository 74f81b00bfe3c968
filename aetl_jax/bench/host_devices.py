"""Conv autoencoders on a multi-core CPU: one device against data parallelism over host devices.

    python -m aetl_jax.bench.host_devices [--devices 2] [--batches 64,256] [--rounds 3]
                                          [--kinds transpose,subpixel] [--no-torch]

XLA:CPU runs a one-device program with its convolutions split over every core. Started with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` the same host shows N CPU devices,
and the engine's ``shard_map`` launcher (``launch.launcher='shard_map'``) trains the step
data-parallel: each device takes 1/N of the global batch, gradients are averaged. Contenders,
the conv autoencoder pretraining one epoch per call, per batch (``conv_impl=auto``):

* ``jit``: one device, the default launcher;
* ``shard_map``: ``--devices`` host devices;
* ``torch``: the same model and Adam step in PyTorch, channels-last
  (:func:`aetl_jax.bench.__main__.torch_pretrain`).

The device count is fixed when JAX starts, so every contender runs in a process of its own;
the processes of one round run one after another, round after round, so all see the same
drift of the machine's speed. A process reports the median of ``--repeats`` epochs after a
warm-up epoch (compile time excluded); a row is the median over rounds, and its ratio is to
``torch``'s. On a GPU or TPU this measures nothing useful and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys

KINDS = ("transpose", "subpixel")
FAMILY_OF = {"transpose": "conv_transpose", "subpixel": "conv"}  # as bench.__main__ names them
MODES = ("jit", "shard_map", "torch")


def _arguments(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--devices", type=int, default=os.cpu_count() or 2,
                      help="host devices of the shard_map contender (default: the cores)")
  parser.add_argument("--batches", default="64,256", help="global batch sizes, comma-separated")
  parser.add_argument("--kinds", default=",".join(KINDS), help="conv decoders' upsampling")
  parser.add_argument("--examples", type=int, default=1024, help="examples per epoch")
  parser.add_argument("--repeats", type=int, default=3, help="timed epochs per process")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--no-torch", action="store_true")
  parser.add_argument("--contender", nargs=3, metavar=("KIND", "MODE", "BATCH"),
                      help=argparse.SUPPRESS)  # one process's part (internal)
  args = parser.parse_args(argv)
  for name in ("devices", "examples", "repeats", "rounds"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
  if not set(args.kinds.split(",")) <= set(KINDS):
    parser.error(f"--kinds {args.kinds!r}: valid kinds are {', '.join(KINDS)}")
  if not all(b.isdigit() and int(b) > 0 and int(b) % args.devices == 0
             for b in args.batches.split(",")):
    parser.error(f"--batches {args.batches!r}: positive whole numbers divisible by --devices "
                 f"{args.devices}")
  return args


def contender_rate(kind: str, mode: str, batch: int, examples: int, repeats: int,
                   devices: int) -> float:
  """Examples/s of one contender, in this process (for ``shard_map`` started with
  ``devices`` host devices)."""
  from aetl_jax.bench.timing import time_calls
  if mode == "torch":
    from aetl_jax.bench.__main__ import torch_pretrain
    from aetl_jax.bench.timing import torch_usable
    torch_usable()
    run = torch_pretrain(FAMILY_OF[kind], batch, examples, "channels_last")
  else:
    run = _jax_epoch(kind, mode, batch, examples, devices)
  return (examples // batch) * batch / time_calls(run, repeats=repeats)["median_s"]


def _jax_epoch(kind: str, mode: str, batch: int, examples: int, devices: int):
  """One pretraining epoch of the conv AE through the engine, as a thunk."""
  import jax

  from aetl_jax.bench.__main__ import pretrain_setup
  from aetl_jax.core.optim import make_optimizer
  from aetl_jax.engine.compiler import train_compiler_options
  from aetl_jax.engine.launchers import make_launcher
  from aetl_jax.engine.loop import make_epoch_fn
  from aetl_jax.engine.state import TrainState
  from aetl_jax.engine.step import make_train_step
  loss, params, x = pretrain_setup(FAMILY_OF[kind], "per_batch", examples)
  tx = make_optimizer(learning_rate=1e-3)
  launcher = make_launcher("jit") if mode == "jit" else make_launcher("shard_map", devices)
  step = make_train_step(loss, tx, axis_name=launcher.axis_name)
  epoch = make_epoch_fn(step, batch_size=batch, runner="per_batch", launcher=launcher,
                        compiler_options=train_compiler_options("conv"))
  holder = {"s": launcher.replicate(TrainState.create(params, tx))}

  def run():
    holder["s"], metrics = epoch(holder["s"], {"images": {"image": x}}, jax.random.PRNGKey(1))
    return metrics

  return run


def _spawn(kind: str, mode: str, batch: int, args) -> float:
  """One contender's rate, measured in a fresh process."""
  env = dict(os.environ)
  if mode == "shard_map":
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={args.devices}").strip()
  cmd = [sys.executable, "-m", "aetl_jax.bench.host_devices", "--contender", kind, mode,
         str(batch), "--batches", str(batch), "--devices", str(args.devices),
         "--examples", str(args.examples), "--repeats", str(args.repeats)]
  out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
  if out.returncode != 0 or not lines:
    errors = [ln for ln in out.stderr.splitlines() if re.match(r"[\w.]+(Error|Exception)\b", ln)]
    tail = (errors or out.stderr.strip().splitlines() or ["no output"])[-1]
    raise RuntimeError(f"contender {kind}/{mode}/b{batch} failed: {tail}")
  return json.loads(lines[-1])["examples_per_s"]


def rows(args) -> list[dict]:
  """Every (kind, batch, mode): examples/s (median over rounds) and the ratio to torch."""
  modes = [m for m in MODES if m != "torch" or not args.no_torch]
  cells = [(k, int(b), m) for k in args.kinds.split(",") for b in args.batches.split(",")
           for m in modes]
  rates = {c: [] for c in cells}
  for _ in range(args.rounds):
    for kind, batch, mode in cells:
      rates[kind, batch, mode].append(_spawn(kind, mode, batch, args))
  out = []
  for kind, batch, mode in cells:
    rate = statistics.median(rates[kind, batch, mode])
    torch = statistics.median(rates[kind, batch, "torch"]) if not args.no_torch else None
    out.append({"kind": kind, "batch": batch, "mode": mode,
                "devices": args.devices if mode == "shard_map" else 1,
                "examples_per_s": rate, "rounds": rates[kind, batch, mode],
                "ratio_vs_torch": rate / torch if torch and mode != "torch" else None})
  return out


def main(argv=None):
  args = _arguments(argv)
  if args.contender:
    kind, mode, batch = args.contender
    rate = contender_rate(kind, mode, int(batch), args.examples, args.repeats, args.devices)
    print(json.dumps({"examples_per_s": rate}), flush=True)
    return None
  import jax
  if jax.default_backend() != "cpu":
    print(f"backend {jax.default_backend()}: host devices only matter on a CPU; nothing to time")
    return []
  if not args.no_torch:
    from aetl_jax.bench.timing import torch_usable
    if not torch_usable(threads=False):
      from aetl_jax.bench.__main__ import BASELINES_COMMAND
      print(f"PyTorch is not installed: no torch contender ({BASELINES_COMMAND})")
      args.no_torch = True
  table = rows(args)
  from aetl_jax.bench.timing import ratio_text
  print(f"{'conv AE (per batch)':<20} {'batch':>5} {'launcher':<10} {'devices':>7} {'ex/s':>8} "
        f"{'vs torch':>8}")
  for r in table:
    print(f"{r['kind']:<20} {r['batch']:5d} {r['mode']:<10} {r['devices']:7d} "
          f"{r['examples_per_s']:8.0f} {ratio_text(r['ratio_vs_torch'])}", flush=True)
  return table


if __name__ == "__main__":
  from aetl_jax.core.heap import start
  start()
  main()
