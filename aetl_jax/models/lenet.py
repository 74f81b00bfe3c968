"""The LeNet encoder of the domain-adaptation papers (family ``lenet``).

ADDA (Tzeng et al. 2017) and the digit experiments of DANN (Ganin et al. 2016) use a LeNet:
two 5×5 convolutions (20 and 50 channels, no padding), each followed by 2×2 max-pooling and
a ReLU, then a 500-unit dense layer (``block_0``, ``block_1``, ``block_2``); the
classifier's head is the 10-way layer on those 500 features. The decoder (for DRCN and the
autoencoder objectives) maps the code to a quarter-size map of ``channels[-1]`` and doubles
it twice with nearest-neighbour resizing + 5×5 convolutions.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from aetl_jax.models.conv_ops import CONV_IMPLS, check_conv_impl, conv_class
from aetl_jax.models.family import DROPOUT, FAMILIES
from aetl_jax.core.registry import Key, each, one_of, positive

KERNEL = 5


def max_pool_2x2(x):
  """2×2 max-pooling, stride 2 (an odd last row or column is dropped, as ``nn.max_pool``
  does): as a reshape and a max, whose gradient XLA:CPU computes far faster than
  ``select_and_scatter``, the gradient of ``reduce_window`` (``python -m aetl_jax.bench``,
  the LeNet row)."""
  b, h, w, c = x.shape
  x = x[:, : h // 2 * 2, : w // 2 * 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class LeNetEncoder(nn.Module):
  channels: Sequence[int] = (20, 50)
  code_dim: int = 500
  dropout_rate: float = 0.0
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    conv = conv_class(self.conv_impl)
    for i, c in enumerate(self.channels):
      x = conv(c, (KERNEL, KERNEL), padding="VALID", name=f"block_{i}")(x)
      x = nn.relu(max_pool_2x2(x))
    x = x.reshape((x.shape[0], -1))
    if self.dropout_rate:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.relu(nn.Dense(self.code_dim, name=f"block_{len(self.channels)}")(x))


class LeNetDecoder(nn.Module):
  image_shape: Sequence[int]
  channels: Sequence[int] = (50, 20)
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, z, *, train: bool = False):
    del train
    conv = conv_class(self.conv_impl)
    h, w = self.image_shape[0] // 4, self.image_shape[1] // 4
    x = nn.relu(nn.Dense(h * w * self.channels[0], name="block_0")(z))
    x = x.reshape((z.shape[0], h, w, self.channels[0]))
    for i, c in enumerate((*self.channels[1:], self.image_shape[-1])):
      b, hh, ww, cc = x.shape
      x = jax.image.resize(x, (b, 2 * hh, 2 * ww, cc), "nearest")
      x = conv(c, (KERNEL, KERNEL), padding="SAME", name=f"block_{i + 1}")(x)
      if i < len(self.channels) - 1:
        x = nn.relu(x)
    return x


def _check(m, image_shape) -> None:
  h, w = image_shape[0], image_shape[1]
  size = h
  for _ in m.channels:
    size = (size - KERNEL + 1) // 2
  if min(h, w) < 4 * KERNEL - 4 or size < 1:
    raise ValueError(f"lenet encoder: {h}×{w} images are too small for {len(m.channels)} 5×5 "
                     f"convolutions with pooling (at least 16×16); pad or resize them "
                     f"(data.common_shape, data.resize)")
  if h % 4 or w % 4:
    raise ValueError(f"lenet decoder: image height and width must be multiples of 4, got "
                     f"{h}×{w}; bring the images to e.g. 28×28 or 32×32 (data.common_shape)")


@FAMILIES.register("lenet", defaults=dict(
    channels=Key((20, 50), "channels of the conv blocks, input to code",
                 each(positive(integer=True), "positive integers")),
    code_dim=Key(500, "size of the code (0: the trunk's own features)"),
    dropout_rate=DROPOUT,
    conv_impl=Key("auto", f"convolution formulation: {', '.join(CONV_IMPLS)} ('onednn': "
                  f"oneDNN's convolutions, CPU; auto's choice there where they build)",
                  one_of(*CONV_IMPLS))),
                   check=_check, validate=check_conv_impl,
                   decoder=lambda m, shape: LeNetDecoder(image_shape=tuple(shape),
                                                         channels=tuple(reversed(tuple(m.channels))),
                                                         conv_impl=m.conv_impl))
def lenet(m, code_dim: int):
  """Two 5×5 conv + 2×2 max-pool blocks (``model.channels``) → a ReLU dense code (500)."""
  return LeNetEncoder(channels=tuple(m.channels), code_dim=code_dim, dropout_rate=m.dropout_rate,
                      conv_impl=m.conv_impl)
