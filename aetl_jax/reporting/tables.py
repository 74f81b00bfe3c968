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


# A cell that ended below this accuracy on its own labelled training set did not fit them:
# the table marks it (UNDERFIT_MARK) instead of reporting an unconverged run as a result.
UNDERFIT_BELOW = 0.99
UNDERFIT_MARK = "†"


def summarise(rows: list[dict], *, metric: str = "test_accuracy",
              keys: tuple[str, ...] = ("budget", "strategy")) -> list[dict]:
  """Mean, std, 95% CI, n, min and max of ``metric`` per group; for cells trained by gradient
  steps (rows with ``phases``), the lowest training accuracy (``min_train_accuracy``; a k-NN
  or spreading probe is not meant to reproduce its labels)."""
  groups, train = defaultdict(list), defaultdict(list)
  for r in rows:
    group = tuple(r[k] for k in keys)
    groups[group].append(float(r[metric]))
    if r.get("phases") and r.get("train_accuracy") is not None:
      train[group].append(float(r["train_accuracy"]))
  out = []
  for group, values in groups.items():
    v = np.asarray(values)
    n = len(v)
    std = float(v.std(ddof=1)) if n > 1 else math.nan
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else math.nan
    out.append({**dict(zip(keys, group)), "metric": metric, "mean": float(v.mean()), "std": std,
                "ci95": half, "n": n, "min": float(v.min()), "max": float(v.max())})
    if train[group]:
      out[-1]["min_train_accuracy"] = min(train[group])
  return out


def underfit(summary: list[dict]) -> list[dict]:
  """The groups with a seed below :data:`UNDERFIT_BELOW` training accuracy."""
  return [s for s in summary if s.get("min_train_accuracy", 1.0) < UNDERFIT_BELOW]


def paired_differences(rows: list[dict], *, baseline: str, metric: str = "test_accuracy") -> list[dict]:
  """Per (budget, strategy): mean ± 95% CI of ``metric - baseline`` paired by seed.

  Seeds of one budget share their labelled subset across strategies, so the
  paired difference removes the subset-to-subset variance that dominates the
  per-strategy intervals at small budgets.
  """
  base = {(r["budget"], r["seed"]): float(r[metric]) for r in rows if r["strategy"] == baseline}
  diffs = defaultdict(list)
  for r in rows:
    if r["strategy"] != baseline and (r["budget"], r["seed"]) in base:
      diffs[(r["budget"], r["strategy"])].append(float(r[metric]) - base[(r["budget"], r["seed"])])
  return summarise([{"budget": b, "strategy": s, "delta": d}
                    for (b, s), values in diffs.items() for d in values], metric="delta")


def markdown_table(summary: list[dict], strategies: list[str], budgets: list, *,
                   scale: float = 100.0, unit: str = "%", signed: bool = False) -> str:
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
      else:
        mean = f"{scale * s['mean']:+.1f}" if signed else f"{scale * s['mean']:.1f}"
        spread = "" if math.isnan(s["ci95"]) else f" ± {scale * s['ci95']:.1f}"
        mark = UNDERFIT_MARK if s in underfit([s]) else ""
        cells.append(f"{mean}{spread}{unit} (n={s['n']}){mark}")
    lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_tables(summary: list[dict], directory, *, strategies, budgets, caption: str = "",
                 paired: dict[str, list[dict]] | None = None) -> str:
  """Writes results.md, results.csv and results.json; returns the Markdown.

  ``paired`` maps a baseline strategy to its rows from :func:`paired_differences`: a table
  of differences to each baseline with rows follows the first, and its rows (with
  ``baseline`` set) follow the summary's in the CSV and JSON files.
  """
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  md = markdown_table(summary, strategies, budgets)
  flagged = underfit(summary)
  if flagged:
    md += (f"\n\n{UNDERFIT_MARK} a seed ended below {100 * UNDERFIT_BELOW:.0f}% accuracy on its own "
           f"labelled training set (lowest: " + ", ".join(
               f"{s['strategy']} at {s['budget']} labels/class {100 * s['min_train_accuracy']:.1f}%"
               for s in flagged) + "): it did not fit its labels; train longer "
           "(transfer.min_steps) before reading its number.")
  if caption:
    md = caption.rstrip() + "\n\n" + md
  for baseline, rows in (paired or {}).items():
    if not rows:  # nothing ran beside the baseline on its seeds: no table
      continue
    others = [s for s in strategies if s != baseline]
    md += (f"\n\nDifference to `{baseline}` in accuracy points, paired by seed (same labelled "
           f"subset), mean ± 95% CI; an interval that excludes 0 is a significant difference.\n\n"
           + markdown_table(rows, others, budgets, signed=True, unit=" pt"))
    summary = summary + [{**row, "baseline": baseline} for row in rows]
  (directory / "results.md").write_text(md + "\n")
  (directory / "results.json").write_text(json.dumps(summary, indent=2))
  with open(directory / "results.csv", "w", newline="") as f:
    fields = list(dict.fromkeys(k for row in summary for k in row)) or ["strategy"]
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(summary)
  return md
