import gzip
from pathlib import Path

import numpy as np
import pytest

from aetl_jax.data.idx import load_idx_split, read_idx

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _write(path, array, magic_type=0x08):
  header = bytes([0, 0, magic_type, array.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  path.write_bytes(gzip.compress(header + array.tobytes()))


def test_round_trip_and_truncation(tmp_path):
  a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  _write(tmp_path / "x.gz", a)
  np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), a)
  raw = gzip.decompress((tmp_path / "x.gz").read_bytes())
  (tmp_path / "short").write_bytes(raw[:-5])
  with pytest.raises(ValueError, match=r"short: IDX header promises shape \(2, 3, 4\)"):
    read_idx(tmp_path / "short")
  (tmp_path / "junk.gz").write_bytes(b"not gzip at all")
  with pytest.raises(ValueError, match="junk.gz"):
    read_idx(tmp_path / "junk.gz")


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="../shared/datasets/mnist not present")
def test_real_mnist_counts():
  images, labels = load_idx_split(SHARED / "mnist", "train")
  assert images.shape == (60000, 28, 28, 1) and images.dtype == np.uint8
  assert np.bincount(labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
  assert abs(images.mean() / 255 - 0.1307) < 1e-3
