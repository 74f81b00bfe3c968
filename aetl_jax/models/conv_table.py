"""Which convolution formulation is fastest for a layer's shape: a measured table.

``conv_impl='auto'`` on CPU picks, layer by layer, the formulation that trained
that shape fastest when ``python -m aetl_jax.bench.conv_layers --table`` timed
every candidate (forward pass and the gradients a train step takes, one
compiled call each, the family's compiler options) on the machine named in the
table. The table ships as ``conv_table.json`` beside this module; a table
measured on another machine, or at other input sizes (``--resnet 96:32``), is
used by pointing ``AETL_CONV_TABLE`` at its file (read when a model is first
traced). A layer takes the entry of its kernel size, stride and output map size
whose batch and channels are nearest (log-space distance at most
``MAX_DISTANCE``: a factor 2 in two of them); a layer with no such entry gets
the caller's rule. The map size must match exactly because XLA:CPU's
convolution does not change smoothly with it: a 3×3 256→256 convolution took
9 ms on a 4×4 map at batch 32 and 46 ms on a 2×2 map at batch 64 (5 ms both as
patches @ kernel).
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path

TABLE_FILE = Path(__file__).with_name("conv_table.json")
ENV = "AETL_CONV_TABLE"
MAX_DISTANCE = 1.4


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


def _distance(entry: dict, batch: int, cin: int, cout: int) -> float:
  return (abs(math.log(entry["batch"] / batch)) + abs(math.log(entry["cin"] / cin))
          + abs(math.log(entry["cout"] / cout)))


def measured_choice(candidates, *, backend: str, batch: int, out: int, cin: int, cout: int,
                    kernel: int, stride: int, entries=None) -> str | None:
  """The fastest of ``candidates`` at the nearest measured shape, or None (none near).

  ``out``: the layer's output map size (height). ``kernel``, ``stride`` and ``out`` must
  match an entry exactly; ``batch`` and the channels be within ``MAX_DISTANCE`` of it.
  """
  entries = load(table_path()) if entries is None else entries
  near = [(_distance(e, batch, cin, cout), e) for e in entries
          if e["backend"] == backend and e["kernel"] == kernel and e["stride"] == stride
          and e["out"] == out and all(c in e["ms"] for c in candidates)]
  if not near:
    return None
  distance, entry = min(near, key=lambda pair: pair[0])
  if distance > MAX_DISTANCE:
    return None
  return min(candidates, key=lambda c: entry["ms"][c])
