"""XLA:CPU's oneDNN options, row by row: do they change the program, and does it win?

    python -m aetl_jax.bench.onednn [--repeats 5] [--rounds 3]

For each convolution of the per-shape table (:func:`aetl_jax.bench.conv_layers.table_layers`,
XLA's formulation, forward + gradients, the family's compiler options) it compiles the
program again with each oneDNN option set added. A set that leaves the optimised HLO as it
was has no effect on this jaxlib (its CPU build has no oneDNN): it is reported, not timed.
A set that changes the program is timed interleaved against the family's options in
``--rounds`` separate rounds of ``--repeats`` calls; it would be worth adopting for that
shape only if it wins every round.
"""

from __future__ import annotations

import argparse

ONEDNN_OPTION_SETS = {
    "use_onednn": {"xla_cpu_use_onednn": True},
    "use_onednn + custom_call": {"xla_cpu_use_onednn": True,
                                 "xla_cpu_experimental_onednn_custom_call": True},
}


def _program(layer: dict, extra: dict):
  """(compiled forward + gradients of ``layer``, XLA's convolution, with ``extra`` options
  added to the family's, its arguments): the program ``--table`` times."""
  from aetl_jax.bench.conv_layers import table_program
  grads, args = table_program(layer, "xla", extra)
  return grads.lower(*args).compile(), args


def _instructions(compiled) -> list[str]:
  """The optimised program's instructions without source locations (metadata and the
  stack-frame table differ between two traces of the same function)."""
  import re
  return [re.sub(r",? (metadata=\{[^}]*\}|stack_frame_id=\d+)", "", line)
          for line in compiled.as_text().splitlines() if " = " in line]


def rows(repeats: int, rounds: int, layers=None) -> list[dict]:
  from aetl_jax.bench.conv_layers import table_layers
  from aetl_jax.bench.timing import time_interleaved
  out = []
  for layer in layers or table_layers():
    base, args = _program(layer, {})
    for name, extra in ONEDNN_OPTION_SETS.items():
      try:
        compiled, _ = _program(layer, extra)
      except Exception as err:  # noqa: BLE001 - an XLA that refuses the option
        out.append({**layer, "options": name, "effect": f"refused: {str(err)[:80]}"})
        continue
      row = {**layer, "options": name}
      if _instructions(compiled) == _instructions(base):
        row["effect"] = "none (identical program)"
      else:
        wins = []
        for _ in range(rounds):
          t = time_interleaved({"base": lambda: base(*args), "onednn": lambda: compiled(*args)},
                               repeats=repeats)
          wins.append(t["onednn"] < t["base"])
          row.setdefault("ms", []).append((1e3 * t["base"], 1e3 * t["onednn"]))
        row["effect"] = "wins every round" if all(wins) else f"wins {sum(wins)}/{rounds} rounds"
      out.append(row)
      print(f"{layer['family']:<9} b{layer['batch']:<4} {layer['size']:>3}px "
            f"{layer['cin']:>4}->{layer['cout']:<4} k{layer['kernel']} s{layer['stride']}  "
            f"{name:<26} {row['effect']}", flush=True)
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args(argv)
  if args.repeats < 1 or args.rounds < 1:
    raise SystemExit(f"--repeats and --rounds must be >= 1, got {args.repeats}, {args.rounds}")
  return rows(args.repeats, args.rounds)


if __name__ == "__main__":
  from aetl_jax.core.heap import start
  start()
  main()
