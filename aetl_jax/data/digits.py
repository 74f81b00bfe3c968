"""scikit-learn's bundled 8×8 handwritten digits: the offline default dataset."""

from __future__ import annotations

import numpy as np


def load_digits_arrays():
  """Returns (images float32 (1797, 8, 8, 1) in [0, 1], labels int32 (1797,)).

  Pixel values in the source are 0..16; they are scaled by 1/16.
  """
  from sklearn.datasets import load_digits

  bunch = load_digits()
  images = (bunch.images.astype(np.float32) / 16.0)[..., None]
  return images, bunch.target.astype(np.int32)
