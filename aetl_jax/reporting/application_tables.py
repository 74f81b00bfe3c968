"""Markdown tables of the application tasks: one-class AUROC per normal class, clustering scores.

Each takes the task's rows (one dict per cell of ``results/cells.jsonl``) and returns the
table; means and 95% CIs come from :func:`aetl_jax.reporting.tables.summarise`.
"""

from __future__ import annotations

import numpy as np

from aetl_jax.reporting.tables import summarise


def class_means(rows: list[dict], classes, metric: str = "auroc") -> list[dict]:
  """Per (method, seed): ``metric`` averaged over the normal classes (complete seeds only)."""
  groups = {}
  for r in rows:
    groups.setdefault((r["method"], r["seed"]), {})[r["class"]] = r[metric]
  return [{"method": m, "seed": s, metric: float(np.mean([v[c] for c in classes]))}
          for (m, s), v in groups.items() if all(c in v for c in classes)]


def auroc_table(rows: list[dict], classes, methods, reference: dict | None = None) -> str:
  """Rows = methods, columns = normal classes (mean AUROC over seeds) and the mean over
  classes (± 95% CI over seeds, n seeds)."""
  per_class = {(s["method"], s["class"]): s for s in summarise(rows, metric="auroc",
                                                               keys=("method", "class"))}
  means = {s["method"]: s for s in summarise(class_means(rows, classes), metric="auroc",
                                             keys=("method",))}
  lines = ["| method | " + " | ".join(str(c) for c in classes) + " | mean |",
           "|---|" + "---|" * (len(classes) + 1)]
  for m in methods:
    cells = [f"{100 * per_class[(m, c)]['mean']:.1f}" if (m, c) in per_class else "—" for c in classes]
    s = means.get(m)
    mean = "—" if s is None else (f"{100 * s['mean']:.1f}" + ("" if np.isnan(s["ci95"]) else
                                                               f" ± {100 * s['ci95']:.1f}")
                                  + f" (n={s['n']})")
    lines.append(f"| {m} | " + " | ".join(cells) + f" | {mean} |")
  for name, values in (reference or {}).items():
    lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in values)
                 + f" | {np.mean(values):.1f} (reported) |")
  return "\n".join(lines)


def cluster_label(r) -> str:
  return f"{r['features']} → {'' if r['embedding'] == 'none' else r['embedding'] + ' → '}{r['method']}"


def clustering_table(rows: list[dict]) -> tuple[str, list[dict]]:
  keys = ("features", "embedding", "method")
  stats = {}
  for metric in ("accuracy", "nmi", "ari"):
    for s in summarise(rows, metric=metric, keys=keys):
      stats.setdefault(tuple(s[k] for k in keys), {})[metric] = s
  lines = ["| features → clustering | accuracy | NMI | ARI |", "|---|---|---|---|"]
  summary = []
  for key, by_metric in stats.items():
    cells = []
    for metric in ("accuracy", "nmi", "ari"):
      s = by_metric[metric]
      summary.append(s)
      cells.append(f"{100 * s['mean']:.1f}" + ("" if np.isnan(s["ci95"]) else f" ± {100 * s['ci95']:.1f}"))
    lines.append(f"| {cluster_label(dict(zip(keys, key)))} | " + " | ".join(cells) + " |")
  return "\n".join(lines), summary
