"""Convolution formulations for XLA:CPU, with exactly the parameters of nn.Conv/nn.ConvTranspose.

Inside ``scan``/``while`` loops XLA:CPU's backward convolutions lose their fast
layouts (jax#12868) and run ~10× slower than the same step jitted per batch;
narrow convolutions (one output channel) and transposed convolutions are slow
even per batch. Written with only slices, pads, concatenates and one dot, the
forward and backward passes stay fast inside a loop. The formulations:

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
* **narrow** (stride 1, few output channels): shift-add forward with a
  hand-written backward in which every big operand is a plain row-major matmul
  operand: the input gradient is ``patches(dy) @ kernelᵀ`` and the kernel
  gradient ``patches(dy)ᵀ @ x``, where only the *narrow* ``dy`` is gathered or
  transposed. Autodiff of XLA's convolution (or of shift-add) instead
  transposes the wide input to a channel-major copy for the kernel gradient.

* **sub-pixel transposed convolution**: output pixel ``s·a + r`` of a
  transposed convolution only meets the kernel taps of phase ``r``, so it is
  s_h·s_w small stride-1 convolutions (2×2 for a 4×4 stride-2 kernel, the same
  multiply-adds) interleaved by depth-to-space; the phases are XLA convolutions
  (per batch) or patches @ kernel (inside a loop).

``hybrid`` (the CPU default) keeps XLA's convolution for wide layers, uses the
narrow formulation for narrow stride-1 layers, the sub-pixel formulation (with
XLA's convolutions) for transposed ones, whose input gradient is XLA's own
strided convolution, and computes every bias gradient as ``ones @ dy``
(XLA:CPU lowers the plain sum over batch×height×width to a slow
``reduce-window``); the kernel gradients of its XLA convolutions read a stored
copy of their input (:func:`materialised`), not a transpose with the input's
producer fused into it.

:class:`FormulatedConv` and :class:`FormulatedConvTranspose` have exactly the
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
import numpy as np
from jax import lax

from aetl_jax.models import onednn

# xla: nn.Conv/nn.ConvTranspose. hybrid: XLA's convolution for wide layers, the
# narrow formulation for narrow ones, bias gradients as matmuls. onednn: hybrid with
# oneDNN's (transposed) convolutions for the wide layers (models/onednn.py). im2col /
# shift_add: that formulation for every convolution. matmul: per layer, the
# formulation with the smaller intermediate. auto: the measured default per
# backend (see resolve_conv_impl).
CONV_IMPLS = ("auto", "xla", "hybrid", "onednn", "im2col", "shift_add", "matmul")
FORMULATIONS = ("xla", "patches", "shift_add", "narrow", "hybrid", "onednn")

# Below this many output channels a layer counts as narrow: the shift-add planes
# are laid out (tap, channel, batch, height, width) so the adds vectorise along
# the width rather than along a channel axis of size 1, and 'hybrid' uses the
# narrow formulation.
NARROW_BELOW = 8


def check_conv_impl(model_cfg) -> None:
  """The conv families' config check: ``conv_impl='onednn'`` builds oneDNN's handlers now
  (:mod:`aetl_jax.models.onednn`), so a machine without them is told in one line before
  anything trains."""
  if model_cfg.get("conv_impl") == "onednn" and (why := onednn.problem()) is not None:
    from aetl_jax.core.config import ConfigError
    raise ConfigError(f"config key 'model.conv_impl': {why}")


def resolve_conv_impl(impl: str, backend: str | None = None) -> str:
  """'auto' → 'onednn' on CPU where oneDNN's handlers build (:mod:`aetl_jax.models.onednn`;
  oneDNN is a dependency on x86-64 Linux), else 'hybrid'; XLA's native convolution ('xla')
  on GPU/TPU.

  ``python -m aetl_jax.bench`` and ``python -m aetl_jax.bench.onednn_library`` on the 2-core
  CPU (BENCHMARKS.md): per batch, 'onednn' trains the conv autoencoder 1.00-1.27× faster than
  'hybrid', which is the fastest of XLA's own ('xla' next; YNNPACK convolutions off,
  :mod:`aetl_jax.engine.compiler`); 'matmul' is ~20× faster than 'xla' *inside* a ``scan``
  (jax#12868) but slower than both per batch, so choose it explicitly when a conv model must
  train inside one compiled loop without oneDNN (``runner=scan``, vmapped seeds). GPUs and
  TPUs have tuned convolution kernels (cuDNN, the TPU compiler), so 'auto' leaves their
  convolutions alone.
  """
  if impl not in CONV_IMPLS:
    raise ValueError(f"unknown conv implementation {impl!r}; valid: {', '.join(CONV_IMPLS)}")
  if impl != "auto":
    return impl
  if (backend or jax.default_backend()) != "cpu":
    return "xla"
  return "onednn" if onednn.usable() else "hybrid"


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
  if cout < NARROW_BELOW:
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


def xla_conv(x, kernel, strides: Sequence[int] = (1, 1), padding: str = "SAME"):
  """XLA's own convolution (NHWC/HWIO), what ``nn.Conv`` computes."""
  _check_channels(x, kernel)
  return lax.conv_general_dilated(x, kernel, tuple(strides), _check_padding(padding),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _shifted_windows(y, kh: int, kw: int, h: int, w: int):
  """The kh·kw windows ``y[:, a:a+h, b:b+w]`` for (a, b) = (kh-1-i, kw-1-j), tap order (i, j)."""
  return [y[:, kh - 1 - i:kh - 1 - i + h, kw - 1 - j:kw - 1 - j + w, :]
          for i in range(kh) for j in range(kw)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def narrow_conv(x, kernel, padding: str = "SAME"):
  """Stride-1 ``lax.conv_general_dilated(x, kernel, 1, padding)`` for few output channels.

  Forward: ``x @ kernel`` as one (cin, kh·kw·cout) matrix at every input pixel,
  then the kh·kw shifted planes are added. Backward (hand-written, see
  :func:`_narrow_conv_bwd`): two row-major matmuls whose gathered or transposed
  operand is built from the narrow output gradient only.
  """
  return _narrow_conv_fwd(x, kernel, padding)[0]


def _narrow_conv_fwd(x, kernel, padding):
  kh, kw, cin, cout = kernel.shape
  (oh, pt, pb), (ow, pl, pr) = _forward_geometry(x, kernel, (1, 1), padding)
  b, h, w, _ = x.shape
  z = x @ kernel.transpose(2, 0, 1, 3).reshape(cin, kh * kw * cout)
  z = jnp.pad(z.reshape(b, h, w, kh * kw, cout), ((0, 0), (pt, pb), (pl, pr), (0, 0), (0, 0)))
  # y[p] = sum_t xpad[p + t] @ k_t = sum_t zpad[p + t, t]
  y = sum(z[:, i:i + oh, j:j + ow, i * kw + j, :] for i in range(kh) for j in range(kw))
  return y, (x, kernel)


def _narrow_conv_bwd(padding, residuals, dy):
  """dx[q] = sum_t dy[q - t + pad_low] @ k_tᵀ and dk_t = sum_q dy[q - t + pad_low]ᵀ x[q].

  Both read the same kh·kw windows of the zero-padded ``dy`` (cout channels
  each): stacked on the channel axis they are the patches of dx's matmul,
  stacked as (tap·cout, pixels) rows they are the left operand of dk's matmul,
  whose right operand is ``x`` as it lies in memory.
  """
  x, kernel = residuals
  kh, kw, cin, cout = kernel.shape
  (_, pt, pb), (_, pl, pr) = _forward_geometry(x, kernel, (1, 1), padding)
  b, h, w, _ = x.shape
  dy_pad = jnp.pad(dy, ((0, 0), (kh - 1 - pt, kh - 1 - pb), (kw - 1 - pl, kw - 1 - pr), (0, 0)))
  windows = _shifted_windows(dy_pad, kh, kw, h, w)  # each (B, H, W, cout)
  taps_by_out = kernel.reshape(kh * kw, cin, cout).transpose(0, 2, 1).reshape(kh * kw * cout, cin)
  patches = jnp.stack(windows, axis=-2).reshape(b * h * w, kh * kw * cout)
  dx = (patches @ taps_by_out).reshape(x.shape)
  rows = jnp.stack([v.reshape(b * h * w, cout).T for v in windows]).reshape(kh * kw * cout, -1)
  dk = (rows @ x.reshape(b * h * w, cin)).reshape(kh, kw, cout, cin).transpose(0, 1, 3, 2)
  return dx, dk


narrow_conv.defvjp(_narrow_conv_fwd, _narrow_conv_bwd)


def materialised(x):
  """``x`` as a buffer of its own, which XLA cannot fuse ``x``'s producer into.

  The kernel gradient of XLA:CPU's convolution reads its input in a batch-minor layout,
  and XLA fuses the elementwise producer of that input (bias, ReLU, depth-to-space) into
  the layout transpose; the fused transpose walks its operands across the channel axis
  (2.7-3.0 ms for the transposed-conv AE's 64×14×14×64 activation, a plain transpose of
  the stored one a fraction of that). A conditional is a fusion boundary XLA keeps
  (``lax.optimization_barrier`` is gone before fusion on CPU). Its predicate reads ``x``,
  so the compiler cannot fold it, and is true unless that element is NaN; the other
  branch (also ``x``) differs in form only, since XLA removes a conditional whose
  branches are the same computation. Values are untouched. Other backends get ``x``
  itself: the fusion is XLA:CPU's, and a GPU reads a conditional's predicate back to the
  host.
  """
  if jax.default_backend() != "cpu":
    return x
  first = x.reshape(-1)[0]
  return lax.cond(first == first, lambda v: v, lambda v: v * 1.0, x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def hybrid_conv(x, kernel, strides: Sequence[int] = (1, 1), padding: str = "SAME"):
  """:func:`xla_conv` whose kernel gradient reads a :func:`materialised` copy of ``x``."""
  return xla_conv(x, kernel, strides, padding)


def _hybrid_conv_fwd(x, kernel, strides, padding):
  return xla_conv(x, kernel, strides, padding), (x, kernel)


def _hybrid_conv_bwd(strides, padding, residuals, dy):
  x, kernel = residuals
  dx, = jax.linear_transpose(lambda v: xla_conv(v, kernel, strides, padding), x)(dy)
  stored = materialised(x)
  dk, = jax.linear_transpose(lambda k: xla_conv(stored, k, strides, padding), kernel)(dy)
  return dx, dk


hybrid_conv.defvjp(_hybrid_conv_fwd, _hybrid_conv_bwd)


@jax.custom_vjp
def bias_add(y, bias):
  """``y + bias`` whose bias gradient is ``ones @ dy`` (a matmul, not a reduce-window on CPU)."""
  return y + bias


def _bias_add_fwd(y, bias):
  return y + bias, None


def _bias_add_bwd(_, dy):
  rows = dy.reshape(-1, dy.shape[-1])
  return dy, jnp.ones((rows.shape[0],), dy.dtype) @ rows


bias_add.defvjp(_bias_add_fwd, _bias_add_bwd)


def depth_to_space(x, factor: int | Sequence[int] = 2):
  """(B, H, W, C·fh·fw) → (B, H·fh, W·fw, C): sub-pixel upsampling, channels ordered (dy, dx, c).

  Written as fh channel slices, each already the output row ``dy`` (its
  (W, dx, c) memory order *is* (W·fw, c)), concatenated on a new major axis:
  contiguous block copies, forward and backward. The textbook 6-d transpose
  computes the same thing, but XLA:CPU's transpose emitter made the conv
  autoencoder's train step ~3% slower with it (BENCHMARKS.md).
  """
  fh, fw = (factor, factor) if isinstance(factor, int) else tuple(factor)
  b, h, w, c = x.shape
  if c % (fh * fw):
    raise ValueError(f"depth_to_space: {c} channels are not divisible by the factors' product "
                     f"{fh}·{fw} = {fh * fw}")
  out_c = c // (fh * fw)
  rows = [x[..., dy * fw * out_c:(dy + 1) * fw * out_c].reshape(b, h, 1, w * fw, out_c)
          for dy in range(fh)]
  return jnp.concatenate(rows, axis=2).reshape(b, h * fh, w * fw, out_c)


def _phase_taps(k: int, s: int, low: int, r: int) -> tuple[int, list[int]]:
  """(first input offset d, kernel taps in increasing d) of output phase ``r`` along one axis.

  ``lax.conv_transpose`` output ``s·a + r`` is ``sum_i x[a + d]·k[i]`` over the
  taps ``i = s·d + low - r`` that lie in ``[0, k)``.
  """
  pairs = sorted(((i - low + r) // s, i) for i in range(k) if (i - low + r) % s == 0)
  return (pairs[0][0] if pairs else 0), [i for _, i in pairs]


def subpixel_conv_transpose(x, kernel, strides: Sequence[int] = (2, 2), padding: str = "SAME",
                            phase_conv: str = "xla"):
  """``lax.conv_transpose(x, kernel, strides, padding)`` as one small convolution per output phase.

  Output pixel ``s·a + r`` only meets the taps of phase ``r``, so each of the
  s_h·s_w phases is an ordinary stride-1 convolution of ``x`` with its own taps
  (a 2×2 kernel for the usual 4×4 stride-2 one: exactly the multiply-adds of
  the transposed convolution), and :func:`depth_to_space` interleaves them.
  XLA:CPU differentiates its own transposed convolution with respect to the
  kernel 10–20× slower than these phases (BENCHMARKS.md). (Computing that
  kernel gradient instead as the one of the strided convolution being
  transposed was faster alone but slower inside the train step.)

  ``phase_conv``: 'xla' (XLA's convolution; every phase pads the same ``x``
  itself, so XLA lays ``x`` out once for all their kernel gradients: separate
  padded views cost one layout copy each, 4×4 ms at batch 64) or 'patches'
  (patches @ kernel, for a whole epoch inside one ``scan`` on XLA:CPU).
  """
  _check_channels(x, kernel)
  if phase_conv not in ("xla", "patches"):
    raise ValueError(f"unknown phase_conv {phase_conv!r}; valid: xla, patches")
  return _phase_convs(x, kernel, tuple(strides), _check_padding(padding), phase_conv)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def hybrid_conv_transpose(x, kernel, strides: Sequence[int] = (2, 2), padding: str = "SAME"):
  """:func:`subpixel_conv_transpose` whose input gradient is XLA's strided convolution.

  The forward pass and the kernel gradient are the sub-pixel phases; the input
  gradient is what ``lax.conv_transpose``'s own transpose rule computes, one
  strided convolution of the output gradient, instead of s_h·s_w phase
  convolutions, the phase split of the gradient and their sum (transposed-conv
  AE step 54 → 45 ms at batch 64, BENCHMARKS.md).
  """
  return subpixel_conv_transpose(x, kernel, strides, padding)


def _hybrid_transpose_fwd(x, kernel, strides, padding):
  return subpixel_conv_transpose(x, kernel, strides, padding), (x, kernel)


def _hybrid_transpose_bwd(strides, padding, residuals, dy):
  x, kernel = residuals
  strides, padding = tuple(strides), _check_padding(padding)
  # Both maps are linear: transpose them without tracing a forward pass to throw away.
  dx, = jax.linear_transpose(lambda v: lax.conv_transpose(
      v, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")), x)(dy)
  stored = materialised(x)
  dk, = jax.linear_transpose(lambda k: _phase_convs(stored, k, strides, padding, "xla"),
                             kernel)(dy)
  return dx, dk


hybrid_conv_transpose.defvjp(_hybrid_transpose_fwd, _hybrid_transpose_bwd)


def _phase_convs(x, kernel, strides, padding, phase_conv):
  kh, kw, _, cout = kernel.shape
  sh, sw = strides
  b, h, w, _ = x.shape
  oh, low_h = _transpose_geometry(h, kh, sh, padding)
  ow, low_w = _transpose_geometry(w, kw, sw, padding)
  ah, aw = -(-oh // sh), -(-ow // sw)  # positions per phase (an overhang is cropped)

  def rows(offset, taps, n, size):  # (low, high) padding of the phase's input rows
    return -offset, offset + n + len(taps) - 1 - size

  taps_h = [_phase_taps(kh, sh, low_h, r) for r in range(sh)]
  taps_w = [_phase_taps(kw, sw, low_w, r) for r in range(sw)]
  pads = {(r, q): (rows(dh, ih, ah, h), rows(dw, iw, aw, w))
          for r, (dh, ih) in enumerate(taps_h) for q, (dw, iw) in enumerate(taps_w) if ih and iw}
  # SAME/VALID phases only ever pad (no crop: XLA:CPU gets negative conv padding wrong).
  assert all(p >= 0 for pad in pads.values() for pair in pad for p in pair), pads
  if phase_conv == "xla":  # every phase pads the same x itself: XLA lays x out once for all
    def convolve(taps, pad):
      return lax.conv_general_dilated(x, taps, (1, 1), pad,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  else:  # pad once, slice each phase's window
    (pt, pb), (pl, pr) = ((max([0] + [pad[a][0] for pad in pads.values()]),
                           max([0] + [pad[a][1] for pad in pads.values()])) for a in (0, 1))
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))

    def convolve(taps, pad):
      (lo_h, hi_h), (lo_w, hi_w) = pad
      return patches_conv(xp[:, pt - lo_h:pt + h + hi_h, pl - lo_w:pl + w + hi_w, :], taps,
                          (1, 1), "VALID")
  phases = []
  for r, (_, ih) in enumerate(taps_h):
    for q, (_, iw) in enumerate(taps_w):
      if (r, q) not in pads:  # a stride larger than the kernel leaves this phase without taps
        phases.append(jnp.zeros((b, ah, aw, cout), x.dtype))
        continue
      phases.append(convolve(kernel[np.array(ih)][:, np.array(iw)], pads[r, q]))
  y = jnp.concatenate(phases, axis=-1)  # channels ordered (phase_h, phase_w, cout)
  return depth_to_space(y, (sh, sw))[:, :oh, :ow, :]


def choose_formulation(in_hw: Sequence[int], out_hw: Sequence[int], cin: int, cout: int) -> str:
  """The formulation whose intermediate is smaller (both are kh·kw times this).

  patches: one row of kh·kw·cin per *output* pixel; shift-add: kh·kw·cout per
  *input* pixel.
  """
  patches = out_hw[0] * out_hw[1] * cin
  planes = in_hw[0] * in_hw[1] * cout
  return "patches" if patches <= planes else "shift_add"


class _KernelAndBias(nn.Module):
  """The parameters of ``nn.Conv``/``nn.ConvTranspose`` around a formulation's computation.

  Subclasses say how ``formulation`` computes the output from ``x`` and the
  kernel (:meth:`_convolve`), and which bias add to use (``bias_add`` for the
  'hybrid' ones); names, shapes and initialisers stay those of flax's modules.
  """

  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  padding: str = "SAME"
  use_bias: bool = True
  formulation: str = "auto"
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  def _convolve(self, x, kernel, strides):
    """(output, bias add) of ``self.formulation``."""
    raise NotImplementedError

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features))
    y, add = self._convolve(x, kernel, tuple(self.strides))
    if self.use_bias:
      y = add(y, self.param("bias", self.bias_init, (self.features,)))
    return y


def _plain_add(y, bias):
  return y + bias


class FormulatedConv(_KernelAndBias):
  """Drop-in for ``nn.Conv`` (NHWC, 'SAME'/'VALID' padding, no dilation or groups).

  ``formulation``: 'xla' (``lax.conv_general_dilated``), 'patches',
  'shift_add', 'narrow' (stride 1), 'auto' (per layer, the smaller
  intermediate; see :func:`choose_formulation`) or 'hybrid' ('narrow' for
  stride-1 layers with fewer than ``NARROW_BELOW`` output channels, otherwise
  XLA's convolution whose kernel gradient reads a stored input
  (:func:`hybrid_conv`); the bias gradient as a matmul) or 'onednn' ('hybrid' with
  :func:`aetl_jax.models.onednn.conv` for the wide layers).
  """

  def _convolve(self, x, kernel, strides):
    formulation, add = self.formulation, _plain_add
    if formulation == "auto":
      out_hw = [g[0] for g in _forward_geometry(x, kernel, strides, self.padding)]
      formulation = choose_formulation(x.shape[1:3], out_hw, x.shape[-1], self.features)
    elif formulation in ("hybrid", "onednn"):
      if self.features < NARROW_BELOW and strides == (1, 1):
        return narrow_conv(x, kernel, _check_padding(self.padding)), bias_add
      wide = hybrid_conv if formulation == "hybrid" else onednn.conv
      return wide(x, kernel, strides, self.padding), bias_add
    if formulation == "xla":
      return xla_conv(x, kernel, strides, self.padding), add
    if formulation == "patches":
      return patches_conv(x, kernel, strides, self.padding), add
    if formulation == "shift_add":
      return shift_add_conv(x, kernel, strides, self.padding), add
    if formulation == "narrow":
      if strides != (1, 1):
        raise ValueError(f"the narrow formulation needs stride 1, got strides {strides}")
      return narrow_conv(x, kernel, _check_padding(self.padding)), add
    raise ValueError(f"unknown conv formulation {formulation!r}; valid: auto, "
                     f"{', '.join(FORMULATIONS)}")


TRANSPOSE_FORMULATIONS = ("xla", "overlap_add", "subpixel", "subpixel_patches", "hybrid",
                          "onednn")


class FormulatedConvTranspose(_KernelAndBias):
  """Drop-in for ``nn.ConvTranspose`` (NHWC, 'SAME'/'VALID', ``transpose_kernel=False``).

  ``formulation``: 'xla' (``lax.conv_transpose``), 'overlap_add' (matmul +
  overlap-add), 'subpixel' (one stride-1 XLA convolution per output phase +
  depth-to-space), 'subpixel_patches' (the phases as patches @ kernel) or
  'hybrid' ('subpixel' with XLA's strided convolution as input gradient and the
  bias gradient as a matmul: :func:`hybrid_conv_transpose`, :func:`bias_add`) or 'onednn'
  (:func:`aetl_jax.models.onednn.conv_transpose` for wide layers, 'hybrid' for narrow ones
  and where a stride exceeds the kernel).
  """

  formulation: str = "overlap_add"

  def _convolve(self, x, kernel, strides):
    formulation = self.formulation
    if (formulation == "onednn" and self.features >= NARROW_BELOW and onednn.adjoint_padding(
        x.shape[1:3], kernel.shape[:2], strides, _check_padding(self.padding)) is not None):
      return onednn.conv_transpose(x, kernel, strides, self.padding), bias_add
    if formulation in ("hybrid", "onednn"):
      return hybrid_conv_transpose(x, kernel, strides, self.padding), bias_add
    if formulation == "xla":
      _check_channels(x, kernel)
      return lax.conv_transpose(x, kernel, strides, _check_padding(self.padding),
                                dimension_numbers=("NHWC", "HWIO", "NHWC")), _plain_add
    if formulation == "overlap_add":
      return overlap_add_conv_transpose(x, kernel, strides, self.padding), _plain_add
    if formulation in ("subpixel", "subpixel_patches"):
      phase_conv = "patches" if formulation == "subpixel_patches" else "xla"
      return subpixel_conv_transpose(x, kernel, strides, self.padding, phase_conv), _plain_add
    raise ValueError(f"unknown transposed-conv formulation {formulation!r}; valid: "
                     f"{', '.join(TRANSPOSE_FORMULATIONS)}")


# The formulation each conv_impl (other than 'xla') gives plain and transposed convolutions.
CONV_FORMULATION_OF = {"hybrid": "hybrid", "onednn": "onednn", "im2col": "patches",
                       "shift_add": "shift_add", "matmul": "auto"}
TRANSPOSE_FORMULATION_OF = {"hybrid": "hybrid", "onednn": "onednn",
                            "im2col": "subpixel_patches", "matmul": "subpixel_patches",
                            "shift_add": "overlap_add"}


def _module_class(impl: str, native, formulated, formulation_of: dict):
  impl = resolve_conv_impl(impl)
  if impl == "xla":
    return native
  return functools.partial(formulated, formulation=formulation_of[impl])


def conv_class(impl: str):
  """A ``nn.Conv``-compatible module class for ``impl`` ('auto' resolved per backend)."""
  return _module_class(impl, nn.Conv, FormulatedConv, CONV_FORMULATION_OF)


def conv_transpose_class(impl: str):
  """A ``nn.ConvTranspose``-compatible module class for ``impl``.

  'hybrid': one XLA convolution per output phase + depth-to-space, XLA's
  strided convolution as input gradient (:func:`hybrid_conv_transpose`); 'im2col'
  and 'matmul': the phases as patches @ kernel (in a scan on XLA:CPU 3.2×
  faster than matmul + overlap-add, BENCHMARKS.md); 'shift_add': matmul +
  overlap-add; 'onednn': oneDNN's for the wide layers
  (:func:`aetl_jax.models.onednn.conv_transpose`).
  """
  return _module_class(impl, nn.ConvTranspose, FormulatedConvTranspose,
                       TRANSPOSE_FORMULATION_OF)
