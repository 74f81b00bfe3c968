"""Per-layer convolution rates: where the conv autoencoder's time goes, XLA against PyTorch.

    python -m aetl_jax.bench.conv_layers [--batch 64] [--repeats 20] [--no-torch]

For every convolution of the conv autoencoder (28×28×1 input, channels 32-64;
sub-pixel upsampling, plus the two 4×4 stride-2 transposed convolutions of the
transposed-conv decoder) it times, each jitted alone with the compiler options
the library picks for conv train steps: the forward pass, the input gradient
and the kernel gradient of XLA's convolution, and of the formulation
``hybrid`` gives that layer (transposed layers: also the plain sub-pixel
phases, whose input gradient is four phase convolutions instead of one strided
one). PyTorch (optional) is timed in both memory formats, forward and backward
(one call computes both gradients). The passes of one layer are timed
round-robin (JAX's, then PyTorch's), so they see the same drift of the
machine's speed. Rates are
GFLOP/s of the layer's multiply-adds (2·B·H·W·kh·kw·cin·cout per pass, H·W the
output size of a convolution and the input size of a transposed one), so a row
compares the kernels, not the model.
"""

from __future__ import annotations

import argparse

# (name, input size, cin, cout, stride, kind) of the conv autoencoder's convolutions.
LAYERS = (("encoder/block_0", 28, 1, 32, 2, "conv"), ("encoder/block_1", 14, 32, 64, 2, "conv"),
          ("decoder/block_1", 7, 64, 256, 1, "conv"), ("decoder/block_2", 14, 64, 128, 1, "conv"),
          ("decoder/block_3", 28, 32, 1, 1, "conv"),
          ("transposed/block_1", 7, 64, 64, 2, "transpose"),
          ("transposed/block_2", 14, 64, 32, 2, "transpose"))


def _flop(layer, batch: int) -> int:
  """Multiply-adds ×2 of one pass: output pixels of a convolution ('SAME'), input pixels
  of a transposed one, times the kernel's taps and channels."""
  _, size, cin, cout, stride, kind = layer
  out_size = size if kind == "transpose" else -(-size // stride)
  ksize = 4 if kind == "transpose" else 3
  return 2 * batch * out_size * out_size * ksize * ksize * cin * cout


def _library_formulations(layer) -> dict:
  """{name: fn(x, kernel)}: XLA's convolution of ``layer`` and the library's formulations of it
  (transposed: plain sub-pixel and 'hybrid'; narrow stride-1: 'narrow')."""
  import jax

  from aetl_jax.models import conv_ops
  _, _, _, cout, stride, kind = layer
  strides = (stride, stride)
  if kind == "transpose":
    return {
        "xla": lambda x, k: jax.lax.conv_transpose(x, k, strides, "SAME",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC")),
        "subpixel": lambda x, k: conv_ops.subpixel_conv_transpose(x, k, strides, "SAME"),
        "hybrid": lambda x, k: conv_ops.hybrid_conv_transpose(x, k, strides, "SAME")}
  formulations = {"xla": lambda x, k: conv_ops.xla_conv(x, k, strides, "SAME")}
  if cout < conv_ops.NARROW_BELOW and stride == 1:
    formulations["narrow"] = lambda x, k: conv_ops.narrow_conv(x, k, "SAME")
  return formulations


def _jax_contenders(layer, batch: int, formulations: dict | None = None):
  """[(impl, {pass: thunk})] of one layer: forward, input and kernel grad, of each of
  ``formulations`` ({name: fn(x, kernel)}; default :func:`_library_formulations`)."""
  import jax

  from aetl_jax.engine.compiler import train_compiler_options

  name, size, cin, cout, stride, kind = layer
  options = train_compiler_options("conv") or None
  x = jax.random.normal(jax.random.PRNGKey(0), (batch, size, size, cin))
  ksize = 4 if kind == "transpose" else 3
  kernel = 0.1 * jax.random.normal(jax.random.PRNGKey(1), (ksize, ksize, cin, cout))
  formulations = formulations or _library_formulations(layer)
  out = []
  for formulation, conv in formulations.items():
    y = conv(x, kernel)
    dy = jax.random.normal(jax.random.PRNGKey(2), y.shape)
    passes = {
        "forward": jax.jit(conv, compiler_options=options),
        "input grad": jax.jit(lambda x, k, conv=conv: jax.vjp(lambda x: conv(x, k), x)[1](dy)[0],
                              compiler_options=options),
        "kernel grad": jax.jit(lambda x, k, conv=conv: jax.vjp(lambda k: conv(x, k), k)[1](dy)[0],
                               compiler_options=options)}
    out.append((f"jax {formulation}",
                {label: (lambda fn=fn: fn(x, kernel)) for label, fn in passes.items()}))
  return out


def _torch_contenders(layer, batch: int):
  """[(impl, {'forward', 'forward+backward': thunk})] in both memory formats."""
  import torch

  name, size, cin, cout, stride, kind = layer
  out = []
  for fmt_name, fmt in (("contiguous", torch.contiguous_format),
                        ("channels_last", torch.channels_last)):
    module = (torch.nn.ConvTranspose2d(cin, cout, 4, stride, 1) if kind == "transpose"
              else torch.nn.Conv2d(cin, cout, 3, stride, 1))
    conv = module.to(memory_format=fmt)
    x = torch.randn(batch, cin, size, size).contiguous(memory_format=fmt).requires_grad_()
    with torch.no_grad():
      y = conv(x)
    dy = torch.randn_like(y)
    out.append((f"torch {fmt_name}", {
        "forward": lambda conv=conv, x=x: conv(x),
        "forward+backward": lambda conv=conv, x=x, dy=dy: conv(x).backward(dy)}))
  return out


def layer_rows(layer, batch: int, repeats: int, use_torch: bool) -> list:
  """One row per implementation of ``layer``: the JAX passes timed round-robin, then the
  PyTorch ones (alternating the two runtimes would time each one's worker threads
  waking up or still spinning from the other's call)."""
  from aetl_jax.bench.timing import time_interleaved

  groups = [_jax_contenders(layer, batch)] + ([_torch_contenders(layer, batch)]
                                              if use_torch else [])
  medians = {}
  for group in groups:
    medians.update(time_interleaved({(impl, p): fn for impl, passes in group
                                     for p, fn in passes.items()}, repeats=repeats))
  contenders = [c for group in groups for c in group]
  name, size, cin, cout, stride, _ = layer
  flop = _flop(layer, batch)
  rows = []
  for impl, passes in contenders:
    row = {"layer": name, "shape": f"{size}x{size} {cin}->{cout} s{stride}", "impl": impl}
    for p in passes:
      if p == "forward+backward":  # torch computes both gradients in one backward call
        seconds = max(medians[impl, p] - medians[impl, "forward"], 1e-9)
        row["input+kernel grad"] = (seconds, 2 * flop / seconds / 1e9)
      else:
        row[p] = (medians[impl, p], flop / medians[impl, p] / 1e9)
    rows.append(row)
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--no-torch", action="store_true")
  parser.add_argument("--table", action="store_true",
                      help="measure the per-shape table conv_impl='auto' reads (JAX only)")
  parser.add_argument("--resnet", default=",".join(f"{s}:{b}" for s, b in RESNET_SIZES),
                      help="with --table: ResNet-18 input sizes and batches, SIZE:BATCH,...")
  parser.add_argument("--conv-ae", action="store_true",
                      help="with --table: the conv autoencoder's layers too (XLA vs narrow)")
  parser.add_argument("--write", metavar="PATH",
                      help="with --table: write it here (the shipped one is "
                           "aetl_jax/models/conv_table.json; AETL_CONV_TABLE points at another)")
  args = parser.parse_args(argv)
  if args.table:
    try:
      resnet = tuple(tuple(int(v) for v in pair.split(":")) for pair in args.resnet.split(","))
    except ValueError:
      resnet = ()
    if not resnet or not all(len(p) == 2 and p[0] >= 32 and p[1] >= 1 for p in resnet):
      raise SystemExit(f"--resnet takes SIZE:BATCH pairs, comma-separated, size >= 32 and "
                       f"batch >= 1 (e.g. 32:64,224:32), got {args.resnet!r}")
    measured = table(args.repeats, table_layers(resnet)
                     + (conv_ae_layers() if args.conv_ae else []))
    if args.write:
      import json
      with open(args.write, "w") as f:
        json.dump(measured, f, indent=1)
        f.write("\n")
    return measured
  from aetl_jax.bench.timing import torch_usable
  use_torch = not args.no_torch and torch_usable(threads=True)
  if not args.no_torch and not use_torch:
    print("PyTorch not installed: JAX rows only (pip install -e .[bench])")
  rows = [row for layer in LAYERS for row in layer_rows(layer, args.batch, args.repeats, use_torch)]
  print(f"batch {args.batch}; ms (GFLOP/s); torch's backward computes both gradients in one call")
  print(f"{'layer':<16} {'shape':<17} {'impl':<20} {'forward':>14} {'input grad':>14} "
        f"{'kernel grad':>14} {'both grads':>14}")
  for r in rows:
    cells = []
    for key in ("forward", "input grad", "kernel grad", "input+kernel grad"):
      cells.append(f"{r[key][0] * 1e3:6.2f} ({r[key][1]:4.0f})" if key in r else f"{'—':>14}")
    print(f"{r['layer']:<16} {r['shape']:<17} {r['impl']:<20} " + " ".join(f"{c:>14}" for c in cells),
          flush=True)
  return rows


# --table: every distinct convolution of ResNet-18 at the sizes of RESNET_SIZES (and with
# --conv-ae the conv autoencoder's stride-1 layers), each candidate formulation timed as one
# compiled call of forward + the gradients a train step takes (the stem has no input gradient).
def resnet18_layers(size: int) -> list[tuple]:
  """(input size, cin, cout, kernel, stride, count) of ResNet-18's convolutions at ``size`` px."""
  s = -(-size // 4)  # after the stem and the max-pool
  out = [(size, 3, 64, 7, 2, 1), (s, 64, 64, 3, 1, 4)]
  for cin, cout in ((64, 128), (128, 256), (256, 512)):
    out += [(s, cin, cout, 3, 2, 1), (s, cin, cout, 1, 2, 1)]
    s = -(-s // 2)
    out.append((s, cout, cout, 3, 1, 3))
  return out


# (input px, batch) of the shipped table; below 64 px the network uses im2col (a scan)
RESNET_SIZES = ((64, 32), (128, 32), (224, 32))


def table_layers(resnet=RESNET_SIZES) -> list[dict]:
  """The shapes ``--table`` measures, with their candidates: ResNet-18's convolutions at
  each (input size, batch) of ``resnet``, XLA's convolution, patches @ kernel (torch's
  symmetric padding) and, where its handlers build here, oneDNN's convolution. (The conv
  autoencoder's 'hybrid' keeps its measured rule: the narrow formulation below 8 output
  channels; ``--table --conv-ae`` adds its layers.)"""
  from aetl_jax.models import onednn
  candidates = ("xla", "patches") + (("onednn",) if onednn.usable() else ())
  return [dict(family="resnet18", net=size, batch=batch, size=in_size, cin=cin, cout=cout,
               kernel=k, stride=stride, count=count, candidates=candidates)
          for size, batch in resnet for in_size, cin, cout, k, stride, count in
          resnet18_layers(size)]


def conv_ae_layers() -> list[dict]:
  """The conv autoencoder's stride-1 layers at batch 64 and 256: XLA or narrow."""
  return [dict(family="conv", batch=batch, size=size, cin=cin, cout=cout, kernel=3, stride=1,
               count=1, candidates=("xla", "narrow"))
          for batch in (64, 256) for _, size, cin, cout, stride, kind in LAYERS
          if kind == "conv" and stride == 1]


def table_program(layer: dict, formulation: str, extra_options: dict | None = None):
  """(forward + gradients of ``layer`` by ``formulation``, jitted with the options the
  family's step compiles with at the network's input size plus ``extra_options``; its
  arguments)."""
  import jax
  import jax.numpy as jnp
  from jax import lax

  from aetl_jax.engine.compiler import train_compiler_options
  from aetl_jax.models import conv_ops, onednn
  k, s, p = layer["kernel"], (layer["stride"],) * 2, layer["kernel"] // 2

  def conv(x, kernel):
    if formulation == "narrow":
      return conv_ops.narrow_conv(x, kernel, "SAME")
    if formulation == "patches":
      return conv_ops.patches_conv(jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))), kernel, s,
                                   "VALID")
    if formulation == "onednn":
      return onednn.conv(x, kernel, s, ((p, p), (p, p)))
    return lax.conv_general_dilated(x, kernel, s, ((p, p), (p, p)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))

  x = jax.random.normal(jax.random.PRNGKey(0),
                        (layer["batch"], layer["size"], layer["size"], layer["cin"]))
  kernel = 0.05 * jax.random.normal(jax.random.PRNGKey(1), (k, k, layer["cin"], layer["cout"]))
  dy = jax.random.normal(jax.random.PRNGKey(2), jax.eval_shape(conv, x, kernel).shape)
  argnums = (1,) if layer["cin"] <= 3 else (0, 1)  # an image input needs no gradient
  net = (layer["net"],) * 2 + (3,) if "net" in layer else None
  options = {**train_compiler_options(layer["family"], None, net), **(extra_options or {})}
  grads = jax.jit(jax.grad(lambda x, kernel: jnp.vdot(conv(x, kernel), dy), argnums),
                  compiler_options=options or None)
  return grads, (x, kernel)


def _table_fn(layer: dict, formulation: str):
  """:func:`table_program` as a thunk."""
  grads, args = table_program(layer, formulation)
  return lambda: grads(*args)


def table(repeats: int, layers=None) -> dict:
  """The measured table (see :mod:`aetl_jax.models.conv_table`) of ``layers`` (default:
  :func:`table_layers`)."""
  import os
  import platform

  import jax

  from aetl_jax.bench.timing import time_interleaved
  entries = []
  for layer in layers or table_layers():
    fns = {c: _table_fn(layer, c) for c in layer["candidates"]}
    ms = {c: 1e3 * t for c, t in time_interleaved(fns, repeats=repeats).items()}
    out = -(-layer["size"] // layer["stride"])
    entries.append({"backend": jax.default_backend(), "family": layer["family"],
                    **({"net": layer["net"]} if "net" in layer else {}),
                    "batch": layer["batch"], "size": layer["size"], "cin": layer["cin"],
                    "cout": layer["cout"], "kernel": layer["kernel"], "stride": layer["stride"],
                    "out": out, "pixels": layer["batch"] * out * out, "count": layer["count"],
                    "ms": {c: round(v, 3) for c, v in ms.items()},
                    "best": min(ms, key=ms.get)})
    e = entries[-1]
    print(f"{e['family']:<9} b{e['batch']:<4} {e['size']:>3}px {e['cin']:>4}->{e['cout']:<4} "
          f"k{e['kernel']} s{e['stride']} x{e['count']}  "
          + "  ".join(f"{c} {v:8.2f} ms" for c, v in e["ms"].items()) + f"  -> {e['best']}",
          flush=True)
  return {"machine": f"{platform.machine()} {platform.processor() or ''} "
                     f"{os.cpu_count()} cores".replace("  ", " "),
          "jax": jax.__version__, "repeats": repeats,
          "command": "python -m aetl_jax.bench.conv_layers --table --write PATH",
          "layers": entries}


if __name__ == "__main__":
  from aetl_jax.core.heap import start
  start()
  main()
