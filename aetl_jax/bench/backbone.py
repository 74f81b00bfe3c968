"""ResNet-18 training rate (forward + backward + Adam) against torchvision's, in one run.

    python -m aetl_jax.bench.backbone [--sizes 64,224] [--batch 32] [--repeats 3] [--no-torch]

The ``resnet18`` family's classifier (torchvision's layout and BatchNorm, 10 classes, RGB
input) trained by the engine's step (``make_train_step``: BatchNorm statistics carried,
one jitted call per batch) against ``torchvision.models.resnet18`` with the same Adam step,
on the same random images; median of ``--repeats`` interleaved rounds after warm-up,
PyTorch on every core. The default ``conv_impl='auto'`` (on CPU, per layer, XLA's
convolution, patches @ kernel or — where this machine builds them — oneDNN's convolution,
whichever the measured table :mod:`aetl_jax.models.conv_table` says trains that shape
fastest) next to either of XLA's formulations everywhere (``xla``, ``im2col``), and
``onednn`` (oneDNN required) where this machine builds it.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np


def jax_step(size: int, batch: int, impl: str = "auto"):
  """One train step of the engine on a ResNet-18 classifier, as a thunk."""
  import ml_collections
  from aetl_jax.engine.phase import Optim, Phase, build_program, tree_spec
  from aetl_jax.engine.runtime import make_runtime
  from aetl_jax.models.registry import build_classifier
  from aetl_jax.models.variables import tree_of
  from aetl_jax.objectives.registry import OBJECTIVES
  m = ml_collections.ConfigDict(dict(family="resnet18", code_dim=0, input_norm="imagenet",
                                     weights="", conv_impl=impl))
  model = build_classifier(m, 10)
  rng = np.random.RandomState(0)
  data = {"labelled": {"image": jnp.asarray(rng.rand(batch, size, size, 3), jnp.float32),
                       "label": jnp.asarray(rng.randint(0, 10, batch), jnp.int32)}}
  # One compiled program: run eagerly, each of init's operations compiles alone (ResNet-18
  # in a fresh process: 14 s eagerly, 6 s compiled).
  params = tree_of(jax.jit(model.init)(jax.random.PRNGKey(0), data["labelled"]["image"][:1]))
  # The engine's own program: statistics never differentiated, trainable ones updated.
  phase = Phase("bench", OBJECTIVES.get("classification").fn(model, None),
                (("labelled", "labelled", batch),), 1,
                Optim(learning_rate=1e-3, schedule="constant"))
  runtime = make_runtime(family="resnet18", input_shape=(size, size, 3))
  prog = build_program(phase, tree_spec(params), batch, runtime)
  # The family's compiler options, as its epochs compile their step (engine.compiler).
  step = jax.jit(prog.step, donate_argnums=0, compiler_options=runtime.options)
  holder = {"s": prog.init_state(params)}

  def run():
    holder["s"], metrics = step(holder["s"], data, jax.random.PRNGKey(1))
    return metrics

  return run


def torch_step(size: int, batch: int):
  """torchvision's ResNet-18, the same Adam step on the same kind of batch."""
  import torch
  import torchvision
  torch.manual_seed(0)
  model = torchvision.models.resnet18(num_classes=10)
  opt = torch.optim.Adam(model.parameters(), lr=1e-3)
  x = torch.rand(batch, 3, size, size)
  y = torch.randint(0, 10, (batch,))
  model.train()

  def run():
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss

  return run


def torchvision_usable() -> str | None:
  """None when torchvision runs here, else why not."""
  try:
    import torchvision  # noqa: F401
    return None
  except Exception as e:  # noqa: BLE001 - absent, or a build whose ops do not load
    from aetl_jax.core.errors import described
    return described(e, 80)


IMPLS = {"auto": "aetl_jax (auto)", "xla": "aetl_jax (xla conv)", "im2col": "aetl_jax (im2col)",
         "onednn": "aetl_jax (onednn)"}


def default_impls() -> tuple:
  """auto, xla, im2col, and onednn where this machine builds it (models/onednn.py)."""
  from aetl_jax.models import onednn
  return ("auto", "xla", "im2col") + (("onednn",) if onednn.problem() is None else ())


def rows(sizes, batch: int, repeats: int, use_torch: bool, impls=None) -> list[dict]:
  from aetl_jax.bench.timing import timed_interleaved, with_ratios
  impls = impls or default_impls()
  out = []
  for size in sizes:
    contenders = {IMPLS[impl]: jax_step(size, batch, impl) for impl in impls}
    if use_torch:
      contenders["torchvision"] = torch_step(size, batch)
    out += with_ratios(timed_interleaved(contenders, repeats), "torchvision",
                       lambda name, seconds, _: {"model": name, "size": size, "batch": batch,
                                                 "examples_per_s": batch / seconds})
  return out


def print_rows(table: list[dict]) -> None:
  print(f"{'ResNet-18 train step':<22} {'size':>5} {'batch':>5} {'ex/s':>8} {'vs torch':>8} "
        f"{'compiles':>8}")
  from aetl_jax.bench.timing import ratio_text
  for r in table:
    ratio = ratio_text(r["ratio_vs_torch"])
    print(f"{r['model']:<22} {r['size']:5d} {r['batch']:5d} {r['examples_per_s']:8.1f} {ratio} "
          f"{r['compiles']:8d}", flush=True)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="64,224")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--no-torch", action="store_true")
  args = parser.parse_args(argv)
  from aetl_jax.bench.timing import int_list
  sizes = int_list(args.sizes, least=32)
  if not sizes or args.batch < 1:
    raise SystemExit(f"--sizes must be comma-separated integers >= 32 and --batch >= 1, got "
                     f"{args.sizes!r} and {args.batch}")
  use_torch = not args.no_torch
  why = torchvision_usable() if use_torch else "--no-torch"
  if why:
    print(f"torchvision row left out ({why})")
    use_torch = False
  else:
    from aetl_jax.bench.timing import torch_usable
    torch_usable(threads=True)
  table = rows(sizes, args.batch, args.repeats, use_torch)
  print_rows(table)
  return table


if __name__ == "__main__":
  from aetl_jax.core.heap import start
  start()
  main()
