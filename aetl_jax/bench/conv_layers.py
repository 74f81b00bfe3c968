"""Per-layer convolution rates: where the conv autoencoder's time goes, XLA against PyTorch.

    python -m aetl_jax.bench.conv_layers [--batch 64] [--repeats 20] [--no-torch]

For every convolution of the conv autoencoder (28×28×1 input, channels 32-64;
sub-pixel upsampling, plus the two 4×4 stride-2 transposed convolutions of the
transposed-conv decoder) it times, each jitted alone with the compiler options the
library picks for conv train steps: the forward pass, the input gradient and
the kernel gradient of XLA's convolution, and of the formulation ``hybrid``
gives that layer (transposed layers: also the plain sub-pixel phases, whose
input gradient is four phase convolutions instead of one strided one). PyTorch (optional) is timed in both memory formats, forward
and backward (one call computes both gradients). Rates are GFLOP/s of the
layer's multiply-adds (2·B·H·W·kh·kw·cin·cout per pass, H·W the output size
of a convolution and the input size of a transposed one), so a row compares
the kernels, not the model.
"""

from __future__ import annotations

import argparse

# (name, input size, cin, cout, stride, kind) of the conv autoencoder's convolutions.
LAYERS = (("encoder/block_0", 28, 1, 32, 2, "conv"), ("encoder/block_1", 14, 32, 64, 2, "conv"),
          ("decoder/block_1", 7, 64, 256, 1, "conv"), ("decoder/block_2", 14, 64, 128, 1, "conv"),
          ("decoder/block_3", 28, 32, 1, 1, "conv"),
          ("transposed/block_1", 7, 64, 64, 2, "transpose"),
          ("transposed/block_2", 14, 64, 32, 2, "transpose"))


def _jax_rows(batch: int, repeats: int):
  import jax

  from aetl_jax.bench.timing import time_calls
  from aetl_jax.models import conv_ops
  from aetl_jax.training.compiler import train_compiler_options

  options = train_compiler_options("conv") or None
  rows = []
  for name, size, cin, cout, stride, kind in LAYERS:
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, size, size, cin))
    ksize = 4 if kind == "transpose" else 3
    kernel = 0.1 * jax.random.normal(jax.random.PRNGKey(1), (ksize, ksize, cin, cout))
    strides = (stride, stride)
    if kind == "transpose":
      formulations = {
          "xla": lambda x, k: jax.lax.conv_transpose(x, k, strides, "SAME",
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC")),
          "subpixel": lambda x, k: conv_ops.subpixel_conv_transpose(x, k, strides, "SAME"),
          "hybrid": lambda x, k: conv_ops.hybrid_conv_transpose(x, k, strides, "SAME")}
    else:
      formulations = {"xla": lambda x, k: conv_ops.xla_conv(x, k, strides, "SAME")}
      if cout < conv_ops.NARROW_BELOW and stride == 1:
        formulations["narrow"] = lambda x, k: conv_ops.narrow_conv(x, k, "SAME")
    for formulation, conv in formulations.items():
      y = conv(x, kernel)
      dy = jax.random.normal(jax.random.PRNGKey(2), y.shape)
      passes = {
          "forward": jax.jit(conv, compiler_options=options),
          "input grad": jax.jit(lambda x, k, conv=conv: jax.vjp(lambda x: conv(x, k), x)[1](dy)[0],
                                compiler_options=options),
          "kernel grad": jax.jit(lambda x, k, conv=conv: jax.vjp(lambda k: conv(x, k), k)[1](dy)[0],
                                 compiler_options=options)}
      pixels = size * size if kind == "transpose" else y.shape[1] * y.shape[2]
      flop = 2 * batch * pixels * ksize * ksize * cin * cout
      row = {"layer": name, "shape": f"{size}x{size} {cin}->{cout} s{stride}",
             "impl": f"jax {formulation}"}
      for label, fn in passes.items():
        seconds = time_calls(lambda fn=fn: fn(x, kernel), repeats=repeats)["median_s"]
        row[label] = (seconds, flop / seconds / 1e9)
      rows.append(row)
  return rows


def _torch_rows(batch: int, repeats: int):
  import torch

  from aetl_jax.bench.timing import time_calls

  rows = []
  for name, size, cin, cout, stride, kind in LAYERS:
    for fmt_name, fmt in (("contiguous", torch.contiguous_format),
                          ("channels_last", torch.channels_last)):
      module = (torch.nn.ConvTranspose2d(cin, cout, 4, stride, 1) if kind == "transpose"
                else torch.nn.Conv2d(cin, cout, 3, stride, 1))
      conv = module.to(memory_format=fmt)
      x = torch.randn(batch, cin, size, size).contiguous(memory_format=fmt).requires_grad_()
      with torch.no_grad():
        y = conv(x)
      dy = torch.randn_like(y)
      forward = time_calls(lambda: conv(x), repeats=repeats)["median_s"]
      both = time_calls(lambda: conv(x).backward(dy), repeats=repeats)["median_s"]
      pixels = size * size if kind == "transpose" else y.shape[2] * y.shape[3]
      flop = 2 * batch * pixels * (16 if kind == "transpose" else 9) * cin * cout
      backward = max(both - forward, 1e-9)
      rows.append({"layer": name, "shape": f"{size}x{size} {cin}->{cout} s{stride}",
                   "impl": f"torch {fmt_name}", "forward": (forward, flop / forward / 1e9),
                   "input+kernel grad": (backward, 2 * flop / backward / 1e9)})
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--no-torch", action="store_true")
  args = parser.parse_args(argv)
  rows = _jax_rows(args.batch, args.repeats)
  if not args.no_torch:
    try:
      import torch
      torch.set_num_threads(__import__("os").cpu_count() or 1)
      rows += _torch_rows(args.batch, args.repeats)
    except ImportError:
      print("PyTorch not installed: JAX rows only (pip install -e .[bench])")
  rows.sort(key=lambda r: [layer[0] for layer in LAYERS].index(r["layer"]))
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


if __name__ == "__main__":
  main()
