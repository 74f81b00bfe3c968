import json
import math

import numpy as np
import pytest
from scipy import stats

from aetl_jax.reporting.tables import markdown_table, summarise


def test_ci_is_student_t_interval_of_the_mean():
  rows = [{"budget": 5, "strategy": "a", "seed": s, "test_accuracy": v}
          for s, v in enumerate([0.8, 0.9, 0.85, 0.7])]
  (s,) = summarise(rows)
  v = np.array([0.8, 0.9, 0.85, 0.7])
  lo, hi = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
  assert s["mean"] == pytest.approx(v.mean())
  assert s["ci95"] == pytest.approx((hi - lo) / 2)
  assert s["n"] == 4


def test_single_seed_has_no_interval_and_table_says_n():
  (s,) = summarise([{"budget": 5, "strategy": "a", "seed": 0, "test_accuracy": 0.5}])
  assert math.isnan(s["ci95"])
  table = markdown_table([s], ["a", "b"], [5])
  assert "50.0% (n=1)" in table and "| b | — |" in table


def test_paired_differences_pair_by_budget_and_seed():
  from aetl_jax.reporting.tables import paired_differences
  acc = {("scratch", 0): 0.5, ("scratch", 1): 0.7, ("ft", 0): 0.6, ("ft", 1): 0.75}
  rows = [{"budget": 10, "strategy": s, "seed": k, "test_accuracy": v} for (s, k), v in acc.items()]
  (d,) = paired_differences(rows, baseline="scratch")
  assert d["strategy"] == "ft" and d["n"] == 2
  assert d["mean"] == pytest.approx(0.075)
  assert d["std"] == pytest.approx(np.std([0.1, 0.05], ddof=1))


def test_markdown_table_is_exactly_the_documented_layout():
  rows = [{"budget": 5, "strategy": "a", "seed": k, "test_accuracy": v} for k, v in enumerate([0.5, 0.7])]
  summary = summarise(rows)
  half = stats.t.ppf(0.975, 1) * np.std([0.5, 0.7], ddof=1) / math.sqrt(2)  # by hand
  table = markdown_table(summary, ["a", "b"], [5, 10])
  assert table.splitlines() == [
      "| strategy | 5 labels/class | 10 labels/class |",
      "|---|---|---|",
      f"| a | 60.0 ± {100 * half:.1f}% (n=2) | — |",
      "| b | — | — |"]
  signed = markdown_table(summary, ["a"], [5], signed=True, unit=" pt")
  assert signed.splitlines()[2] == f"| a | +60.0 ± {100 * half:.1f} pt (n=2) |"


def test_write_tables_writes_caption_both_tables_and_the_same_rows_to_csv_and_json(tmp_path):
  import csv
  import json
  from aetl_jax.reporting.tables import paired_differences, write_tables
  vals = {("scratch", 0): 0.5, ("scratch", 1): 0.6, ("ft", 0): 0.7, ("ft", 1): 0.65}
  rows = [{"budget": 5, "strategy": s, "seed": k, "test_accuracy": v} for (s, k), v in vals.items()]
  summary, paired = summarise(rows), paired_differences(rows, baseline="scratch")
  out = tmp_path / "new" / "out"  # folders that do not exist yet
  md = write_tables(summary, out, strategies=["scratch", "ft"], budgets=[5],
                    caption="Caption line.\n", paired={"scratch": paired})
  assert md.startswith("Caption line.\n\n| strategy | 5 labels/class |")
  assert "\n\nDifference to `scratch` in accuracy points, paired by seed" in md
  # Paired per seed: +20 and +5 points; Student-t half-width with 1 degree of freedom.
  half = stats.t.ppf(0.975, 1) * np.std([20.0, 5.0], ddof=1) / np.sqrt(2)
  assert md.splitlines()[-1] == f"| ft | +12.5 ± {half:.1f} pt (n=2) |"
  assert (out / "results.md").read_text() == md + "\n"
  assert (out / "results.json").read_text().startswith("[\n  {\n    ")  # indented, readable
  data = json.loads((out / "results.json").read_text())
  with open(out / "results.csv") as f:
    table = list(csv.DictReader(f))
  assert len(data) == len(table) == 3
  assert [r["strategy"] for r in data] == [r["strategy"] for r in table]
  assert [r.get("baseline") for r in data] == [None, None, "scratch"]
  for j, c in zip(data, table):
    assert float(c["mean"]) == pytest.approx(j["mean"]) and int(c["n"]) == j["n"]


def test_a_baseline_without_paired_rows_adds_no_table(tmp_path):
  from aetl_jax.reporting.tables import paired_differences, write_tables
  rows = [{"budget": 5, "strategy": "scratch", "seed": k, "test_accuracy": 0.5} for k in (0, 1)]
  paired = paired_differences(rows, baseline="scratch")
  assert paired == []
  md = write_tables(summarise(rows), tmp_path, strategies=["scratch"], budgets=[5],
                    paired={"scratch": paired})
  assert "Difference to" not in md
  assert len(json.loads((tmp_path / "results.json").read_text())) == 1


def test_write_tables_of_no_rows_still_writes_a_header(tmp_path):
  from aetl_jax.reporting.tables import write_tables
  md = write_tables([], tmp_path, strategies=["scratch"], budgets=[5])
  assert md.splitlines() == ["| strategy | 5 labels/class |", "|---|---|", "| scratch | — |"]
  assert (tmp_path / "results.csv").read_text().splitlines() == ["strategy"]
  assert (tmp_path / "results.json").read_text() == "[]"


def test_summary_rows_hold_every_statistic_and_one_seed_warns_nothing():
  import warnings
  rows = [{"budget": 5, "strategy": "ft", "seed": k, "test_accuracy": v}
          for k, v in enumerate([0.6, 0.9, 0.75])]
  (row,) = summarise(rows)
  assert row == pytest.approx({"budget": 5, "strategy": "ft", "metric": "test_accuracy",
                               "mean": 0.75, "std": 0.15, "n": 3, "min": 0.6, "max": 0.9,
                               "ci95": stats.t.ppf(0.975, 2) * 0.15 / math.sqrt(3)})
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # no "degrees of freedom <= 0" from numpy or scipy
    (one,) = summarise(rows[:1])
  assert one["n"] == 1 and one["mean"] == 0.6 and math.isnan(one["std"]) and math.isnan(one["ci95"])


def test_compare_figure_draws_one_panel_per_budget_with_each_runs_means_and_cis(tmp_path, monkeypatch):
  """What ``aetl compare`` draws, read back from the figure: a panel per budget in numeric
  order, one dot per (run, strategy) at its mean (%) with its 95% CI, labels in table order,
  a title naming the keys that differ."""
  from aetl_jax.reporting import compare, figures
  drawn = {}
  monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.update(fig=fig) or path)
  rows = [{"workdir": f"runs/{w}", "strategy": s, "budget": b, "mean": m, "ci95": c, "n": 5,
           "transfer.learning_rate": lr}
          for w, lr in (("a", 0.01), ("b", 0.1))
          for s, b, m, c in (("scratch", 25, 0.60, 0.02), ("finetune", 25, 0.70, 0.03),
                             ("scratch", 5, 0.40, 0.05), ("finetune", 5, 0.55, float("nan")))]
  rows[4]["mean"] = 0.65  # run b's scratch at 25 labels
  compare.compare_figure(tmp_path / "c.png", rows)
  fig = drawn["fig"]
  assert fig._suptitle.get_text() == "2 runs compared by transfer.learning_rate"
  axes = [ax for ax in fig.axes if ax.get_title()]
  assert [ax.get_title() for ax in axes] == ["5 labels per class", "25 labels per class"]
  labels = ["a: scratch", "a: finetune", "b: scratch", "b: finetune"]
  for ax, b in zip(axes, (5, 25)):
    assert [t.get_text() for t in ax.get_yticklabels()] == labels[::-1]  # first row on top
    want = {f"{r['workdir'][5:]}: {r['strategy']}": r for r in rows if r["budget"] == b}
    for y, label in enumerate(labels[::-1]):
      r = want[label]
      line, _, (bars,) = ax.containers[y]
      assert line.get_xdata()[0] == pytest.approx(100 * r["mean"])
      half = 0.0 if math.isnan(r["ci95"]) else 100 * r["ci95"]
      (x0, _), (x1, _) = bars.get_segments()[0]
      assert (x0, x1) == (pytest.approx(100 * r["mean"] - half), pytest.approx(100 * r["mean"] + half))
