"""IDX files (MNIST, Fashion-MNIST, KMNIST ...), gzipped or not, read strictly.

A truncated or corrupt file raises a ValueError naming the file and what was
wrong, instead of yielding a silently short array.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
  path = Path(path)
  try:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    raise ValueError(f"{path}: not a readable (gzipped) IDX file: {e}") from None
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
    raise ValueError(f"{path}: bad IDX magic number {raw[:4].hex() or '(empty file)'}")
  ndim = raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(f"{path}: truncated IDX header")
  shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
  dtype = np.dtype(_DTYPES[raw[2]])
  expected = int(np.prod(shape)) * dtype.itemsize
  if len(raw) - header != expected:
    raise ValueError(f"{path}: IDX header promises shape {shape} ({expected} bytes of data) but "
                     f"the file holds {len(raw) - header} bytes (truncated or corrupt)")
  return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def load_idx_split(directory, split: str):
  """(images uint8 (N, H, W, 1), labels int32) of the 'train' or 't10k'/'test' split."""
  directory = Path(directory)
  prefix = {"train": "train", "test": "t10k", "t10k": "t10k"}.get(split)
  if prefix is None:
    raise ValueError(f"unknown IDX split {split!r}; valid: 'train', 'test'")

  def find(kind):
    for name in (f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte",
                 f"{prefix}-{kind}.idx{3 if kind == 'images' else 1}-ubyte"):
      for suffix in (".gz", ""):
        if (directory / (name + suffix)).exists():
          return directory / (name + suffix)
    raise FileNotFoundError(f"no {prefix} {kind} IDX file in {directory} (looked for "
                            f"{prefix}-{kind}-idx*-ubyte[.gz])")

  images = read_idx(find("images"))
  labels = read_idx(find("labels")).astype(np.int32)
  if images.ndim != 3 or len(images) != len(labels):
    raise ValueError(f"{directory}: {split} images {images.shape} do not match labels {labels.shape}")
  return images[..., None], labels
