"""oneDNN's own convolutions against XLA:CPU's, per conv-AE layer: what a custom call would gain.

    python -m aetl_jax.bench.onednn_library [--batches 64,256] [--repeats 7] [--rounds 3]

jaxlib's CPU build runs no oneDNN (``python -m aetl_jax.bench.onednn``), and PyPI's oneDNN
wheels are SYCL builds with 600 MB of Intel runtimes. A system oneDNN is another route
(Debian/Ubuntu: ``apt-get install g++ libdnnl-dev``): this command compiles
``onednn_conv.cpp`` (beside this module) against it and times, for every convolution of the
conv autoencoder that ``conv_impl='hybrid'`` gives to XLA (the wide ones), oneDNN's forward,
input-gradient and kernel-gradient passes (NHWC input and HWIO kernel, as a custom call
would receive them: the kernel is reordered to oneDNN's layout inside each timed pass)
against XLA's, jitted alone with the conv family's compiler options. The two runtimes are
timed in alternating rounds (``--rounds``) and each pass reports the median; nothing of the
library changes. Without a compiler or oneDNN it says what is missing, in one line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("onednn_conv.cpp")
INSTALL = "apt-get install g++ libdnnl-dev"
PASSES = ("forward", "input grad", "kernel grad")


def build(directory: str) -> str:
  """The compiled ``onednn_conv`` in ``directory``; SystemExit naming what is missing."""
  compiler = shutil.which("g++") or shutil.which("c++")
  if compiler is None:
    raise SystemExit(f"no C++ compiler (g++) on PATH: oneDNN's convolutions need one and "
                     f"oneDNN ({INSTALL})")
  binary = str(Path(directory) / "onednn_conv")
  done = subprocess.run([compiler, "-O2", "-std=c++17", str(SOURCE), "-o", binary, "-ldnnl"],
                        capture_output=True, text=True)
  if done.returncode:
    first = next((line for line in done.stderr.splitlines() if "error" in line),
                 done.stderr.strip()[:200])
    raise SystemExit(f"could not build against oneDNN ({INSTALL}): {first}")
  return binary


def layers() -> list[tuple]:
  """(name, size, cin, cout, stride) of the conv AE's convolutions that 'hybrid' runs with
  XLA's convolution (at least ``NARROW_BELOW`` output channels)."""
  from aetl_jax.bench.conv_layers import LAYERS
  from aetl_jax.models.conv_ops import NARROW_BELOW
  return [(name, size, cin, cout, stride) for name, size, cin, cout, stride, kind in LAYERS
          if kind == "conv" and cout >= NARROW_BELOW]


def _onednn(binary: str, layer: tuple, batch: int, repeats: int) -> dict:
  from aetl_jax.models.conv_ops import _conv_geometry
  _, size, cin, cout, stride = layer
  _, low, high = _conv_geometry(size, 3, stride, "SAME")
  args = [batch, size, size, cin, cout, 3, stride, low, high, repeats, 3]
  done = subprocess.run([binary, *map(str, args)], capture_output=True, text=True, check=True)
  return json.loads(done.stdout)


def _xla(layer: tuple, batch: int) -> dict:
  """{pass: thunk} of XLA's convolution of ``layer`` (the per-layer bench's programs)."""
  from aetl_jax.bench.conv_layers import _jax_contenders
  name, size, cin, cout, stride = layer
  contenders = dict(_jax_contenders((name, size, cin, cout, stride, "conv"), batch))
  return contenders["jax xla"]


def rows(batches, repeats: int, rounds: int, binary: str) -> list[dict]:
  """One row per (batch, layer): each pass's median ms for XLA and oneDNN."""
  from aetl_jax.bench.timing import time_interleaved
  out = []
  for batch in batches:
    for layer in layers():
      xla = _xla(layer, batch)
      times = {("xla", p): [] for p in PASSES} | {("onednn", p): [] for p in PASSES}
      impl = version = ""
      for _ in range(rounds):
        for p, seconds in time_interleaved(xla, repeats=repeats).items():
          times["xla", p].append(1e3 * seconds)
        measured = _onednn(binary, layer, batch, repeats)
        impl, version = measured["impl"], measured["version"]
        for p in PASSES:
          times["onednn", p].append(measured[p])
      row = {"layer": layer[0], "batch": batch, "shape": f"{layer[1]}x{layer[1]} "
             f"{layer[2]}->{layer[3]} s{layer[4]}", "impl": impl, "onednn": version}
      for key, ts in times.items():
        row[key] = statistics.median(ts)
      out.append(row)
      print_row(row)
  return out


def print_row(r: dict) -> None:
  cells = "  ".join(f"{p} {r['xla', p]:7.2f} / {r['onednn', p]:7.2f}" for p in PASSES)
  xla, onednn = (sum(r[who, p] for p in PASSES) for who in ("xla", "onednn"))
  print(f"b{r['batch']:<4} {r['layer']:<16} {r['shape']:<17} ms XLA / oneDNN: {cells}  "
        f"all three {xla:7.2f} / {onednn:7.2f} ({xla / onednn:.2f}x)", flush=True)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batches", default="64,256")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args(argv)
  try:
    batches = tuple(int(b) for b in args.batches.split(","))
  except ValueError:
    batches = ()
  if not batches or min(batches) < 1 or args.repeats < 1 or args.rounds < 1:
    raise SystemExit(f"--batches takes positive integers, comma-separated, and --repeats, "
                     f"--rounds must be >= 1; got {args.batches!r}, {args.repeats}, "
                     f"{args.rounds}")
  with tempfile.TemporaryDirectory() as directory:
    binary = build(directory)
    print(f"oneDNN's convolutions (onednn_conv.cpp) against XLA:CPU's, median of "
          f"{args.rounds} alternating rounds")
    return rows(batches, args.repeats, args.rounds, binary)


if __name__ == "__main__":
  main()
