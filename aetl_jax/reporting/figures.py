"""Figures: reconstructions of test images and accuracy per strategy."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def summary_figure(path, *, originals, reconstructions, summary, strategies, budgets,
                   title: str = "") -> Path:
  """Top: originals over reconstructions (none for text: ``originals=None``). Bottom:
  accuracy vs budget, 95% CI bars."""
  k = 0 if originals is None else min(10, len(originals))
  fig = plt.figure(figsize=(max(8, 1.0 * k), 7.5 if k else 4.5), constrained_layout=True)
  grid = fig.add_gridspec(3, max(k, 1), height_ratios=[1, 1, 3.2] if k else [0.001, 0.001, 1])
  for i in range(k):
    for row, imgs, label in ((0, originals, "test image"), (1, reconstructions, "reconstruction")):
      if imgs is None:  # a classifier pretrained on labels reconstructs nothing
        continue
      ax = fig.add_subplot(grid[row, i])
      img = np.asarray(imgs[i])
      ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_ylabel(label, fontsize=8)
  ax = fig.add_subplot(grid[2, :])
  index = {(s["strategy"], s["budget"]): s for s in summary}
  for strategy in strategies:
    xs, ys, es = [], [], []
    for b in budgets:
      s = index.get((strategy, b))
      if s is not None:
        xs.append(b)
        ys.append(100 * s["mean"])
        es.append(0.0 if math.isnan(s["ci95"]) else 100 * s["ci95"])
    # A t-interval at small n can run past 0 or 100%; accuracy cannot.
    lower = [min(e, y) for e, y in zip(es, ys)]
    upper = [min(e, 100.0 - y) for e, y in zip(es, ys)]
    ax.errorbar(xs, ys, yerr=[lower, upper], marker="o", capsize=3, label=strategy)
  if 0 in budgets:  # budget 0 (no target labels) on a log-like axis
    ax.set_xscale("symlog", linthresh=1)
  else:
    ax.set_xscale("log")
  ax.set_xticks(list(budgets))
  ax.set_xticklabels([str(b) for b in budgets])
  ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.set_xlabel("labels per class (target task)")
  ax.set_ylabel("test accuracy (%), mean ± 95% CI")
  ax.set_ylim(0, 100)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, ncol=2)
  if title:
    fig.suptitle(title)
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
