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
  out.sort(key=lambda r: (r["strategy"], r["budget"], *(_natural(r[k]) for k in keys),
                          r["workdir"]))
  header = "| run | " + " | ".join(keys) + " | strategy | labels/class | test accuracy |"
  lines = [header, "|" + "---|" * (len(keys) + 4)]
  for r in out:
    spread = "" if math.isnan(r["ci95"]) else f" ± {100 * r['ci95']:.1f}"
    lines.append(f"| {Path(r['workdir']).name} | " + " | ".join(str(r[k]) for k in keys)
                 + f" | {r['strategy']} | {r['budget']} | {100 * r['mean']:.1f}{spread}% (n={r['n']}) |")
  return "\n".join(lines), out


def _natural(value):
  """A sort key that orders numbers by value (1e-3 before 1e-2) and other values as text."""
  try:
    return (0, float(value), "")
  except (TypeError, ValueError):
    return (1, 0.0, str(value))


def compare_figure(path, rows, title: str | None = None) -> Path:
  """One panel per label budget: each (run, strategy)'s test accuracy with its 95% CI, on an
  axis zoomed to them, runs in their table order; the title names the keys that differ."""
  from aetl_jax.reporting.figures import _dot_panel, plt, save_figure
  if title is None:
    fixed = {"workdir", "strategy", "budget", "mean", "ci95", "n"}
    keys = list(dict.fromkeys(k for r in rows for k in r if k not in fixed))
    runs = len({r["workdir"] for r in rows})
    title = f"{runs} runs compared" + (f" by {', '.join(keys)}" if keys else "")
  budgets = sorted({r["budget"] for r in rows})
  labels = list(dict.fromkeys(f"{Path(r['workdir']).name}: {r['strategy']}" for r in rows))
  fig, axes = plt.subplots(1, len(budgets), figsize=(max(6, 4.5 * len(budgets)),
                                                     1.5 + 0.35 * len(labels)),
                           constrained_layout=True, squeeze=False)
  for ax, b in zip(axes[0], budgets):
    _dot_panel(ax, [{**r, "strategy": f"{Path(r['workdir']).name}: {r['strategy']}"}
                    for r in rows if r["budget"] == b], labels)
    ax.set_title(f"{b} labels per class", fontsize=9)
    ax.set_xlabel("test accuracy (%), mean ± 95% CI", fontsize=8)
  fig.suptitle(title, fontsize=10)
  return save_figure(fig, path)
