"""The JSON-lines logs that make sweeps and pretraining resumable."""

from aetl_jax.engine.metrics_log import JsonlLog


def test_extend_appends_rows_in_order_after_existing_ones(tmp_path):
  log = JsonlLog(tmp_path / "sub" / "cells.jsonl")
  log.append({"seed": 0})
  log.extend([{"seed": 1}, {"seed": 2, "loss": 0.5}])
  log.extend([])
  assert log.read() == [{"seed": 0}, {"seed": 1}, {"seed": 2, "loss": 0.5}]


def test_a_torn_last_line_is_dropped_and_appends_continue_cleanly(tmp_path):
  log = JsonlLog(tmp_path / "cells.jsonl")
  log.extend([{"seed": 0}, {"seed": 1}])
  with open(log.path, "a") as f:
    f.write('{"seed": 2, "lo')  # killed mid-write
  assert log.read() == [{"seed": 0}, {"seed": 1}]
  log.repair()
  log.append({"seed": 2})
  assert log.read() == [{"seed": 0}, {"seed": 1}, {"seed": 2}]
