"""Convolutions written as matmuls, for XLA:CPU.

Inside ``scan``/``while`` loops XLA:CPU's backward convolutions lose their fast
layouts (jax#12868) and run ~10× slower than the same step jitted per batch;
narrow convolutions (one output channel) and transposed convolutions are slow
even per batch. Written with only slices, pads, concatenates and one dot, the
forward and backward passes stay fast inside a loop. Two formulations:

* **patches** (im2col): the kh·kw shifted (strided) slices of the input are
  concatenated on the channel axis and multiplied by the kernel as one
  ``(kh·kw·cin, cout)`` matrix. The intermediate is ``kh·kw·cin`` per output
  pixel, so it suits layers with few input channels.
* **shift-add**: the input is multiplied by the kernel as one
  ``(cin, kh·kw·cout)`` matrix first, then the kh·kw output planes are added at
  their shifts. The intermediate is ``kh·kw·cout`` per input pixel, so it suits
  narrow outputs (the 32→1 output layer of an image decoder). A transposed
  convolution is the same computation with the planes placed ``stride`` apart
  (matmul + overlap-add), which avoids convolving a zero-dilated input.

:class:`MatmulConv` and :class:`MatmulConvTranspose` have exactly the
parameters (names, shapes, initialisers) of ``nn.Conv`` and
``nn.ConvTranspose``, so checkpoints move between implementations; the tests
check equal outputs and gradients. ``python -m aetl_jax.bench.conv`` measures
every formulation; the default (:func:`resolve_conv_impl`) follows it.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# xla: nn.Conv/nn.ConvTranspose. im2col / shift_add: that formulation for every
# convolution. matmul: per layer, the formulation with the smaller
# intermediate. auto: the measured default (see resolve_conv_impl).
CONV_IMPLS = ("auto", "xla", "im2col", "shift_add", "matmul")
FORMULATIONS = ("patches", "shift_add")

# Below this many output channels the shift-add planes are laid out
# (tap, channel, batch, height, width) so the adds vectorise along the width
# rather than along a channel axis of size 1.
_SPATIAL_MINOR_BELOW = 8


def resolve_conv_impl(impl: str) -> str:
  """'auto' → XLA's native convolution ('xla') on every backend, from measurements.

  ``python -m aetl_jax.bench.conv`` on the 2-core CPU (BENCHMARKS.md): with the
  default per-batch runner and YNNPACK convolutions off
  (:mod:`aetl_jax.training.compiler`), 'xla' trains the conv autoencoder
  fastest; 'matmul' is ~20× faster than 'xla' *inside* a ``scan`` (jax#12868)
  but still slower than 'xla' per batch, so choose it explicitly when a conv
  model must train inside one compiled loop (``runner=scan``, vmapped seeds).
  GPUs and TPUs have tuned convolution kernels (cuDNN, the TPU compiler).
  """
  if impl not in CONV_IMPLS:
    raise ValueError(f"unknown conv implementation {impl!r}; valid: {', '.join(CONV_IMPLS)}")
  return "xla" if impl == "auto" else impl


def _check_padding(padding) -> str:
  if padding not in ("SAME", "VALID"):
    raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
  return padding


def _conv_geometry(size: int, k: int, s: int, padding: str) -> tuple[int, int, int]:
  """(output size, low pad, high pad) of a forward convolution along one axis."""
  if padding == "VALID":
    return (size - k) // s + 1, 0, 0
  out = -(-size // s)
  total = max((out - 1) * s + k - size, 0)
  return out, total // 2, total - total // 2


def _transpose_geometry(size: int, k: int, s: int, padding: str) -> tuple[int, int]:
  """(output size, low pad of the dilated input) as ``lax.conv_transpose`` defines them."""
  if padding == "SAME":
    pad_len = k + s - 2
    low = k - 1 if s > k - 1 else -(-pad_len // 2)
  else:
    pad_len = k + s - 2 + max(k - s, 0)
    low = k - 1
  return (size - 1) * s + 1 + pad_len - k + 1, low


def _check_channels(x, kernel):
  if x.shape[-1] != kernel.shape[2]:
    raise ValueError(f"input has {x.shape[-1]} channels, kernel expects {kernel.shape[2]}")


def _forward_geometry(x, kernel, strides, padding):
  """((out height, low, high), (out width, low, high)) of a forward convolution."""
  _check_channels(x, kernel)
  padding = _check_padding(padding)
  return tuple(_conv_geometry(n, k, s, padding)
               for n, k, s in zip(x.shape[1:3], kernel.shape[:2], strides))


def patches_conv(x, kernel, strides: Sequence[int] = (1, 1), padding: str = "SAME"):
  """``lax.conv_general_dilated(x, kernel, strides, padding)`` (NHWC/HWIO) as patches @ kernel."""
  kh, kw, cin, cout = kernel.shape
  sh, sw = strides
  (oh, pt, pb), (ow, pl, pr) = _forward_geometry(x, kernel, strides, padding)
  x = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  patches = [x[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw, :]
             for i in range(kh) for j in range(kw)]
  cols = jnp.concatenate(patches, axis=-1)  # (B, oh, ow, kh*kw*cin), ordered (i, j, c)
  return cols @ kernel.reshape(kh * kw * cin, cout)


def _planes(x, kernel):
  """``x @ kernel`` for every tap: (taps, B, H, W, cout), or (taps, cout, B, H, W) when narrow.

  The narrow layout is the dot's own output order; the wide one moves the tap
  axis first, which XLA folds into the per-tap slices that read it.
  """
  kh, kw, cin, cout = kernel.shape
  taps = kernel.reshape(kh * kw, cin, cout)
  if cout < _SPATIAL_MINOR_BELOW:
    return jnp.einsum("tco,bhwc->tobhw", taps, x), True
  z = jnp.einsum("bhwc,tco->bhwto", x, taps)
  return jnp.moveaxis(z, 3, 0), False


def _plane_spatial(spatial_minor: bool) -> tuple[int, int]:
  """Axes of height and width in one plane."""
  return (2, 3) if spatial_minor else (1, 2)


def _to_nhwc(y, spatial_minor: bool):
  return jnp.moveaxis(y, 0, -1) if spatial_minor else y


def shift_add_conv(x, kernel, strides: Sequence[int] = (1, 1), padding: str = "SAME"):
  """``lax.conv_general_dilated(x, kernel, strides, padding)`` as x @ kernel, then shifted adds."""
  kh, kw, _, _ = kernel.shape
  sh, sw = strides
  (oh, pt, pb), (ow, pl, pr) = _forward_geometry(x, kernel, strides, padding)
  z, spatial_minor = _planes(x, kernel)
  ah, aw = _plane_spatial(spatial_minor)
  pads = [(0, 0)] * 5
  pads[ah + 1], pads[aw + 1] = (pt, pb), (pl, pr)
  z = jnp.pad(z, pads)
  out = 0
  for i in range(kh):
    for j in range(kw):
      index = [slice(None)] * 4
      index[ah] = slice(i, i + (oh - 1) * sh + 1, sh)
      index[aw] = slice(j, j + (ow - 1) * sw + 1, sw)
      out = out + z[i * kw + j][tuple(index)]
  return _to_nhwc(out, spatial_minor)


def overlap_add_conv_transpose(x, kernel, strides: Sequence[int] = (2, 2),
                               padding: str = "SAME"):
  """``lax.conv_transpose(x, kernel, strides, padding)`` (NHWC/HWIO, kernel not flipped).

  Every input pixel's ``x @ kernel`` plane is added into the output at
  ``stride``-spaced positions (matmul + overlap-add): no zero-dilated input is
  ever convolved.
  """
  _check_channels(x, kernel)
  kh, kw, _, _ = kernel.shape
  sh, sw = strides
  h, w = x.shape[1], x.shape[2]
  oh, low_h = _transpose_geometry(h, kh, sh, _check_padding(padding))
  ow, low_w = _transpose_geometry(w, kw, sw, padding)
  z, spatial_minor = _planes(x, kernel)
  ah, aw = _plane_spatial(spatial_minor)
  out = 0
  for i in range(kh):
    for j in range(kw):
      # conv_transpose: out[p] = sum_i dilated[p + i - low]·k[i], dilated[s·m] = x[m],
      # so input pixel m lands at p = s·m + low - i.
      config = [(0, 0, 0)] * 4
      config[ah] = (low_h - i, oh - (low_h - i) - (sh * (h - 1) + 1), sh - 1)
      config[aw] = (low_w - j, ow - (low_w - j) - (sw * (w - 1) + 1), sw - 1)
      out = out + lax.pad(z[i * kw + j], jnp.zeros((), z.dtype), config)
  return _to_nhwc(out, spatial_minor)


def choose_formulation(in_hw: Sequence[int], out_hw: Sequence[int], cin: int, cout: int) -> str:
  """The formulation whose intermediate is smaller (both are kh·kw times this).

  patches: one row of kh·kw·cin per *output* pixel; shift-add: kh·kw·cout per
  *input* pixel.
  """
  patches = out_hw[0] * out_hw[1] * cin
  planes = in_hw[0] * in_hw[1] * cout
  return "patches" if patches <= planes else "shift_add"


class MatmulConv(nn.Module):
  """Drop-in for ``nn.Conv`` (NHWC, 'SAME'/'VALID' padding, no dilation or groups).

  ``formulation``: 'patches', 'shift_add' or 'auto' (per layer, the smaller
  intermediate; see :func:`choose_formulation`).
  """

  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  padding: str = "SAME"
  use_bias: bool = True
  formulation: str = "auto"
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    strides = tuple(self.strides)
    kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features))
    formulation = self.formulation
    if formulation == "auto":
      out_hw = [g[0] for g in _forward_geometry(x, kernel, strides, self.padding)]
      formulation = choose_formulation(x.shape[1:3], out_hw, x.shape[-1], self.features)
    if formulation == "patches":
      y = patches_conv(x, kernel, strides, self.padding)
    elif formulation == "shift_add":
      y = shift_add_conv(x, kernel, strides, self.padding)
    else:
      raise ValueError(f"unknown conv formulation {formulation!r}; valid: auto, "
                       f"{', '.join(FORMULATIONS)}")
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,))
    return y


class MatmulConvTranspose(nn.Module):
  """Drop-in for ``nn.ConvTranspose`` (NHWC, 'SAME'/'VALID', ``transpose_kernel=False``)."""

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
    y = overlap_add_conv_transpose(x, kernel, tuple(self.strides), self.padding)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,))
    return y


def conv_class(impl: str):
  """A ``nn.Conv``-compatible module class for ``impl`` ('auto' resolved per backend)."""
  impl = resolve_conv_impl(impl)
  if impl == "xla":
    return nn.Conv
  formulation = {"im2col": "patches", "shift_add": "shift_add", "matmul": "auto"}[impl]
  return functools.partial(MatmulConv, formulation=formulation)


def conv_transpose_class(impl: str):
  """A ``nn.ConvTranspose``-compatible module class for ``impl``."""
  return nn.ConvTranspose if resolve_conv_impl(impl) == "xla" else MatmulConvTranspose
