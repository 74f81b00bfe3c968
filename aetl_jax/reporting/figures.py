"""Figures: reconstructions of test images and accuracy per strategy."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _interval(s) -> tuple[float, float, float]:
  """(mean, lower, upper) in %, the 95% CI clipped to what accuracy can be."""
  mean = 100 * s["mean"]
  half = 0.0 if math.isnan(s["ci95"]) else 100 * s["ci95"]
  return mean, max(mean - half, -100.0 if s.get("metric") == "delta" else 0.0), min(mean + half, 100.0)


def _dot_panel(ax, rows, order, *, zero_line: bool = False) -> None:
  """One horizontal dot per strategy (``order``, top to bottom) with its 95% CI, the axis
  zoomed to the intervals; with ``zero_line``, differences whose CI excludes 0 are marked."""
  index = {r["strategy"]: r for r in rows}
  shown = [s for s in order if s in index]
  lows, highs = [], []
  for y, strategy in enumerate(reversed(shown)):
    mean, lo, hi = _interval(index[strategy])
    lows.append(lo)
    highs.append(hi)
    significant = zero_line and (lo > 0 or hi < 0)
    color = ("tab:green" if mean > 0 else "tab:red") if significant else "tab:blue"
    ax.errorbar([mean], [y], xerr=[[mean - lo], [hi - mean]], fmt="o", color=color, capsize=3)
    ax.annotate(f"{mean:+.1f}" if zero_line else f"{mean:.1f}", (mean, y), xytext=(0, 6),
                textcoords="offset points", ha="center", fontsize=7)
  ax.set_yticks(range(len(shown)))
  ax.set_yticklabels(list(reversed(shown)), fontsize=8)
  ax.set_ylim(-0.7, len(shown) - 0.3)
  if lows:
    lo, hi = min(lows + ([0.0] if zero_line else [])), max(highs + ([0.0] if zero_line else []))
    pad = max(0.5, 0.08 * (hi - lo))
    ax.set_xlim(lo - pad, hi + pad)
  if zero_line:
    ax.axvline(0, color="gray", lw=1)
  ax.grid(axis="x", alpha=0.3)


def summary_figure(path, *, originals, reconstructions, summary, strategies, budgets,
                   title: str = "", paired: dict | None = None) -> Path:
  """Top: originals over reconstructions (none for text: ``originals=None``). Then one panel
  per budget: each strategy's test accuracy with its 95% CI, on an axis zoomed to them; and
  below each, the paired differences to the baseline (``paired``: {baseline: rows}; the
  first with rows), differences whose CI excludes 0 in colour."""
  k = 0 if originals is None else min(10, len(originals))
  baseline, diffs = next(((b, rows) for b, rows in (paired or {}).items() if rows), (None, []))
  panels = [b for b in budgets if any(s["budget"] == b for s in summary)] or list(budgets)
  rows = 2 + (1 if diffs else 0)
  fig = plt.figure(figsize=(max(8, 3.6 * len(panels)), 1.6 + 0.32 * len(strategies) * (rows - 1)
                            + (2.2 if k else 0)), constrained_layout=True)
  outer = fig.add_gridspec(2 if k else 1, 1, height_ratios=[1, 3.2] if k else [1])
  if k:
    pictures = outer[0].subgridspec(2, k)
    for i in range(k):
      for row, imgs, label in ((0, originals, "image"), (1, reconstructions, "reconstruction")):
        if imgs is None:  # a classifier pretrained on labels reconstructs nothing
          continue
        ax = fig.add_subplot(pictures[row, i])
        img = np.asarray(imgs[i])
        ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        if i == 0:  # across, left of the row: upright labels of two short rows overlap
          ax.set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
  charts = outer[-1].subgridspec(rows - 1, len(panels))
  for j, b in enumerate(panels):
    ax = fig.add_subplot(charts[0, j])
    _dot_panel(ax, [s for s in summary if s["budget"] == b], strategies)
    ax.set_title(f"{b} labels per class", fontsize=9)
    ax.set_xlabel("test accuracy (%), mean ± 95% CI", fontsize=8)
    if diffs:
      ax = fig.add_subplot(charts[1, j])
      _dot_panel(ax, [{**d, "metric": "delta"} for d in diffs if d["budget"] == b],
                 [s for s in strategies if s != baseline], zero_line=True)
      ax.set_xlabel(f"difference to {baseline} (points), paired by seed", fontsize=8)
  if title:
    fig.suptitle(title, fontsize=10)
  return save_figure(fig, path)


def save_figure(fig, path) -> Path:
  """Writes ``fig`` to ``path`` (folders made) and closes it."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
