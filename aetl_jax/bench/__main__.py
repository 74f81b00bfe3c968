"""The benchmark suite: ``python -m aetl_jax.bench [--quick] [--no-torch] [--json FILE]``.

In one run, after warm-up, medians of 5 repeats, compile time excluded:
* the machine's float32 matmul peak (a large jitted matmul);
* pretraining examples/s of the dense autoencoder and the conv autoencoder
  with sub-pixel and with transposed-conv upsampling (the latter is
  ``digits_transfer``'s default) on 28×28 inputs at two batch sizes with both
  epoch runners, each model's
  XLA-counted GFLOP per example and achieved GFLOP/s as a fraction of the peak
  (conv rows: ``conv_impl=auto`` per batch — oneDNN's convolutions where the machine builds
  them, then also ``conv_impl=hybrid``, XLA's — and the matmul formulation in a scan);
* the ceiling each step's own kernels set: its matmuls and convolutions replayed
  alone (:mod:`aetl_jax.bench.ceiling`) as a fraction of the peak, and the
  share of the step's time they would take at that speed;
* fine-tuning examples/s of full fine-tuning, linear probing on cached
  features and partial freezing;
* the same models, batch sizes and optimiser in plain PyTorch (optional:
  ``pip install -e .[bench]``), as the ratio aetl_jax / PyTorch; the conv
  model is timed in both memory formats (NCHW and channels-last) and the
  faster one is the baseline;
* the sequence autoencoder's pretraining sentences/s and tokens/s against a
  PyTorch LSTM autoencoder of the same size (:mod:`aetl_jax.bench.sequence`);
* ResNet-18's train step at 64×64 and 224×224 against torchvision's
  (:mod:`aetl_jax.bench.backbone`);
* the Ladder network's step against a plain classifier step, and ADDA's two-player step
  against a one-player classification step (:mod:`aetl_jax.bench.steps`);
* the number of XLA compilations during the timed parts (must be 0).

The process reuses the host memory XLA:CPU frees (:mod:`aetl_jax.core.heap`;
``AETL_REUSE_HEAP=0``: JAX's and glibc's defaults), and ``AETL_HUGEPAGES=1`` adds glibc's huge
pages for large blocks (:mod:`aetl_jax.core.hugepages`); PyTorch in the same process gets the
same settings. The header says which settings a run had.
"""

from __future__ import annotations

import argparse
import os
import platform

import jax
import jax.numpy as jnp

from aetl_jax.bench.ceiling import LOOP, kernels_thunk
from aetl_jax.bench.timing import (timed, timed_interleaved, hlo_flops, int_list,
                                   time_calls, torch_usable, write_json)
from aetl_jax.core import heap, hugepages

# The one command that installs CPU builds of the PyTorch baselines (a plain `pip install
# torch torchvision` takes CUDA builds of several GB on Linux).
BASELINES_COMMAND = ("install the CPU builds: pip install torch torchvision --index-url "
                     "https://download.pytorch.org/whl/cpu")


def backbone_usable():
  from aetl_jax.bench.backbone import torchvision_usable
  return torchvision_usable()


def matmul_peak(n: int, repeats: int) -> float:
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
  f = jax.jit(lambda a, b: a @ b)
  t = time_calls(lambda: f(a, a), repeats=repeats)
  return 2 * n ** 3 / t["median_s"] / 1e9


# Each runner with the conv implementation the library recommends for it
# (models/conv_ops.resolve_conv_impl): 'auto' per batch (on CPU 'onednn' where oneDNN's
# handlers build, else 'hybrid': XLA's
# convolutions for wide layers, the narrow formulation for the output layer),
# the matmul formulation inside a scan (XLA:CPU's convolutions are ~20× slower
# there).
CONV_IMPL_FOR_RUNNER = {"scan": "matmul", "per_batch": "auto"}


def pretrain_setup(family: str, runner: str, n: int, conv_impl: str | None = None):
  """(reconstruction objective, initial params, ``n`` random 28×28 images) of the model of
  one pretraining row: 'mlp', 'conv' (sub-pixel) or 'conv_transpose', with ``conv_impl``
  (default: the implementation recommended for ``runner``)."""
  from aetl_jax.api import load_config
  from aetl_jax.models.registry import build_autoencoder
  from aetl_jax.objectives.registry import make_objective
  from aetl_jax.tasks.transfer import default_config
  upsampling = "transpose" if family == "conv_transpose" else "subpixel"
  base = family.split("_")[0]
  config = load_config(default_config(), [f"model.family='{base}'"] + (
      ["model.widths=(256, 128)"] if base == "mlp" else
      [f"model.upsampling='{upsampling}'",
       f"model.conv_impl='{conv_impl or CONV_IMPL_FOR_RUNNER[runner]}'"]))
  x = jax.random.uniform(jax.random.PRNGKey(0), (n, 28, 28, 1))
  model = build_autoencoder(config.model, (28, 28, 1))
  params = model.init(jax.random.PRNGKey(0), x[:1], method="reconstruct")["params"]
  return make_objective(model, config.objective), params, x


def jax_pretrain(family: str, batch: int, runner: str, n: int, kernel_cache: dict | None = None,
                 conv_impl: str | None = None):
  """(one epoch as a thunk, XLA-counted FLOPs per example, examples per epoch,
  (the step's matmuls and convolutions alone, ``LOOP`` times each, as a thunk;
  their FLOPs per step): :mod:`aetl_jax.bench.ceiling`; equal kernels compiled once
  through ``kernel_cache``), with ``conv_impl`` (default: the one for ``runner``). Where that
  resolves to 'onednn' the FLOPs and the kernels are None: XLA neither counts nor replays
  custom calls."""
  from aetl_jax.engine.compiler import train_compiler_options
  from aetl_jax.engine.loop import make_epoch_fn
  from aetl_jax.engine.state import TrainState
  from aetl_jax.engine.step import make_train_step
  from aetl_jax.core.optim import make_optimizer
  loss, params, x = pretrain_setup(family, runner, n, conv_impl)
  tx = make_optimizer(learning_rate=1e-3)
  step = make_train_step(loss, tx)
  state = TrainState.create(params, tx)
  step_args = (state, {"images": {"image": x[:batch]}}, jax.random.PRNGKey(0))
  options = train_compiler_options(family.split("_")[0])
  flops = kernels = kernel_flops = None
  if _resolved(family, runner, conv_impl) != "onednn":
    flops = hlo_flops(jax.jit(step), *step_args) / batch
    kernels, kernel_flops, _ = kernels_thunk(step, step_args, compiler_options=options,
                                             cache=kernel_cache)
  epoch = make_epoch_fn(step, batch_size=batch, runner=runner, compiler_options=options)
  holder = {"s": TrainState.create(jax.tree.map(jnp.copy, params), tx)}

  def run():
    holder["s"], m = epoch(holder["s"], {"images": {"image": x}}, jax.random.PRNGKey(1))
    return m

  return run, flops, (n // batch) * batch, (kernels, kernel_flops)


def torch_pretrain(family: str, batch: int, n: int, memory_format: str = "contiguous"):
  """One epoch of the same model in plain PyTorch, in ``memory_format`` (contiguous,
  channels_last), as a thunk."""
  import torch
  from torch import nn
  torch.manual_seed(0)
  fmt = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}[memory_format]
  if family == "mlp":
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128),
                          nn.ReLU(), nn.Linear(128, 32), nn.Linear(32, 128), nn.ReLU(),
                          nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 784),
                          nn.Unflatten(1, (1, 28, 28)))
  else:
    upsample = ([nn.ConvTranspose2d(64, 64, 4, 2, 1), nn.ReLU(),
                 nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU()]
                if family == "conv_transpose" else
                [nn.Conv2d(64, 256, 3, 1, 1), nn.PixelShuffle(2), nn.ReLU(),
                 nn.Conv2d(64, 128, 3, 1, 1), nn.PixelShuffle(2), nn.ReLU()])
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(), nn.Flatten(),
        nn.Linear(64 * 49, 32), nn.Linear(32, 64 * 49), nn.ReLU(), nn.Unflatten(1, (64, 7, 7)),
        *upsample, nn.Conv2d(32, 1, 3, 1, 1))
  model = model.to(memory_format=fmt)
  opt = torch.optim.Adam(model.parameters(), lr=1e-3)
  loss_fn = nn.BCEWithLogitsLoss()
  x = torch.rand(n, 1, 28, 28).contiguous(memory_format=fmt)

  def epoch():
    perm = torch.randperm(n)
    for i in range(n // batch):
      xb = x[perm[i * batch:(i + 1) * batch]].contiguous(memory_format=fmt)
      opt.zero_grad(set_to_none=True)
      loss = loss_fn(model(xb), xb)
      loss.backward()
      opt.step()
    return None

  return epoch


def jax_finetune(mode: str, batch: int, n: int, repeats: int):
  from aetl_jax.models.autoencoder import Classifier
  from aetl_jax.models.mlp import MLPEncoder
  from aetl_jax.objectives.classification import make_classification_loss
  from aetl_jax.engine.loop import make_epoch_fn
  from aetl_jax.engine.state import TrainState
  from aetl_jax.engine.step import make_train_step
  from aetl_jax.core.optim import make_optimizer
  from aetl_jax.core.rules import trainable_mask
  model = Classifier(MLPEncoder((256, 128), 32), 10)
  key = jax.random.PRNGKey(0)
  x = jax.random.uniform(key, (n, 28, 28, 1))
  y = jax.random.randint(key, (n,), 0, 10)
  params = model.init(key, x[:1])["params"]
  tx = make_optimizer(learning_rate=1e-3)
  if mode == "linear_probe (cached)":
    feats = jax.jit(lambda p, v: model.apply({"params": p}, v, method="encode"))(params, x)
    apply = lambda h, f, r: model.apply({"params": {"head": h}}, f, method="classify_features")
    step, train_params, data, mask = (make_train_step(make_classification_loss(apply, role=None), tx),
                                      params["head"], {"image": feats, "label": y}, None)
  else:
    rules = ((".*", 1.0),) if mode == "finetune" else (("encoder/block_0/.*", "frozen"),
                                                      (".*", 1.0))
    mask = trainable_mask(params, rules)
    apply = lambda p, v, r: model.apply({"params": p}, v)
    step = make_train_step(make_classification_loss(apply, role=None), tx, mask)
    train_params, data = params, {"image": x, "label": y}
  epoch = make_epoch_fn(step, batch_size=batch, runner="scan")
  holder = {"s": TrainState.create(train_params, tx, mask)}

  def run():
    holder["s"], m = epoch(holder["s"], data, jax.random.PRNGKey(1))
    return m

  seconds, compiles = timed(run, repeats)
  return (n // batch) * batch / seconds, compiles


def _arguments(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="tiny sizes; no sub-pixel conv, plain-shuffle sequence or XLA-conv "
                      "ResNet rows (each runs another row's code again): checks the harness")
  parser.add_argument("--no-torch", action="store_true")
  parser.add_argument("--json", help="write every row to this file")
  parser.add_argument("--batches", help="pretraining batch sizes, comma-separated "
                      "(default 64,256; the first one is also the fine-tuning batch)")
  args = parser.parse_args(argv)
  args.batches = _batches(args.batches, args.quick)
  return args


def _batches(text: str | None, quick: bool) -> tuple[int, ...]:
  if text is None:
    return (32,) if quick else (64, 256)
  batches = int_list(text)
  if not batches:
    raise SystemExit(f"--batches must be comma-separated positive integers (e.g. 64,256), "
                     f"got {text!r}")
  return batches


def _torch_baselines(wanted: bool) -> bool:
  """Whether the PyTorch rows run; says why not and how to install them."""
  use_torch = wanted and torch_usable(threads=True)
  if wanted and not use_torch:
    print(f"no PyTorch baselines: torch is not installed; {BASELINES_COMMAND}\n")
  if use_torch and (why := backbone_usable()) is not None:
    print(f"no torchvision baseline for ResNet-18 ({why}); {BASELINES_COMMAND}\n")
  return use_torch


def _machine(use_torch: bool) -> dict:
  return {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
          "cpu_count": os.cpu_count(), "platform": platform.platform(), "jax": jax.__version__,
          "torch": __import__("torch").__version__ if use_torch else None,
          "heap": heap.state(), "host_memory": hugepages.state(),
          "page_reporting_order": hugepages.page_reporting_order()}


PRETRAIN_HEADER = (f"{'pretraining':<14} {'batch':>5} {'runner':<16} {'ex/s':>9} {'GFLOP/ex':>9} "
                   f"{'GFLOP/s':>8} {'% peak':>7} {'torch ex/s':>10} {'jax/torch':>9} "
                   f"{'compiles':>8} {'kern %peak':>10} {'kern share':>10}")


def pretrain_rows(families, batches, use_torch: bool, peak: float, repeats: int) -> list[dict]:
  """Every (family, batch, runner): examples/s against PyTorch's best memory format, the
  fraction of the matmul peak, and the step's kernels timed alone."""
  print(PRETRAIN_HEADER)
  out, kernel_cache = [], {}
  for family, n in families:
    formats = ("contiguous", "channels_last") if family != "mlp" else ("contiguous",)
    for batch in batches:
      out += _pretrain_rows(family, n, batch, formats if use_torch else (), peak, repeats,
                            kernel_cache)
  return out


def _resolved(family: str, runner: str, conv_impl: str | None) -> str | None:
  """The conv implementation a row runs (None for the dense AE)."""
  if family == "mlp":
    return None
  from aetl_jax.models.conv_ops import resolve_conv_impl
  return resolve_conv_impl(conv_impl or CONV_IMPL_FOR_RUNNER[runner])


def _runs(family: str) -> list[tuple[str, str, str | None]]:
  """(name, runner, conv_impl) of a family's rows: both runners with their recommended
  implementation, and for the conv AEs, where 'auto' runs oneDNN's convolutions
  (:mod:`aetl_jax.models.onednn`), per batch with XLA's too (``conv_impl='hybrid'``)."""
  runs = [(runner, runner, None) for runner in ("scan", "per_batch")]
  if family != "mlp":
    from aetl_jax.models import onednn
    if (why := onednn.problem()) is None:
      runs.append(("hybrid", "per_batch", "hybrid"))
    else:
      print(f"  conv_impl='auto' runs XLA's convolutions: {why}")
  return runs


def _pretrain_rows(family, n, batch, formats, peak, repeats, kernel_cache) -> list[dict]:
  contenders, flops_of, kernel_flops = {}, {}, {}
  runs = _runs(family)
  for name, runner, conv_impl in runs:
    contenders[name], flops_of[name], used, (kernels, kernel_flops[name]) = (
        jax_pretrain(family, batch, runner, n, kernel_cache, conv_impl))
    if kernels is not None:
      contenders[f"{name} kernels"] = kernels
  for f in formats:
    contenders[f"torch {f}"] = torch_pretrain(family, batch, n, f)
  results = timed_interleaved(contenders, repeats)
  rate_of = {name: used / seconds for name, (seconds, _) in results.items()}
  torch_rates = {f: rate_of[f"torch {f}"] for f in formats}
  torch_format = max(torch_rates, key=torch_rates.get) if torch_rates else None
  torch_rate = torch_rates.get(torch_format)
  if len(torch_rates) > 1:
    print("  torch " + ", ".join(f"{f} {r:.0f} ex/s" for f, r in torch_rates.items())
          + f" (baseline: {torch_format})")
  rows = []
  for name, runner, conv_impl in runs:
    # A oneDNN row computes the hybrid row's model: its FLOPs; its kernels are not XLA's.
    rate, flops = rate_of[name], flops_of[name] or flops_of.get("hybrid")
    kernel_s = kernel_gflops = None
    if f"{name} kernels" in results:
      kernel_s = results[f"{name} kernels"][0] / LOOP
      kernel_gflops = kernel_flops[name] / kernel_s / 1e9 if kernel_s else float("nan")
    gflops, step_s = rate * flops / 1e9, batch / rate
    rows.append({"family": family, "batch": batch, "runner": runner,
                 "conv_impl": _resolved(family, runner, conv_impl),
                 "examples_per_s": rate, "gflop_per_example": flops / 1e9, "gflops": gflops,
                 "fraction_of_peak": gflops / peak, "torch_examples_per_s": torch_rate,
                 "torch_memory_format": torch_format, "torch_examples_per_s_by_format": torch_rates,
                 "ratio_vs_torch": rate / torch_rate if torch_rate else None,
                 "compiles": results[name][1], "kernels_alone_gflops": kernel_gflops,
                 "kernels_alone_fraction_of_peak": (kernel_gflops / peak
                                                    if kernel_gflops is not None else None),
                 "kernel_time_share": kernel_s / step_s if kernel_s is not None else None})
    _print_pretrain_row(rows[-1])
  return rows


def _print_pretrain_row(r: dict) -> None:
  label = r["runner"]
  if r["family"] != "mlp" and r["runner"] == "scan":
    label = "scan/matmul"
  elif r["conv_impl"] in ("onednn", "hybrid"):
    label = f"per_batch/{r['conv_impl']}"
  torch_rate, ratio = r["torch_examples_per_s"], r["ratio_vs_torch"]
  print(f"{r['family']:<14} {r['batch']:5d} {label:<16} {r['examples_per_s']:9.0f} "
        f"{r['gflop_per_example']:9.4f} {r['gflops']:8.1f} {100 * r['fraction_of_peak']:6.1f}% "
        f"{(f'{torch_rate:10.0f}' if torch_rate else '         —')} "
        f"{(f'{ratio:8.2f}x' if torch_rate else '        —')} "
        f"{r['compiles']:8d} {_percent(r['kernels_alone_fraction_of_peak'], 10)} "
        f"{_percent(r['kernel_time_share'], 10)}", flush=True)


def _percent(fraction, width: int) -> str:
  return f"{100 * fraction:{width - 1}.1f}%" if fraction is not None else f"{'—':>{width}}"


def finetune_rows(batch: int, n: int, repeats: int) -> list[dict]:
  print(f"\n{'fine-tuning (MLP 784-256-128-32 + head)':<40} {'batch':>5} {'ex/s':>10} {'compiles':>8}")
  rows = []
  for mode in ("finetune", "partial", "linear_probe (cached)"):
    rate, compiles = jax_finetune(mode, batch, n, repeats)
    rows.append({"mode": mode, "batch": batch, "examples_per_s": rate, "compiles": compiles})
    print(f"{mode:<40} {batch:5d} {rate:10.0f} {compiles:8d}", flush=True)
  return rows


def other_rows(quick: bool, repeats: int, use_torch: bool) -> dict:
  """The sequence AE, ResNet-18 and the Ladder / two-player steps."""
  from aetl_jax.bench import backbone, sequence, steps
  print()
  out = {"sequence": sequence.rows(256 if quick else 4096, 32 if quick else 64, repeats,
                                   use_torch, quick)}
  sequence.print_rows(out["sequence"])
  print()
  out["backbone"] = backbone.rows((32,) if quick else (64, 224), 2 if quick else 32, repeats,
                                  use_torch and backbone.torchvision_usable() is None,
                                  ("auto",) if quick else None)
  backbone.print_rows(out["backbone"])
  print()
  out["steps"] = steps.rows(repeats, quick)
  return out


def main(argv=None):
  args = _arguments(argv)
  quick, batches = args.quick, args.batches
  repeats = 1 if quick else 5
  n_dense, n_conv = (256, 64) if quick else (max(16384, 4 * max(batches)),
                                             max(512, 2 * max(batches)))
  use_torch = _torch_baselines(not args.no_torch)
  rows = {"machine": _machine(use_torch)}
  peak = rows["matmul_peak_gflops"] = matmul_peak(256 if quick else 2048, repeats)
  print(f"backend={jax.default_backend()} cpu_count={os.cpu_count()} jax={jax.__version__}")
  print(f"heap: {rows['machine']['heap']}")
  print(f"huge pages: {rows['machine']['host_memory']}")
  print(f"float32 matmul peak: {peak:.1f} GFLOP/s\n")
  families = (("mlp", n_dense), ("conv", n_conv), ("conv_transpose", n_conv))
  if quick:  # checks the harness: the sub-pixel model would run the conv rows' code once more
    families = tuple(f for f in families if f[0] != "conv")
  rows["pretrain"] = pretrain_rows(families, batches, use_torch, peak, repeats)
  rows["finetune"] = finetune_rows(batches[0], n_dense, repeats)
  rows.update(other_rows(quick, repeats, use_torch))
  rows["compiles_during_timed_parts"] = sum(
      r["compiles"] for part in ("pretrain", "finetune", "sequence", "backbone", "steps")
      for r in rows[part])
  print(f"\ncompilations during the timed parts: {rows['compiles_during_timed_parts']}")
  write_json(args.json, rows)
  return rows


if __name__ == "__main__":
  heap.start()
  main()
