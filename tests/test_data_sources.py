"""Named datasets: TFDS catalogue (mock), real Fashion-MNIST builder offline, local routes."""

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from aetl_jax.data import preprocessing
from aetl_jax.data.sources import load_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/datasets is not present")


def test_unknown_name_lists_close_matches():
  with pytest.raises(ValueError, match="close matches: fashion_mnist"):
    load_dataset("fashion_mnst")
  with pytest.raises(ValueError, match="idx:PATH, npz:PATH, folder:PATH"):
    load_dataset("zip:/tmp/x")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "svhn_cropped"])
def test_catalogue_route_with_mock_data(name, tmp_path):
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=12, data_dir=str(tmp_path)):
    d = load_dataset(name, splits=("train", "test"))
  x, y = d.splits["train"]
  assert x.dtype == np.uint8 and x.ndim == 4 and len(x) == len(y) == 12
  assert d.num_classes == 10 and d.max_value == 255


@pytest.mark.slow
@needs_shared
def test_fashion_mnist_through_the_real_builder_offline(tmp_path):
  d = load_dataset("fashion_mnist", splits=("test",), data_dir=tmp_path,
                   manual_dir=SHARED / "fashion_mnist")
  x, y = d.splits["test"]
  assert x.shape == (10000, 28, 28, 1)
  assert np.bincount(y).tolist() == [1000] * 10
  assert "prepared from raw files" in d.route


@pytest.mark.slow
@needs_shared
def test_mnist_through_the_local_idx_route(tmp_path):
  d = load_dataset(f"idx:{SHARED / 'mnist'}", splits=("train", "test"), data_dir=tmp_path)
  assert d.splits["train"][0].shape == (60000, 28, 28, 1)
  assert np.bincount(d.splits["test"][1]).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028,
                                                        974, 1009]
  assert d.splits["train"][1][:5].tolist() == [5, 0, 4, 1, 9]  # file order kept
  assert "stored as TFDS dataset" in d.route


def _idx(path, array):
  header = bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
  path.write_bytes(gzip.compress(header + array.tobytes()))


def test_truncated_raw_file_is_named_and_nothing_is_left(tmp_path):
  raw = tmp_path / "raw"
  raw.mkdir()
  rng = np.random.default_rng(0)
  for prefix, n in (("train", 20), ("t10k", 10)):
    _idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 4, 4), dtype=np.uint8))
    _idx(raw / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 3).astype(np.uint8))
  data_dir = tmp_path / "tfds"
  good = load_dataset(f"idx:{raw}", data_dir=data_dir)
  assert good.splits["train"][0].shape == (20, 4, 4, 1)
  bad = raw / "t10k-images-idx3-ubyte.gz"
  content = gzip.decompress(bad.read_bytes())
  bad.write_bytes(gzip.compress(content[:-7]))
  before = sorted(p.relative_to(data_dir) for p in data_dir.rglob("*"))
  with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz: IDX header promises"):
    load_dataset(f"idx:{raw}", data_dir=data_dir)
  assert sorted(p.relative_to(data_dir) for p in data_dir.rglob("*")) == before


def test_npz_and_folder_routes(tmp_path):
  from PIL import Image
  rng = np.random.default_rng(0)
  np.savez(tmp_path / "d.npz", images=rng.random((9, 6, 6)).astype(np.float32),
           labels=np.arange(9) % 3)
  d = load_dataset(f"npz:{tmp_path / 'd.npz'}", data_dir=tmp_path / "tfds")
  assert d.splits["train"][0].shape == (9, 6, 6, 1) and d.num_classes == 3
  np.savez(tmp_path / "bad.npz", pixels=np.zeros(3))
  with pytest.raises(ValueError, match="needs 'images'"):
    load_dataset(f"npz:{tmp_path / 'bad.npz'}", data_dir=tmp_path / "tfds")
  for cls in ("cat", "dog"):
    (tmp_path / "imgs" / cls).mkdir(parents=True)
    for i in range(3):
      Image.fromarray(rng.integers(0, 255, (5, 5, 3), dtype=np.uint8)).save(
          tmp_path / "imgs" / cls / f"{i}.png")
  d = load_dataset(f"folder:{tmp_path / 'imgs'}", data_dir=tmp_path / "tfds")
  assert d.splits["train"][0].shape == (6, 5, 5, 3)
  assert np.bincount(d.splits["train"][1]).tolist() == [3, 3] and "cat, dog" in d.route


def test_preprocessing_shapes():
  grey28 = np.random.default_rng(0).random((2, 28, 28, 1)).astype(np.float32)
  rgb32 = np.random.default_rng(1).random((2, 32, 32, 3)).astype(np.float32)
  assert preprocessing.to_shape(grey28, (32, 32, 3), "pad").shape == (2, 32, 32, 3)
  assert preprocessing.to_shape(rgb32, (28, 28, 1), "resize").shape == (2, 28, 28, 1)
  assert preprocessing.to_shape(grey28, (8, 8, 1), "resize").shape == (2, 8, 8, 1)
  padded = preprocessing.to_shape(grey28, (32, 32, 1), "pad")
  np.testing.assert_array_equal(padded[:, 2:30, 2:30], grey28)
  with pytest.raises(ValueError, match="use resize mode 'resize'"):
    preprocessing.to_shape(rgb32, (28, 28, 3), "pad")
  with pytest.raises(ValueError, match=r"different shapes.*set data.common_shape"):
    preprocessing.common_shape({"a": (28, 28, 1), "b": (32, 32, 3)}, None)


def test_missing_local_path_is_named(tmp_path):
  with pytest.raises(ValueError, match=r"dataset 'idx:.*nothing': .*nothing does not exist"):
    load_dataset(f"idx:{tmp_path / 'nothing'}")


def _npz(path, images, labels):
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez(path, images=images, labels=labels)
  return path


def test_local_cache_is_keyed_on_content_not_name_size_or_time(tmp_path):
  """Two different data.npz files of equal size and mtime never share a cache entry."""
  rng = np.random.default_rng(0)
  a = _npz(tmp_path / "a" / "data.npz", rng.integers(0, 255, (20, 4, 4), np.uint8),
           np.arange(20) % 2)
  b = _npz(tmp_path / "b" / "data.npz", rng.integers(0, 255, (20, 4, 4), np.uint8),
           np.arange(20) % 2)
  assert a.stat().st_size == b.stat().st_size
  os.utime(b, (a.stat().st_atime, a.stat().st_mtime))
  da = load_dataset(f"npz:{a}", data_dir=tmp_path / "tfds")
  db = load_dataset(f"npz:{b}", data_dir=tmp_path / "tfds")
  assert not np.array_equal(da.splits["train"][0], db.splits["train"][0])
  with np.load(b) as z:
    np.testing.assert_array_equal(db.splits["train"][0][..., 0], z["images"])


@pytest.mark.parametrize("labels, message", [
    (np.linspace(0.7, 9.7, 20), r"non-integer values such as 0\.7"),
    (np.full(20, -1), r"-1 \(negative\)"),
])
def test_npz_labels_must_be_class_ids(tmp_path, labels, message):
  path = _npz(tmp_path / "bad.npz", np.zeros((20, 4, 4), np.uint8), labels)
  with pytest.raises(ValueError, match=rf"bad\.npz: labels must be integers 0\.\.C-1.*{message}"):
    load_dataset(f"npz:{path}", data_dir=tmp_path / "tfds")


def test_no_progress_silences_tfds_own_bars(tmp_path, capfd):
  """Preparing local data through TFDS prints no progress bar when asked not to."""
  path = _npz(tmp_path / "quiet.npz", np.zeros((30, 4, 4), np.uint8), np.arange(30) % 3)
  load_dataset(f"npz:{path}", data_dir=tmp_path / "tfds", progress=False)
  err = capfd.readouterr().err
  assert "it/s" not in err and "%|" not in err, err[-500:]
