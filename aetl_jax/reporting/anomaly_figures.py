"""Figures of anomaly detection and clustering: ROC curves, score histograms, the
strangest test images, 2-D maps of codes and the cluster-vs-class matrix."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from aetl_jax.reporting.figures import save_figure  # noqa: E402


def _grid(n: int, cols: int = 5):
  rows = math.ceil(n / cols)
  fig, axes = plt.subplots(rows, min(cols, n), figsize=(3.0 * min(cols, n), 2.6 * rows),
                           squeeze=False, constrained_layout=True)
  for ax in axes.flat[n:]:
    ax.axis("off")
  return fig, axes.flat


def roc_curves(path, scores: dict, labels, *, title: str = "") -> Path:
  """One ROC curve per normal class (that class normal, every other anomalous)."""
  fig, ax = plt.subplots(figsize=(5.5, 5), constrained_layout=True)
  for c, s in scores.items():
    anomalous = np.asarray(labels) != c
    fpr, tpr, _ = roc_curve(anomalous, s)
    ax.plot(fpr, tpr, lw=1.2, label=f"{c}: {100 * roc_auc_score(anomalous, s):.1f}")
  ax.plot([0, 1], [0, 1], "k:", lw=0.8)
  ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
  ax.legend(title="normal class: AUROC", fontsize=7)
  return save_figure(fig, path)


def score_histograms(path, scores: dict, labels, *, title: str = "") -> Path:
  """Per normal class: scores of the normal test images against the anomalous ones."""
  fig, axes = _grid(len(scores))
  for ax, (c, s) in zip(axes, scores.items()):
    normal = np.asarray(labels) == c
    bins = np.histogram_bin_edges(s, bins=40)
    ax.hist(s[~normal], bins=bins, alpha=0.6, density=True, label="anomalous")
    ax.hist(s[normal], bins=bins, alpha=0.6, density=True, label="normal")
    ax.set_title(f"normal class {c}", fontsize=9)
    ax.tick_params(labelsize=7)
  next(iter(fig.axes)).legend(fontsize=7)
  fig.suptitle(f"{title}: normal vs anomalous")
  return save_figure(fig, path)


def strangest(path, scores: dict, images, labels, *, k: int = 8) -> Path:
  """Per normal class (rows), the ``k`` test images its model scores highest, with their
  true class."""
  fig, axes = plt.subplots(len(scores), k, figsize=(1.1 * k, 1.25 * len(scores)), squeeze=False,
                           constrained_layout=True)
  for row, (c, s) in zip(axes, scores.items()):
    for ax, i in zip(row, np.argsort(-np.asarray(s))[:k]):
      img = np.asarray(images[i])
      ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
      ax.set_title(str(labels[i]), fontsize=7)
      ax.set_xticks([])
      ax.set_yticks([])
    row[0].set_ylabel(f"model {c}", fontsize=8)
  fig.suptitle("highest anomaly scores (title: true class)", fontsize=9)
  return save_figure(fig, path)


def code_map(path, points, labels, clusters, *, title: str = "") -> Path:
  """A 2-D projection of codes, coloured by class (left) and by cluster (right)."""
  fig, axes = plt.subplots(1, 2, figsize=(11, 5), constrained_layout=True)
  for ax, colours, name in ((axes[0], labels, "class"), (axes[1], clusters, "cluster")):
    ax.scatter(points[:, 0], points[:, 1], c=colours, cmap="tab10", s=1.5, alpha=0.6,
               rasterized=True)
    ax.set_title(f"coloured by {name}")
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle(title)
  return save_figure(fig, path)


def confusion(path, table, *, title: str = "") -> Path:
  """Cluster (rows, matched order) vs class (columns) counts."""
  fig, ax = plt.subplots(figsize=(6, 5.2), constrained_layout=True)
  im = ax.imshow(table, cmap="Blues")
  for (i, j), v in np.ndenumerate(table):
    ax.text(j, i, str(v), ha="center", va="center", fontsize=6,
            color="white" if v > table.max() / 2 else "black")
  ax.set(xlabel="class", ylabel="cluster (matched order)", title=title)
  fig.colorbar(im, ax=ax, shrink=0.8)
  return save_figure(fig, path)
