"""Timing helpers: warm-up, median of repeats, compile time and XLA memory apart; JSON rows."""

from __future__ import annotations

import json
import statistics
import time

import jax


def block(tree):
  jax.tree.map(lambda x: x.block_until_ready() if hasattr(x, "block_until_ready") else x, tree)
  return tree


def time_calls(fn, *, repeats: int = 5, warmup: int = 1) -> dict:
  """Median/min seconds of ``fn()`` (which must return device arrays)."""
  for _ in range(warmup):
    block(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    block(fn())
    times.append(time.perf_counter() - start)
  return {"median_s": statistics.median(times), "min_s": min(times), "repeats": repeats}


def time_interleaved(fns: dict, *, repeats: int = 5, warmup: bool = True) -> dict:
  """{name: median seconds of fn()}, timing the fns round-robin.

  On a shared VM the machine's speed drifts over seconds; taking one repeat of
  every contender per round exposes them to the same drift, so their ratio is
  steadier than that of back-to-back blocks of repeats.
  """
  if warmup:
    for fn in fns.values():
      block(fn())
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      block(fn())
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(ts) for name, ts in times.items()}


def compiled_stats(jitted, *args) -> dict:
  """Compile time, XLA-counted FLOPs and XLA's memory estimate of one call."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  compile_s = time.perf_counter() - start
  mem = compiled.memory_analysis()
  out = {"compile_s": compile_s, "flops": _flops(compiled.cost_analysis())}
  if mem is not None:
    out.update(temp_bytes=int(mem.temp_size_in_bytes),
               argument_bytes=int(mem.argument_size_in_bytes),
               output_bytes=int(mem.output_size_in_bytes))
  return out


def hlo_flops(jitted, *args) -> float:
  """XLA's FLOP count of one call's HLO, before optimisation (nothing is compiled: for a
  whole step it differs from the compiled program's count by under 1%, fusions aside). Not
  where XLA removes work, e.g. gradients thrown away: :func:`compiled_stats` counts that."""
  return _flops(jitted.lower(*args).cost_analysis())


def _flops(cost) -> float:
  """The FLOP count of a cost analysis (a dict, or a list holding one)."""
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan")))


def write_json(path: str | None, rows) -> None:
  """Writes a benchmark's rows to ``path`` (``--json``); nothing when ``path`` is None."""
  if path:
    with open(path, "w") as f:
      json.dump(rows, f, indent=2)


# XLA compilations, counted for the timed parts of every benchmark (must stay 0).
COMPILES = [0]


def _count_compiles(event, duration, **kwargs):
  if event == "/jax/core/compile/backend_compile_duration":
    COMPILES[0] += 1


def _count_cache_loads(event, **kwargs):
  """A program loaded from JAX's persistent compilation cache was compiled all the same (a
  recompile that hits the disk cache fires no backend-compile event)."""
  if event == "/jax/compilation_cache/cache_hits":
    COMPILES[0] += 1


jax.monitoring.register_event_duration_secs_listener(_count_compiles)
jax.monitoring.register_event_listener(_count_cache_loads)


def timed(fn, repeats: int):
  """Median seconds of fn() and the compilations it caused after warm-up."""
  fn()  # warm-up (compiles)
  before = COMPILES[0]
  t = time_calls(fn, repeats=repeats, warmup=0)
  return t["median_s"], COMPILES[0] - before


def timed_interleaved(fns: dict, repeats: int) -> dict:
  """{name: (median seconds, compilations after warm-up)}, timed round-robin
  (:func:`aetl_jax.bench.timing.time_interleaved`)."""
  for fn in fns.values():
    block(fn())  # warm-up (compiles)
  compiles = dict.fromkeys(fns, 0)

  def counted(name, fn):
    def run():
      before = COMPILES[0]
      out = block(fn())
      compiles[name] += COMPILES[0] - before
      return out
    return run

  medians = time_interleaved({name: counted(name, fn) for name, fn in fns.items()},
                             repeats=repeats, warmup=False)
  return {name: (medians[name], compiles[name]) for name in fns}


def int_list(text: str, least: int = 1) -> tuple[int, ...]:
  """A flag's comma-separated integers, each at least ``least``; () when it is not that (the
  caller names its flag and what is valid)."""
  try:
    values = tuple(int(v) for v in text.split(","))
  except ValueError:
    return ()
  return values if values and min(values) >= least else ()


def torch_usable(*, threads: bool = True) -> bool:
  """Whether PyTorch imports here; ``threads``: let it use every core, as JAX does."""
  try:
    import torch
  except ImportError:
    return False
  if threads:
    import os
    torch.set_num_threads(os.cpu_count() or 1)
  return True


def with_ratios(results: dict, baseline: str, row) -> list[dict]:
  """One row per timed contender (``results``: name -> (seconds, compiles)), each with its
  speed against ``baseline``'s (``ratio_vs_torch``; None for the baseline or without it).
  ``row(name, seconds, compiles)`` makes the row's other fields."""
  base = results.get(baseline, (None,))[0]
  return [{**row(name, seconds, compiles), "compiles": compiles,
           "ratio_vs_torch": base / seconds if base and name != baseline else None}
          for name, (seconds, compiles) in results.items()]


def ratio_text(ratio) -> str:
  return f"{ratio:7.2f}x" if ratio else "       —"
