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
