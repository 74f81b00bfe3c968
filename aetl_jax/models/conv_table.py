"""Which convolution formulation is fastest for a layer's shape: a measured table.

``conv_impl='auto'`` on CPU picks, layer by layer, the formulation that trained
that shape fastest when ``python -m aetl_jax.bench.conv_layers --table`` timed
every candidate (forward pass and both gradients, one compiled call each, the
train step's compiler options) on the machine named in the table. The table
ships as ``conv_table.json`` beside this module; a table measured on another
machine is used by pointing ``AETL_CONV_TABLE`` at its file (read when a model
is first traced). A layer is matched to the measured shape nearest to it (same
kernel size and stride; distance in log-space over the number of output
pixels in the batch, input and output channels); a layer far from every
measured shape (more than ``MAX_DISTANCE``, about a factor 2 in each
dimension) gets the caller's rule instead.
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path

TABLE_FILE = Path(__file__).with_name("conv_table.json")
ENV = "AETL_CONV_TABLE"
MAX_DISTANCE = 2.1


@functools.lru_cache(maxsize=None)
def load(path: str) -> tuple:
  """The table's entries (a tuple of dicts); () when the file is absent."""
  try:
    with open(path) as f:
      table = json.load(f)
  except FileNotFoundError:
    return ()
  except (OSError, ValueError) as err:
    raise ValueError(f"conv table {path}: not a readable JSON table ({err}); rewrite it "
                     f"with python -m aetl_jax.bench.conv_layers --table --write {path}") from err
  return tuple(table.get("layers", ()))


def table_path() -> str:
  return os.environ.get(ENV) or str(TABLE_FILE)


def _distance(entry: dict, pixels: int, cin: int, cout: int) -> float:
  return (abs(math.log(entry["pixels"] / pixels)) + abs(math.log(entry["cin"] / cin))
          + abs(math.log(entry["cout"] / cout)))


def measured_choice(candidates, *, backend: str, pixels: int, cin: int, cout: int,
                    kernel: int, stride: int, entries=None) -> str | None:
  """The fastest of ``candidates`` at the nearest measured shape, or None (no entry near).

  ``pixels``: output pixels of the batch (batch × height × width); ``kernel`` and
  ``stride`` must match the entry exactly.
  """
  entries = load(table_path()) if entries is None else entries
  near = [(_distance(e, pixels, cin, cout), e) for e in entries
          if e["backend"] == backend and e["kernel"] == kernel and e["stride"] == stride
          and all(c in e["ms"] for c in candidates)]
  if not near:
    return None
  distance, entry = min(near, key=lambda pair: pair[0])
  if distance > MAX_DISTANCE:
    return None
  return min(candidates, key=lambda c: entry["ms"][c])
