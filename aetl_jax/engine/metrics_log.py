"""Metrics as JSON lines, safe to append to across kills and resumes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from aetl_jax.core.files import atomic_write_text
from aetl_jax.engine.launchers import is_main_process  # only process 0 writes logs



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
    if not is_main_process() or not rows:
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
    if not is_main_process():
      return
    rows = [r for r in self.read() if predicate(r)]
    atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


class TensorBoard:
  """TensorBoard event files, written with tensorboardX (no TensorFlow import on the
  training path), one folder per run part; only process 0 writes.
  View with ``pip install tensorboard && tensorboard --logdir WORKDIR/tensorboard``."""

  # Rows within this many seconds of the last flush wait for the next row (or close()): many
  # short epochs cost no flush each; an epoch longer than this is flushed as it ends.
  FLUSH_EVERY_S = 2.0

  def __init__(self, directory):
    self.directory = Path(directory)
    self._writer = None
    self._flushed = 0.0

  def writer(self):
    if self._writer is None:
      from tensorboardX import SummaryWriter  # lazily: only when something is written
      self._writer = SummaryWriter(str(self.directory))
    return self._writer

  def scalars(self, row: dict, step: int) -> None:
    """Every finite number of ``row`` under its key (``train_loss``, ``eval_psnr`` ...)."""
    if not is_main_process():
      return
    for key, value in row.items():
      if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
        self.writer().add_scalar(key, float(value), step)
    if time.monotonic() - self._flushed >= self.FLUSH_EVERY_S:
      self.writer().flush()
      self._flushed = time.monotonic()

  def images(self, name: str, images, step: int) -> None:
    """A batch of images in [0, 1], (N, H, W, C)."""
    if not is_main_process():
      return
    self.writer().add_images(name, np.clip(np.asarray(images), 0, 1), step, dataformats="NHWC")
    self.writer().flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


class Logs:
  """The JSON-lines log of a run part and, optionally, its TensorBoard events."""

  def __init__(self, jsonl: JsonlLog, tensorboard: TensorBoard | None = None, on_append=None):
    self.jsonl, self.tensorboard, self.on_append = jsonl, tensorboard, on_append

  def repair(self) -> None:
    self.jsonl.repair()

  def keep(self, predicate) -> None:
    self.jsonl.keep(predicate)

  def read(self) -> list[dict]:
    return self.jsonl.read()

  def append(self, row: dict) -> None:
    self.jsonl.append(row)
    if self.tensorboard is not None:
      self.tensorboard.scalars(row, int(row.get("epoch", 0)))
    if self.on_append is not None:
      self.on_append(row)
