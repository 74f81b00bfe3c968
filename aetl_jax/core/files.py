"""Atomic file writes: a reader (or a rerun after a kill) sees the old file or the new one."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write_text(path, text: str) -> None:
  """Writes ``text`` to ``path`` through a temporary file named per process (several
  processes of a multi-host run may write the same file) and an atomic rename."""
  path = Path(path)
  tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
  tmp.write_text(text)
  os.replace(tmp, path)
