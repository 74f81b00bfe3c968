"""Convolution as shifted-slice patches + one matmul (im2col), for XLA:CPU.

Inside ``scan``/``while`` loops XLA:CPU's backward convolutions lose their fast
layouts (jax#12868) and run ~10× slower than the same step jitted per batch.
A convolution written as k·k shifted strided slices concatenated on the
channel axis and one matmul has only slices, a concatenate and a dot in its
forward and backward passes, all of which stay fast inside a loop.

:class:`Im2colConv` has exactly ``nn.Conv``'s parameters (names, shapes,
initialisers), so checkpoints move between the two implementations; tests
check equal outputs and gradients.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

CONV_IMPLS = ("auto", "xla", "im2col")


def resolve_conv_impl(impl: str) -> str:
  """'auto': im2col on CPU, XLA's native convolution on GPU/TPU."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"unknown conv implementation {impl!r}; valid: {', '.join(CONV_IMPLS)}")
  if impl != "auto":
    return impl
  return "im2col" if jax.default_backend() == "cpu" else "xla"


def _same_padding(size: int, k: int, s: int) -> tuple[int, int, int]:
  out = -(-size // s)
  total = max((out - 1) * s + k - size, 0)
  return out, total // 2, total - total // 2


def im2col_conv(x, kernel, strides: Sequence[int] = (1, 1), padding: str = "SAME"):
  """``lax.conv_general_dilated(x, kernel, strides, padding)`` for NHWC/HWIO, as one matmul."""
  kh, kw, cin, cout = kernel.shape
  sh, sw = strides
  b, h, w, c = x.shape
  if c != cin:
    raise ValueError(f"input has {c} channels, kernel expects {cin}")
  if padding == "SAME":
    oh, pt, pb = _same_padding(h, kh, sh)
    ow, pl, pr = _same_padding(w, kw, sw)
    x = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  elif padding == "VALID":
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
  else:
    raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
  patches = [x[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw, :]
             for i in range(kh) for j in range(kw)]
  cols = jnp.concatenate(patches, axis=-1)  # (B, oh, ow, kh*kw*cin), ordered (i, j, c)
  return cols @ kernel.reshape(kh * kw * cin, cout)


class Im2colConv(nn.Module):
  """Drop-in for ``nn.Conv`` (NHWC, 'SAME'/'VALID' padding, no dilation or groups)."""

  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  padding: str = "SAME"
  use_bias: bool = True
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features))
    y = im2col_conv(x, kernel, tuple(self.strides), self.padding)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,))
    return y


def conv_class(impl: str):
  """The module class for ``impl`` ('auto' resolved per backend)."""
  return Im2colConv if resolve_conv_impl(impl) == "im2col" else nn.Conv
