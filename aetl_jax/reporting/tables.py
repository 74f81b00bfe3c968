"""Aggregates per-seed results into a strategy × budget table.

The spread is a 95% confidence interval of the mean over seeds (Student t,
n-1 degrees of freedom), alongside the standard deviation and n.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats


def summarise(rows: list[dict], *, metric: str = "test_accuracy",
              keys: tuple[str, ...] = ("budget", "strategy")) -> list[dict]:
  groups = defaultdict(list)
  for r in rows:
    groups[tuple(r[k] for k in keys)].append(float(r[metric]))
  out = []
  for group, values in groups.items():
    v = np.asarray(values)
    n = len(v)
    std = float(v.std(ddof=1)) if n > 1 else math.nan
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else math.nan
    out.append({**dict(zip(keys, group)), "metric": metric, "mean": float(v.mean()), "std": std,
                "ci95": half, "n": n, "min": float(v.min()), "max": float(v.max())})
  return out


def markdown_table(summary: list[dict], strategies: list[str], budgets: list, *,
                   scale: float = 100.0, unit: str = "%") -> str:
  """Rows = strategies (in the given order), columns = label budgets."""
  index = {(s["strategy"], s["budget"]): s for s in summary}
  header = "| strategy | " + " | ".join(f"{b} labels/class" for b in budgets) + " |"
  lines = [header, "|---|" + "---|" * len(budgets)]
  for strategy in strategies:
    cells = []
    for b in budgets:
      s = index.get((strategy, b))
      if s is None:
        cells.append("—")
      elif math.isnan(s["ci95"]):
        cells.append(f"{scale * s['mean']:.1f}{unit} (n={s['n']})")
      else:
        cells.append(f"{scale * s['mean']:.1f} ± {scale * s['ci95']:.1f}{unit} (n={s['n']})")
    lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_tables(summary: list[dict], directory, *, strategies, budgets, caption: str = "") -> str:
  """Writes results.md, results.csv and results.json; returns the Markdown."""
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  md = markdown_table(summary, strategies, budgets)
  if caption:
    md = caption.rstrip() + "\n\n" + md
  (directory / "results.md").write_text(md + "\n")
  (directory / "results.json").write_text(json.dumps(summary, indent=2))
  with open(directory / "results.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(summary[0].keys()) if summary else ["strategy"])
    writer.writeheader()
    writer.writerows(summary)
  return md
