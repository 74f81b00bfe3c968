"""Recurrent sequence autoencoders for text (Dai & Le 2015): family ``rnn``.

Inputs are token ids ``(batch, max_len)`` (0 = padding; each sequence ends with
an end token). The encoder is ``block_0`` embedding → ``block_1`` LSTM or GRU
→ its last hidden state (→ ``block_2`` dense to ``code_dim`` when > 0); the
decoder starts from the code and predicts each token from the previous ones
(teacher forcing). The classifier is the same encoder + a head.

Time steps run inside one ``lax.scan`` in chunks of ``model.chunk`` steps; a chunk
wholly past the batch's longest sequence is skipped (``lax.cond``). The training loss
goes further (:func:`by_width`): it cuts the batch to the smallest static width that
holds its longest sentence and runs every step of it ungated (``gated=False``), and with
length-bucketed batches (see :mod:`aetl_jax.engine.loop`) short phrases do not pay for
the longest sentence. The decoder's vocabulary projection and per-token loss run inside
the chunks, so the ``(batch, max_len, vocab)`` logits are never kept; the training loss
(``weights=``) takes the projection's gradient in the same pass
(:func:`aetl_jax.models.kernels.linear_cross_entropy`).
"""

from __future__ import annotations

import functools
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from aetl_jax.models.capabilities import Can
from aetl_jax.models.family import DROPOUT, FAMILIES
from aetl_jax.models.kernels import linear_cross_entropy, lstm_scan, token_nll
from aetl_jax.core.registry import Key

PAD, UNK, BOS, EOS, MASK = 0, 1, 2, 3, 4
CELLS = ("lstm", "gru")


def lengths_of(tokens):
  """Number of non-padding tokens of each sequence."""
  return jnp.sum(tokens != PAD, axis=-1).astype(jnp.int32)


def _gru(h, x_gates, h_gates):
  xr, xz, xn = jnp.split(x_gates, 3, axis=-1)
  hr, hz, hn = jnp.split(h_gates, 3, axis=-1)
  r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
  n = jnp.tanh(xn + r * hn)
  return (1.0 - z) * n + z * h


def chunked_scan(fn, carry, xs, active):
  """``lax.scan`` of ``fn(carry, x_chunk) -> (carry, y_chunk)`` over chunks of a time-major
  ``xs`` (leading axis: chunks); chunk ``k`` runs only where ``active[k]`` (the carry passes
  through and its outputs are zeros otherwise)."""
  x0 = jax.tree.map(lambda a: a[0], xs)
  y_shape = jax.eval_shape(fn, carry, x0)[1]

  def body(carry, inp):
    on, x = inp
    skip = lambda c, _: (c, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), y_shape))
    return lax.cond(on, fn, skip, carry, x)

  return lax.scan(body, carry, (active, xs))


def _to_chunks(x, chunk: int):
  """(batch, T, ...) → (T // chunk, chunk, batch, ...), time-major, T padded to a multiple."""
  t = x.shape[1]
  n = -(-t // chunk)
  x = jnp.pad(x, [(0, 0), (0, n * chunk - t)] + [(0, 0)] * (x.ndim - 2))
  x = jnp.moveaxis(x, 1, 0)
  return x.reshape(n, chunk, *x.shape[1:])


def _from_chunks(y, t: int):
  """Inverse of :func:`_to_chunks` for outputs: → (batch, T, ...); one value per chunk
  (a chunk's loss) stays as it is, (chunks,)."""
  if y.ndim == 1:
    return y
  y = y.reshape(-1, *y.shape[2:])[:t]
  return jnp.moveaxis(y, 0, 1)


class Recurrent(nn.Module):
  """One LSTM or GRU layer over time-major chunks; ``readout(h_chunk, x_chunk)`` maps the
  hidden states of a chunk to its outputs inside the chunk (default: the states)."""

  hidden: int
  cell: str = "lstm"
  chunk: int = 4

  @nn.compact
  def __call__(self, x, longest, carry=None, readout=None, extra=None):
    """x: (batch, T, features); ``longest``: the batch's longest sequence (chunks past it are
    skipped; None: every step runs, one scan without gating). Returns (final carry,
    outputs (batch, T, ...))."""
    k = 4 if self.cell == "lstm" else 3
    w_in = self.param("input_kernel", nn.initializers.lecun_normal(), (x.shape[-1], k * self.hidden))
    w_h = self.param("recurrent_kernel", nn.initializers.orthogonal(), (self.hidden, k * self.hidden))
    b = self.param("bias", nn.initializers.zeros, (k * self.hidden,))
    batch = x.shape[0]
    if carry is None:
      zeros = jnp.zeros((batch, self.hidden), x.dtype)
      carry = (zeros, zeros) if self.cell == "lstm" else zeros
    readout = readout or (lambda h, _: h)
    t = x.shape[1]
    chunk = t if longest is None else min(self.chunk, t)
    xs = (_to_chunks(x, chunk), jax.tree.map(lambda e: _to_chunks(e, chunk), extra))

    def run_chunk(carry, inp):
      x_chunk, e_chunk = inp
      x_gates = x_chunk @ w_in + b  # the chunk's input projection in one matmul

      if self.cell == "lstm":  # a hand-written backward (models.kernels.lstm_scan)
        carry, hs = lstm_scan(carry, x_gates, w_h)
      else:
        def step(h, xg):
          h = _gru(h, xg, h @ w_h)
          return h, h

        carry, hs = lax.scan(step, carry, x_gates)
      return carry, readout(hs, e_chunk)

    if longest is None:
      carry, ys = run_chunk(carry, jax.tree.map(lambda a: a[0], xs))
      ys = jax.tree.map(lambda y: y[None], ys)
    else:
      active = jnp.arange(xs[0].shape[0]) * chunk < longest
      carry, ys = chunked_scan(run_chunk, carry, xs, active)
    return carry, jax.tree.map(lambda y: _from_chunks(y, t), ys)


def _longest(tokens, gated: bool = True):
  """The batch's longest sequence, or None (no gating) where ``gated`` is False."""
  return jnp.max(lengths_of(tokens)) if gated else None


class RNNEncoder(nn.Module):
  """Token ids → the last hidden state (→ a dense code when ``code_dim`` > 0)."""

  vocab_size: int
  embed_dim: int = 128
  hidden: int = 256
  cell: str = "lstm"
  code_dim: int = 0
  dropout_rate: float = 0.0
  chunk: int = 4

  @nn.compact
  def __call__(self, tokens, *, train: bool = False, gated: bool = True):
    """``gated``: skip the chunks past the batch's longest sequence (False: every step runs,
    for batches already cut to their longest, :func:`by_width`)."""
    tokens = tokens.astype(jnp.int32)
    x = nn.Embed(self.vocab_size, self.embed_dim, name="block_0")(tokens)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    _, hs = Recurrent(self.hidden, self.cell, self.chunk, name="block_1")(
        x, _longest(tokens, gated))
    last = jnp.maximum(lengths_of(tokens) - 1, 0)
    h = jnp.take_along_axis(hs, last[:, None, None], axis=1)[:, 0]
    if self.code_dim:
      h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
      h = nn.Dense(self.code_dim, name="block_2")(h)
    return h


class RNNDecoder(nn.Module):
  """Code → an initial state; predicts token t from tokens < t (teacher forcing).

  With ``tie`` the output layer reuses the decoder's embedding table (Press & Wolf 2017):
  logits = (h W) Eᵀ + b, so the vocabulary projection costs ``embed_dim`` rather than
  ``hidden`` multiply-adds per word, the largest term of the step on a CPU.
  """

  vocab_size: int
  embed_dim: int = 128
  hidden: int = 256
  cell: str = "lstm"
  chunk: int = 4
  tie: bool = True

  @nn.compact
  def __call__(self, code, targets, *, weights=None, logits: bool = False,
               train: bool = False, gated: bool = True):
    """Per-token (negative log-likelihood, correct) of ``targets``, each (batch, T); with
    ``weights`` (batch, T) the loss Σ weights · nll instead of the per-token values (its
    gradient through :func:`~aetl_jax.models.kernels.linear_cross_entropy`, the training
    path) and correct; with ``logits=True`` the teacher-forced logits (batch, T, vocab)
    instead (for evaluation). ``gated``: as :class:`RNNEncoder`'s."""
    del train
    targets = targets.astype(jnp.int32)
    inputs = jnp.concatenate([jnp.full_like(targets[:, :1], BOS), targets[:, :-1]], axis=1)
    s = nn.Dense((2 if self.cell == "lstm" else 1) * self.hidden, name="init_state")(code)
    carry = ((jnp.tanh(s[:, : self.hidden]), s[:, self.hidden:]) if self.cell == "lstm"
             else jnp.tanh(s))
    table = self.param("embedding", nn.initializers.normal(1.0), (self.vocab_size, self.embed_dim))
    if self.tie:
      proj = self.param("out_proj", nn.initializers.lecun_normal(), (self.hidden, self.embed_dim))
      features, out_w = (lambda h: h @ proj), table
    else:
      w = self.param("out_kernel", nn.initializers.lecun_normal(), (self.hidden, self.vocab_size))
      features, out_w = (lambda h: h), w.T
    b = self.param("out_bias", nn.initializers.zeros, (self.vocab_size,))

    def weighted_loss(h, extra):  # one chunk, time-major: h (chunk, batch, hidden)
      y, wt = extra
      return linear_cross_entropy(features(h), out_w, b, y, wt)

    # Rematerialised: the backward pass keeps the chunk's hidden states, not its
    # (chunk, batch, vocab) logits.
    @jax.checkpoint
    def per_token(h, y):  # one chunk, time-major: h (chunk, batch, hidden), y (chunk, batch)
      out = features(h) @ out_w.T + b
      return out if logits else token_nll(out, y)[:2]

    rnn = Recurrent(self.hidden, self.cell, self.chunk, name="rnn")
    weighted = weights is not None and not logits
    readout, extra = ((weighted_loss, (targets, weights.astype(jnp.float32))) if weighted
                      else (per_token, targets))
    out = rnn(jnp.take(table, inputs, axis=0), _longest(targets, gated), carry, readout,
              extra)[1]
    return (jnp.sum(out[0]), out[1]) if weighted else out


class SequenceAutoencoder(nn.Module):
  """Encoder → code → teacher-forced decoder. ``inputs`` (corrupted tokens, for the denoising
  variant) feed the encoder; the decoder always predicts the clean ``tokens``."""

  CAN: ClassVar[Can] = Can(reconstruct=True, init="reconstruct")

  encoder: nn.Module
  decoder: nn.Module

  def __call__(self, tokens, *, inputs=None, weights=None, train: bool = False,
               gated: bool = True):
    """Per-token (negative log-likelihood, correct), each (batch, T); pads included (mask
    them with ``tokens != PAD``). With ``weights`` (batch, T): (Σ weights · nll, correct).
    ``gated``: as :class:`RNNEncoder`'s."""
    code = self.encoder(tokens if inputs is None else inputs, train=train, gated=gated)
    return self.decoder(code, tokens, weights=weights, train=train, gated=gated)

  def encode(self, tokens, *, train: bool = False):
    return self.encoder(tokens, train=train)

  def reconstruct(self, tokens):
    """Teacher-forced logits (batch, T, vocab)."""
    return self.decoder(self.encoder(tokens), tokens, logits=True)


def masked_mean(values, tokens):
  """Mean of per-token ``values`` over the non-padding positions of ``tokens``."""
  mask = (tokens != PAD).astype(values.dtype)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _check(m, shape) -> None:
  if len(shape) != 1:
    raise ValueError(f"family 'rnn' reads token ids (max_len,), got inputs of shape {tuple(shape)}; "
                     f"use a text dataset (tsv:PATH, glue/sst2, imdb_reviews)")
  if m.cell not in CELLS:
    raise ValueError(f"model.cell {m.cell!r} is unknown; valid: {', '.join(CELLS)}")
  for key in ("vocab_size", "embed_dim", "hidden", "chunk"):
    if int(m[key]) < 1:
      raise ValueError(f"model.{key} must be >= 1, got {m[key]}")
  if m.vocab_size <= MASK:
    raise ValueError(f"model.vocab_size must exceed the {MASK + 1} special tokens, got {m.vocab_size}")


def _decoder(m, shape):
  del shape
  return RNNDecoder(vocab_size=m.vocab_size, embed_dim=m.embed_dim, hidden=m.hidden,
                    cell=m.cell, chunk=m.chunk, tie=m.tie_output)


@FAMILIES.register("rnn", input="tokens", decoder=_decoder, check=_check,
                   defaults=dict(
                       vocab_size=Key(8000, "most tokens of the WordPiece vocabulary"),
                       embed_dim=Key(128, "token embedding size"),
                       hidden=Key(256, "recurrent state size"),
                       cell=Key("lstm", "lstm or gru"),
                       code_dim=Key(0, "size of the code (0: the trunk's own features)"),
                       dropout_rate=DROPOUT,
                       chunk=Key(4, "time steps per chunk (chunks past the longest sequence are skipped)"),
                       tie_output=Key(True, "tie the output layer to the embedding")))
def rnn(m, code_dim: int):
  """Token ids → ``block_0`` embedding → ``block_1`` LSTM/GRU (→ ``block_2`` dense code)."""
  return RNNEncoder(vocab_size=m.vocab_size, embed_dim=m.embed_dim, hidden=m.hidden, cell=m.cell,
                    code_dim=code_dim, dropout_rate=m.dropout_rate, chunk=m.chunk)


def widths(max_len: int) -> tuple[int, ...]:
  """The static widths a batch is cut to: 4, 8, 12, 16, then powers of two and 1.5 times
  them (24, 32, 48, 64, 96, ...), and ``max_len``: a batch pays at most 1.5 times its
  longest sentence above 16 tokens."""
  out, w = [], 4
  while w < max_len:
    out.append(w)
    w = w + 4 if w < 16 else w * 3 // 2 if w & (w - 1) == 0 else w * 4 // 3
  return tuple(out) + (max_len,)


def _no_gradient(x):
  """The zero cotangent of an input that takes none (tokens, random keys, floats)."""
  x = jnp.asarray(x)
  if jnp.issubdtype(x.dtype, jnp.inexact):
    return jnp.zeros_like(x)
  return np.zeros(x.shape, jax.dtypes.float0)


def by_width(fn, tokens, params, *args):
  """``fn(tokens[:, :w], params, *args) -> (loss, metrics)`` for the smallest of
  :func:`widths` that holds the batch's longest sequence, chosen at run time by
  ``lax.switch`` among static shapes; differentiable in ``params`` (the loss only: the
  metrics carry no gradient).

  Autodiff of a switch keeps the residuals of every branch, zeros for those not taken (with
  16 branches of 4 tokens the zero-filled buffers cost more than the finer widths saved).
  Differentiated, each branch here takes its own loss's gradient (``jax.value_and_grad``
  inside the branch, a ``custom_vjp``), so only a parameter-shaped gradient leaves the
  switch, and the backward pass scales it by the loss's cotangent (a gradient for every
  leaf of ``params``, frozen ones included: pass only what trains). Under ``vmap`` the switch becomes a select and
  every branch runs: correct, not faster.
  """
  ws = widths(tokens.shape[1])

  def switch(branch, tokens, *rest):
    index = jnp.searchsorted(jnp.asarray(ws), _longest(tokens))
    return lax.switch(index, [functools.partial(branch, w) for w in ws], tokens, *rest)

  @jax.custom_vjp
  def run(params, tokens, *args):
    return switch(lambda w, t, p, *a: fn(t[:, :w], p, *a), tokens, params, *args)

  def run_fwd(params, tokens, *args):
    def branch(w, t, p, *a):
      grad_fn = jax.value_and_grad(lambda p: fn(t[:, :w], p, *a), has_aux=True)
      return grad_fn(p)
    out, grads = switch(branch, tokens, params, *args)
    return out, (grads, tokens, args)

  def run_bwd(residuals, cotangents):
    grads, tokens, args = residuals
    ct = cotangents[0]
    return (jax.tree.map(lambda g: ct * g, grads), _no_gradient(tokens),
            *jax.tree.map(_no_gradient, args))

  run.defvjp(run_fwd, run_bwd)
  return run(params, tokens, *args)
