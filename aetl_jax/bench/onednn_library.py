"""``conv_impl='onednn'`` (oneDNN's convolutions as XLA custom calls; 'auto''s choice on CPU
where they build) against XLA's (``conv_impl='hybrid'``, 'auto' where they do not).

    python -m aetl_jax.bench.onednn_library [--batches 64,256] [--repeats 5] [--rounds 3]
                                            [--no-torch]

jaxlib's CPU build runs no oneDNN (``python -m aetl_jax.bench.onednn``);
:mod:`aetl_jax.models.onednn` compiles three custom calls against the environment's oneDNN
(PyPI's ``onednn-devel-cpu-gomp``, a dependency on x86-64 Linux) or the system's (``apt-get
install libdnnl-dev``). Two tables, each timed round-robin within a round, medians of
``--rounds``:

* per layer: for every wide convolution and transposed convolution of the conv autoencoder
  (those ``onednn`` gives to the custom calls), the forward pass, input gradient and kernel
  gradient, each jitted alone with the conv family's compiler options, by ``hybrid``'s
  formulation (XLA's convolution; the hybrid sub-pixel transposed convolution) and by the
  custom calls;
* per step: the conv AE's train step per batch (sub-pixel and transposed decoders) with
  ``conv_impl='hybrid'`` and ``'onednn'``, and PyTorch's channels-last step (unless
  ``--no-torch`` or PyTorch is absent), in one run, with the ratios.

Without a compiler or oneDNN it says what is missing, in one line, before timing anything.
"""

from __future__ import annotations

import argparse
import statistics

PASSES = ("forward", "input grad", "kernel grad")


def layers() -> list[tuple]:
  """The conv AE's layers that ``hybrid`` and ``onednn`` run differently: (name, size, cin, cout,
  stride, kind) of the wide ones (at least ``NARROW_BELOW`` output channels), convolutions
  and transposed convolutions."""
  from aetl_jax.bench.conv_layers import LAYERS
  from aetl_jax.models.conv_ops import NARROW_BELOW
  return [layer for layer in LAYERS if layer[3] >= NARROW_BELOW]


def _both(layer) -> dict:
  """{'hybrid': what conv_impl='hybrid' runs for ``layer``, 'onednn': the custom calls}."""
  from aetl_jax.bench.conv_layers import _library_formulations
  from aetl_jax.models import onednn
  strides, transposed = (layer[4],) * 2, layer[5] == "transpose"
  custom = onednn.conv_transpose if transposed else onednn.conv
  return {"hybrid": _library_formulations(layer)["hybrid" if transposed else "xla"],
          "onednn": lambda x, k: custom(x, k, strides, "SAME")}


def layer_rows(batches, repeats: int, rounds: int) -> list[dict]:
  """One row per (batch, layer): each pass's median ms by ``hybrid``'s formulation and by
  oneDNN."""
  from aetl_jax.bench.conv_layers import _jax_contenders
  from aetl_jax.bench.timing import time_interleaved
  out = []
  for batch in batches:
    for layer in layers():
      fns = {(impl.removeprefix("jax "), p): fn
             for impl, passes in _jax_contenders(layer, batch, _both(layer))
             for p, fn in passes.items()}
      times = {key: [] for key in fns}
      for _ in range(rounds):
        for key, seconds in time_interleaved(fns, repeats=repeats).items():
          times[key].append(1e3 * seconds)
      row = {"layer": layer[0], "batch": batch,
             "shape": f"{layer[1]}x{layer[1]} {layer[2]}->{layer[3]} s{layer[4]}"}
      row.update({key: statistics.median(ts) for key, ts in times.items()})
      out.append(row)
      cells = "  ".join(f"{p} {row['hybrid', p]:7.2f} / {row['onednn', p]:7.2f}" for p in PASSES)
      ours, dnn = (sum(row[who, p] for p in PASSES) for who in ("hybrid", "onednn"))
      print(f"b{batch:<4} {layer[0]:<18} {row['shape']:<17} ms hybrid / oneDNN: {cells}  "
            f"all three {ours:7.2f} / {dnn:7.2f} ({ours / dnn:.2f}x)", flush=True)
  return out


def _epoch(family: str, batch: int, conv_impl: str, n: int):
  """One epoch of the conv AE's train step per batch with ``conv_impl``, as a thunk."""
  import jax
  import jax.numpy as jnp

  from aetl_jax.bench.__main__ import pretrain_setup
  from aetl_jax.core.optim import make_optimizer
  from aetl_jax.engine.compiler import train_compiler_options
  from aetl_jax.engine.loop import make_epoch_fn
  from aetl_jax.engine.state import TrainState
  from aetl_jax.engine.step import make_train_step
  loss, params, x = pretrain_setup(family, "per_batch", n, conv_impl)
  tx = make_optimizer(learning_rate=1e-3)
  epoch = make_epoch_fn(make_train_step(loss, tx), batch_size=batch, runner="per_batch",
                        compiler_options=train_compiler_options("conv"))
  holder = {"s": TrainState.create(jax.tree.map(jnp.copy, params), tx)}

  def run():
    holder["s"], metrics = epoch(holder["s"], {"images": {"image": x}}, jax.random.PRNGKey(1))
    return metrics

  return run


def step_rows(batches, repeats: int, rounds: int, use_torch: bool, n: int = 1024) -> list[dict]:
  """Examples/s of the conv AE's step per batch: 'hybrid', 'onednn' and (optionally)
  PyTorch channels-last, round-robin; the median of ``rounds`` rounds."""
  from aetl_jax.bench.__main__ import torch_pretrain
  from aetl_jax.bench.timing import time_interleaved
  out = []
  for family in ("conv", "conv_transpose"):
    for batch in batches:
      used = (n // batch) * batch
      fns = {impl: _epoch(family, batch, impl, n) for impl in ("hybrid", "onednn")}
      if use_torch:
        fns["torch"] = torch_pretrain(family, batch, n, "channels_last")
      rates = {name: [] for name in fns}
      for _ in range(rounds):
        for name, seconds in time_interleaved(fns, repeats=repeats).items():
          rates[name].append(used / seconds)
      row = {"family": family, "batch": batch}
      row.update({name: statistics.median(r) for name, r in rates.items()})
      out.append(row)
      vs = (f"  vs PyTorch channels-last {row['torch']:6.0f}: hybrid "
            f"{row['hybrid'] / row['torch']:.2f}x"
            f", onednn {row['onednn'] / row['torch']:.2f}x" if use_torch else "")
      print(f"{family:<15} b{batch:<4} ex/s hybrid {row['hybrid']:6.0f}  onednn "
            f"{row['onednn']:6.0f} ({row['onednn'] / row['hybrid']:.2f}x){vs}", flush=True)
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batches", default="64,256")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--no-torch", action="store_true")
  args = parser.parse_args(argv)
  from aetl_jax.bench.timing import int_list
  batches = int_list(args.batches)
  if not batches or args.repeats < 1 or args.rounds < 1:
    raise SystemExit(f"--batches takes positive integers, comma-separated, and --repeats, "
                     f"--rounds must be >= 1; got {args.batches!r}, {args.repeats}, "
                     f"{args.rounds}")
  from aetl_jax.models import onednn
  if (why := onednn.problem()) is not None:
    raise SystemExit(why)
  from aetl_jax.bench.timing import torch_usable
  use_torch = not args.no_torch and torch_usable(threads=True)
  print(f"per layer, median of {args.rounds} rounds of {args.repeats}")
  layers_out = layer_rows(batches, args.repeats, args.rounds)
  print(f"per step (epochs of 1,024 images), median of {args.rounds} rounds of {args.repeats}")
  return {"layers": layers_out,
          "steps": step_rows(batches, args.repeats, args.rounds, use_torch)}


if __name__ == "__main__":
  from aetl_jax.core.heap import start
  start()
  main()
