"""Metrics as JSON lines, safe to append to across kills and resumes."""

from __future__ import annotations

import json
import os
from pathlib import Path


def _writer() -> bool:
  """Only process 0 writes logs in a multi-host run (every process reads them)."""
  import jax
  return jax.process_index() == 0


class JsonlLog:
  """Append-only JSON-lines file; a torn last line (killed mid-write) is dropped."""

  def __init__(self, path):
    self.path = Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)

  def read(self) -> list[dict]:
    if not self.path.exists():
      return []
    rows = []
    for line in self.path.read_text().splitlines():
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue
    return rows

  def append(self, row: dict) -> None:
    self.extend([row])

  def extend(self, rows: list[dict]) -> None:
    """Appends ``rows`` with one ``write`` call: a kill lands before or after all of them.

    Rows that belong together (the seeds of one vmapped sweep group) must not
    be split by a kill, or a resumed run would recompute the missing ones
    alone and, with another program, get other floats than an uninterrupted run.
    """
    if not _writer() or not rows:
      return
    data = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode()
    fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
      view = memoryview(data)
      while view:
        view = view[os.write(fd, view):]
      os.fsync(fd)
    finally:
      os.close(fd)

  def repair(self) -> None:
    """Drops a torn line left by a kill, so later appends start on a clean line."""
    if self.path.exists():
      self.keep(lambda r: True)

  def keep(self, predicate) -> None:
    """Rewrites the file atomically with the rows that satisfy ``predicate``.

    Used on resume to drop rows logged after the checkpoint being resumed.
    """
    if not _writer():
      return
    rows = [r for r in self.read() if predicate(r)]
    tmp = self.path.with_suffix(self.path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    os.replace(tmp, self.path)
