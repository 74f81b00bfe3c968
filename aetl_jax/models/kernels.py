"""Layers with hand-written gradients, for XLA:CPU: max pooling and BatchNorm (ResNet-18's
step), the LSTM recurrence and the readout's cross-entropy (the sequence autoencoder). Each
computes what the plain expression computes, values and gradients (tests compare them with
autodiff's).

:func:`max_pool`: a gradient that is elementwise work, not XLA:CPU's select-and-scatter.
``nn.max_pool``'s gradient is a ``select_and_scatter_add``, which XLA:CPU runs as a
variadic ``reduce-window`` loop: ResNet-18's 3×3/2 pool over a 32×112×112×64 batch
took 415 ms forward and backward on the 2-core CPU (BENCHMARKS.md), a fifth of its
whole train step. :func:`max_pool` computes the same values and the same
gradient — each output's gradient goes to the first position of its window
(row-major) that holds the maximum, as torch's and XLA's do — from the window's
strided slices: a max over them forward, and backward, per tap, a mask of the
positions not yet taken that equal the output, scattered back by a strided
(interior) pad. Every step is a slice, a compare or a pad, which XLA fuses.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def _taps(xp, window, strides, out_hw):
  """The window's strided slices of the padded input, each (B, out_h, out_w, C)."""
  (kh, kw), (sh, sw), (oh, ow) = window, strides, out_hw
  return [lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1,
                                        xp.shape[3]), (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]


def _geometry(x, window, strides, padding):
  pads = tuple(padding)
  out_hw = tuple((x.shape[1 + a] + sum(pads[a]) - window[a]) // strides[a] + 1 for a in (0, 1))
  return pads, out_hw


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x, window=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1))):
  """``nn.max_pool(x, window, strides, padding)`` for NHWC ``x`` (explicit padding pairs)."""
  return _forward(x, window, strides, padding)[0]


def _forward(x, window, strides, padding):
  pads, out_hw = _geometry(x, window, strides, padding)
  xp = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
  taps = _taps(xp, window, strides, out_hw)
  return functools.reduce(jnp.maximum, taps), xp


def _fwd(x, window, strides, padding):
  y, xp = _forward(x, window, strides, padding)
  return y, (xp, y)


def _bwd(window, strides, padding, residuals, dy):
  xp, y = residuals
  _, out_hw = _geometry(xp, window, strides, ((0, 0), (0, 0)))
  (_, kw), (sh, sw), (oh, ow) = window, strides, out_hw
  taken = jnp.zeros(y.shape, bool)
  dxp = jnp.zeros(xp.shape, dy.dtype)
  zero = jnp.zeros((), dy.dtype)
  for t, tap in enumerate(_taps(xp, window, strides, out_hw)):
    i, j = divmod(t, kw)
    hit = (tap == y) & ~taken
    taken = taken | hit
    spread = ((0, 0, 0), (i, xp.shape[1] - i - (oh - 1) * sh - 1, sh - 1),
              (j, xp.shape[2] - j - (ow - 1) * sw - 1, sw - 1), (0, 0, 0))
    dxp = dxp + lax.pad(jnp.where(hit, dy, zero), zero, spread)
  (pt, pb), (pl, pr) = padding
  return (dxp[:, pt:xp.shape[1] - pb, pl:xp.shape[2] - pr, :],)


max_pool.defvjp(_fwd, _bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm(x, scale, bias, epsilon: float = 1e-5):
  """Training-mode batch normalisation over every axis but the last: ``(y, mean, var)``
  with ``y = (x - mean) / sqrt(var + epsilon) * scale + bias`` (biased variance).

  The same values and gradients as the plain expression; the backward pass is the
  closed form (two reductions and one elementwise pass over ``x``) instead of
  autodiff's chain through the mean and the variance: ResNet-18's 56-px BatchNorm
  + ReLU forward and backward 40 → 23 ms on the 2-core CPU.
  """
  return _bn_forward(x, scale, bias, epsilon)[:3]


def _bn_forward(x, scale, bias, epsilon):
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axes)
  var = jnp.mean(jnp.square(x - mean), axes)
  rstd = lax.rsqrt(var + epsilon)
  return (x - mean) * (rstd * scale) + bias, mean, var, rstd


def _bn_fwd(x, scale, bias, epsilon):
  y, mean, var, rstd = _bn_forward(x, scale, bias, epsilon)
  return (y, mean, var), (x, mean, rstd, scale)


def _bn_bwd(epsilon, residuals, cotangents):
  x, mean, rstd, scale = residuals
  dy, dmean, dvar = cotangents
  axes = tuple(range(x.ndim - 1))
  n = x.size // x.shape[-1]
  centred = x - mean
  xhat = centred * rstd
  dbias = jnp.sum(dy, axes)
  dscale = jnp.sum(dy * xhat, axes)
  dx = (scale * rstd / n) * (n * dy - dbias - xhat * dscale) + (dmean + 2.0 * dvar * centred) / n
  return dx, dscale, dbias


batch_norm.defvjp(_bn_fwd, _bn_bwd)


def lstm_gates(c_prev, z):
  """The LSTM cell on pre-activations ``z`` = x W + h U + b (gates i, f, g, o; forget bias 1):
  (activations (i, f, g, o) concatenated, new cell state, tanh of it)."""
  zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
  i, f, g, o = jax.nn.sigmoid(zi), jax.nn.sigmoid(zf + 1.0), jnp.tanh(zg), jax.nn.sigmoid(zo)
  c = f * c_prev + i * g
  return jnp.concatenate([i, f, g, o], axis=-1), c, jnp.tanh(c)


@jax.custom_vjp
def lstm_scan(carry, x_gates, w_h):
  """An LSTM over time-major ``x_gates`` (T, B, 4H) — the inputs' projections, bias
  included — from ``carry`` (h, c): ((h, c) at the end, hidden states (T, B, H)).

  The gradient of ``lax.scan`` over the cell accumulates the recurrent kernel's gradient
  inside the reverse loop (a second small matmul per step, and the kernel's gradient read
  and written every step) and recomputes or stores what the cell needs. Here the forward
  keeps the gate activations, the reverse loop runs one matmul per step (dz Uᵀ) and emits
  the pre-activation gradients, and the kernel's gradient is one matmul over all steps
  after it, as cuDNN and oneDNN do: an LSTM 256 over 16 steps at batch 64, forward and
  backward, 20.1 → 13.3 ms on the 2-core CPU (BENCHMARKS.md, "Sequence autoencoder").
  """
  return _lstm_forward(carry, x_gates, w_h)[0]


def _lstm_forward(carry, x_gates, w_h):
  def step(carry, xg):
    h, c = carry
    acts, c, tc = lstm_gates(c, xg + h @ w_h)
    h = acts[..., 3 * h.shape[-1]:] * tc
    return (h, c), (h, c, acts, tc)

  last, (hs, cs, acts, tcs) = lax.scan(step, carry, x_gates)
  return (last, hs), (carry, w_h, hs, cs, acts, tcs)


def _lstm_bwd(residuals, cotangents):
  (h0, c0), w_h, hs, cs, acts, tcs = residuals
  (dh_last, dc_last), dhs = cotangents
  c_prev = jnp.concatenate([c0[None], cs[:-1]], axis=0)

  def step(carry, inp):
    dh, dc = carry
    a, tc, cp, dh_out = inp
    i, f, g, o = jnp.split(a, 4, axis=-1)
    dh = dh + dh_out
    dc = dc + dh * o * (1.0 - tc * tc)
    dz = jnp.concatenate([dc * g * i * (1.0 - i), dc * cp * f * (1.0 - f),
                          dc * i * (1.0 - g * g), dh * tc * o * (1.0 - o)], axis=-1)
    return (dz @ w_h.T, dc * f), dz

  (dh0, dc0), dzs = lax.scan(step, (dh_last, dc_last), (acts, tcs, c_prev, dhs), reverse=True)
  h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)
  t, b, hidden = h_prev.shape
  dw_h = h_prev.reshape(t * b, hidden).T @ dzs.reshape(t * b, -1)
  return (dh0, dc0), dzs, dw_h


lstm_scan.defvjp(lambda carry, x_gates, w_h: _lstm_forward(carry, x_gates, w_h), _lstm_bwd)


@jax.custom_vjp
def linear_cross_entropy(x, w, b, targets, weights):
  """The weighted cross-entropy of the logits ``x wᵀ + b`` — x (..., D), w (V, D), b (V,),
  integer ``targets`` and ``weights`` of x's leading shape — and where each target is the top
  logit: (Σ weights · −log softmax(logits)[targets], correct (...) as 0/1, a tie counts).

  Differentiated, the forward pass takes the logits' gradient (weights · (softmax − one-hot))
  and its two products (x's gradient and w's) while the logits are at hand, and keeps only
  those: the backward pass scales them by the loss's cotangent. Autodiff of a rematerialised
  readout instead computes the (rows × V) logits a second time in the backward pass (four
  vocabulary-sized matmuls, not three), and without rematerialisation it keeps the logits
  for the backward pass. The sequence autoencoder's readout (vocabulary 4,000, 512 rows):
  15.5 → 11.2 ms for its value and gradients (BENCHMARKS.md, "Sequence autoencoder").
  """
  return _ce_forward(x, w, b, targets, weights)[0]


def token_nll(logits, targets):
  """Per row: −log softmax(logits)[target] and whether the target is the top logit (0/1, a
  tie counts), from one max over the last axis (an argmax is a second, (value, index),
  reduction: 10% of the sequence autoencoder's step); and exp(logits − max), its sum."""
  top = lax.stop_gradient(jnp.max(logits, axis=-1))
  e = jnp.exp(logits - top[..., None])
  total = jnp.sum(e, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return top + jnp.log(total) - picked, (picked >= top).astype(logits.dtype), e, total


def _ce_forward(x, w, b, targets, weights):
  nll, correct, e, total = token_nll(x @ w.T + b, targets)
  return (jnp.sum(weights * nll), correct), (e, total, nll)


def _ce_fwd(x, w, b, targets, weights):
  out, (e, total, nll) = _ce_forward(x, w, b, targets, weights)
  hot = jax.nn.one_hot(targets, w.shape[0], dtype=e.dtype)
  g = e * (weights / total)[..., None] - hot * weights[..., None]  # d loss / d logits
  rows = g.reshape(-1, g.shape[-1])
  dw = rows.T @ x.reshape(-1, x.shape[-1])
  return out, (g @ w, dw, jnp.sum(rows, axis=0), nll, targets)


def _ce_bwd(residuals, cotangents):
  dx, dw, db, nll, targets = residuals
  ct = cotangents[0]  # ``correct`` is a step function: no gradient
  return (ct * dx, ct * dw, ct * db, np.zeros(targets.shape, jax.dtypes.float0), ct * nll)


linear_cross_entropy.defvjp(_ce_fwd, _ce_bwd)
