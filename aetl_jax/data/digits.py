"""scikit-learn's bundled 8×8 handwritten digits: the offline default dataset."""

from __future__ import annotations

from aetl_jax.data.preprocessing import to_unit
from aetl_jax.data.sources import load_dataset


def load_digits_arrays():
  """Returns (images float32 (1797, 8, 8, 1) in [0, 1], labels int32 (1797,)).

  Pixel values in the source are 0..16; they are scaled by 1/16.
  """
  digits = load_dataset("digits")
  images, labels = digits.splits["train"]
  return to_unit(images, digits.max_value), labels
