"""A fingerprint of the data a run trains and tests on: its content, not its file names.

A workdir records the fingerprint of its data (``DIR/data_fingerprint.json``); a rerun on
data whose content changed (a dataset file replaced under the same name) is refused instead
of resuming with results of the old data beside a description of the new.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np


def _update(h, value) -> None:
  if isinstance(value, np.ndarray) or (hasattr(value, "shape") and hasattr(value, "dtype")):
    a = np.ascontiguousarray(np.asarray(value))
    h.update(f"array{a.shape}{a.dtype.str}".encode())
    h.update(a.view(np.uint8).reshape(-1) if a.dtype != object else repr(a.tolist()).encode())
  elif dataclasses.is_dataclass(value) and not isinstance(value, type):
    for f in dataclasses.fields(value):
      h.update(f"field {f.name}".encode())
      _update(h, getattr(value, f.name))
  elif isinstance(value, dict):
    for k in sorted(value, key=str):
      h.update(f"key {k}".encode())
      _update(h, value[k])
  elif isinstance(value, (list, tuple)):
    h.update(f"seq {len(value)}".encode())
    for v in value:
      _update(h, v)
  elif value is None or isinstance(value, (bool, int, float, str)):
    h.update(repr(value).encode())
  # anything else (a tokenizer, a stream function) is derived from what is hashed here


def data_fingerprint(data) -> str:
  """A short hex digest of every array, number and string in ``data`` (a task's loaded data:
  dataclasses, dicts and sequences of them), in order; of ``data.content()`` when it defines
  one (what the data is made of, without what is derived from it, e.g. token ids)."""
  h = hashlib.blake2b(digest_size=12)
  _update(h, data.content() if hasattr(data, "content") else data)
  return h.hexdigest()
