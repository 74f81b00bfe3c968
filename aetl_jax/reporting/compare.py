"""Cross-run comparison: finished workdirs → one table and one figure.

Runs are compared, never pooled: each row is one run's strategy at one budget
(mean ± 95% CI over its seeds), with the config keys that differ between the
runs as columns. Runs whose test sets differ (target data keys, test-set sizes
and class counts) are refused, naming what differs; runs may differ in their source.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from aetl_jax.core.config import flatten
from aetl_jax.reporting.tables import summarise

# Keys that never make two runs different experiments.
IGNORED = ("launch.", "report.")
# Data keys of the source side: runs that differ only in them share a target and test set
# (which source helps is the question such a comparison answers).
SOURCE_KEYS = ("data.source", "data.source_fraction", "data.max_source", "data.stream_source",
               "data.label_space", "data.max_pool")


def load_run(workdir) -> dict:
  workdir = Path(workdir)
  config_path, cells = workdir / "config.json", workdir / "results" / "cells.jsonl"
  if not config_path.exists() or not cells.exists():
    raise ValueError(f"{workdir} is not a finished run (needs config.json and results/cells.jsonl)")
  record = json.loads(config_path.read_text())
  rows, seen = [], set()
  for line in cells.read_text().splitlines():
    try:
      r = json.loads(line)
    except json.JSONDecodeError:
      continue
    key = (r["budget"], r["strategy"], r["seed"])
    if key not in seen:
      seen.add(key)
      rows.append(r)
  data = json.loads((workdir / "data.json").read_text()) if (workdir / "data.json").exists() else {}
  return {"workdir": str(workdir), "experiment": record.get("experiment"),
          "config": flatten(record.get("config", {})), "rows": rows, "test": data.get("test")}


def _same(runs, what: str, value) -> None:
  """A ValueError naming what differs between the runs' ``value`` (for dicts: the keys whose
  values differ, each with every run's value)."""
  values = [value(r) for r in runs]
  if len({json.dumps(v, sort_keys=True, default=str) for v in values}) == 1:
    return
  if all(isinstance(v, dict) for v in values):
    keys = sorted(k for k in set().union(*values)
                  if len({json.dumps(v.get(k), sort_keys=True, default=str) for v in values}) > 1)
    detail = "; ".join(f"{k}: " + " vs ".join(json.dumps(v.get(k), default=str)[:80] for v in values)
                       for k in keys)
  else:
    detail = "; ".join(f"{r['workdir']}: {json.dumps(v, default=str)[:120]}" for r, v in zip(runs, values))
  raise ValueError(f"cannot compare runs whose {what} differ ({detail})")


def differing_keys(runs) -> list[str]:
  keys = sorted(set().union(*(r["config"] for r in runs)))
  return [k for k in keys if not k.startswith(IGNORED)
          and len({json.dumps(r["config"].get(k), default=str) for r in runs}) > 1]


def compare(workdirs) -> tuple[str, list[dict]]:
  """(Markdown table, rows) comparing finished runs."""
  runs = [load_run(d) for d in workdirs]
  if len(runs) < 2:
    raise ValueError("give at least two workdirs to compare")
  _same(runs, "experiments", lambda r: r["experiment"])
  _same(runs, "target data keys", lambda r: {k: v for k, v in r["config"].items()
                                             if k.startswith("data.") and k not in SOURCE_KEYS})
  _same(runs, "test sets", lambda r: r["test"])
  keys = differing_keys(runs)
  out = []
  for run in runs:
    for s in summarise(run["rows"]):
      out.append({"workdir": run["workdir"], **{k: run["config"].get(k) for k in keys},
                  "strategy": s["strategy"], "budget": s["budget"], "mean": s["mean"],
                  "ci95": s["ci95"], "n": s["n"]})
  out.sort(key=lambda r: (r["strategy"], r["budget"], r["workdir"]))
  header = "| run | " + " | ".join(keys) + " | strategy | labels/class | test accuracy |"
  lines = [header, "|" + "---|" * (len(keys) + 4)]
  for r in out:
    spread = "" if math.isnan(r["ci95"]) else f" ± {100 * r['ci95']:.1f}"
    lines.append(f"| {Path(r['workdir']).name} | " + " | ".join(str(r[k]) for k in keys)
                 + f" | {r['strategy']} | {r['budget']} | {100 * r['mean']:.1f}{spread}% (n={r['n']}) |")
  return "\n".join(lines), out


def compare_figure(path, rows) -> Path:
  """Accuracy vs budget, one line per (run, strategy), 95% CI bars clipped to [0, 100]."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
  groups = {}
  for r in rows:
    groups.setdefault((Path(r["workdir"]).name, r["strategy"]), []).append(r)
  for (run, strategy), rs in sorted(groups.items()):
    rs.sort(key=lambda r: r["budget"])
    ys = [100 * r["mean"] for r in rs]
    half = [0.0 if math.isnan(r["ci95"]) else 100 * r["ci95"] for r in rs]
    lo = [min(h, y) for h, y in zip(half, ys)]
    hi = [min(h, 100 - y) for h, y in zip(half, ys)]
    ax.errorbar([r["budget"] for r in rs], ys, yerr=[lo, hi], marker="o", capsize=3,
                label=f"{run}: {strategy}")
  ax.set_xscale("log")
  ax.set_xlabel("labels per class")
  ax.set_ylabel("test accuracy (%), mean ± 95% CI")
  ax.set_ylim(0, 100)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
