"""The Ladder network (Rasmus et al. 2015; Pezeshki et al. 2016): a dense classifier whose
decoder denoises every layer of a corrupted encoder pass, guided by lateral connections.

Encoder layer ``l`` (``encoder/block_<l>``): ``z_pre = W h``, batch-normalised without an
affine map (``z``), Gaussian noise of ``noise_std`` added in the corrupted pass, then
``h = relu(z + beta)`` (the top layer: logits ``gamma * (z + beta)``). The clean pass keeps
``z`` and the batch statistics; evaluation normalises with running averages of the clean
statistics (``running_mean`` / ``running_var`` leaves, see :mod:`aetl_jax.core.statistics`).

Decoder layer ``l`` (``decoder/block_<l>``, top to input): ``u`` is the batch-normalised
corrupted top output (``l = L``) or ``V ẑ_{l+1}``, and the combinator ``g(z̃_l, u)`` gives
``ẑ_l``: the ``'gauss'`` combinator of Rasmus et al. (ten per-unit parameters) or the
``'amlp'`` one of Pezeshki et al. (a per-unit MLP of ``z̃``, ``u`` and ``z̃·u``). The
denoising cost of layer ``l`` compares ``ẑ_l``, normalised with the clean pass's batch
statistics, to the clean ``z_l``. The ``'gamma'`` variant (Γ-model) keeps the top layer's
denoising only.

Labelled and unlabelled batches are normalised with their own batch statistics (as in the
reference implementations); the decoder runs on the unlabelled batch.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from aetl_jax.models.capabilities import Can

COMBINATORS = ("gauss", "amlp")
VARIANTS = ("full", "gamma")
EPS = 1e-6
_dense_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")


def _moments(z):
  mean = jnp.mean(z, 0)
  return mean, jnp.sqrt(jnp.var(z, 0) + EPS)


def _normalise(z):
  mean, std = _moments(z)
  return (z - mean) / std


class EncoderBlock(nn.Module):
  """One encoder layer; ``mode``: 'eval' (running statistics), 'clean' (batch statistics,
  running averages updated when mutable) or 'noisy' (batch statistics + noise)."""

  features: int
  top: bool = False
  momentum: float = 0.01

  @nn.compact
  def __call__(self, h, mode: str, noise_std: float = 0.0, rng=None):
    kernel = self.param("kernel", _dense_init, (h.shape[-1], self.features))
    beta = self.param("beta", nn.initializers.zeros, (self.features,))
    gamma = self.param("gamma", nn.initializers.ones, (self.features,)) if self.top else None
    frozen = self.has_variable("frozen_stats", "running_mean")
    col = "frozen_stats" if frozen else "batch_stats"
    ra_mean = self.variable(col, "running_mean", lambda: jnp.zeros((self.features,)))
    ra_var = self.variable(col, "running_var", lambda: jnp.ones((self.features,)))
    z_pre = h @ kernel
    if mode == "eval" or frozen:
      mean, std = ra_mean.value, jnp.sqrt(ra_var.value + EPS)
    else:
      mean, std = _moments(z_pre)
      if mode == "clean" and self.is_mutable_collection("batch_stats") and not self.is_initializing():
        m = self.momentum
        ra_mean.value = (1 - m) * ra_mean.value + m * mean
        ra_var.value = (1 - m) * ra_var.value + m * jnp.var(z_pre, 0)
    z = (z_pre - mean) / std
    if mode == "noisy":
      z = z + noise_std * jax.random.normal(rng, z.shape)
    h = gamma * (z + beta) if self.top else nn.relu(z + beta)
    return z, mean, std, h


class Combinator(nn.Module):
  """``ẑ = g(z̃, u)`` per unit."""

  kind: str = "gauss"
  hidden: int = 4

  @nn.compact
  def __call__(self, z_noisy, u):
    n = z_noisy.shape[-1]
    if self.kind == "gauss":
      init = {1: 1.0, 6: 1.0}  # a2 and a7 (0-based 1 and 6) start at 1, the others at 0
      a = [self.param(f"a{i + 1}", nn.initializers.constant(init.get(i, 0.0)), (n,))
           for i in range(10)]
      mu = a[0] * jax.nn.sigmoid(a[1] * u + a[2]) + a[3] * u + a[4]
      v = a[5] * jax.nn.sigmoid(a[6] * u + a[7]) + a[8] * u + a[9]
      return (z_noisy - mu) * v + mu
    # AMLP (Pezeshki et al. 2016): per unit, [z̃, u, z̃u] → leaky-relu hidden → ẑ.
    w1 = self.param("w1", nn.initializers.normal(0.1), (n, 3, self.hidden))
    b1 = self.param("b1", nn.initializers.zeros, (n, self.hidden))
    w2 = self.param("w2", nn.initializers.normal(0.1), (n, self.hidden))
    b2 = self.param("b2", nn.initializers.zeros, (n,))
    skip = self.param("skip", nn.initializers.ones, (n,))  # starts as the identity on z̃
    x = jnp.stack([z_noisy, u, z_noisy * u], -1)
    hidden = nn.leaky_relu(jnp.einsum("bnk,nkh->bnh", x, w1) + b1, 0.1)
    return skip * z_noisy + jnp.einsum("bnh,nh->bn", hidden, w2) + b2


class LadderEncoder(nn.Module):
  """The encoder (``block_0`` … ``block_L``), run in one of the modes of :class:`EncoderBlock`."""

  sizes: Sequence[int]
  noise_std: float = 0.3

  @nn.compact
  def __call__(self, x, mode: str = "eval", rng=None):
    """(per level 0..L: (z, batch mean, batch std), the top layer's logits)."""
    x = x.reshape((x.shape[0], -1))
    rngs = list(jax.random.split(rng, len(self.sizes) + 1)) if rng is not None else [None] * (
        len(self.sizes) + 1)
    h = x + self.noise_std * jax.random.normal(rngs[0], x.shape) if mode == "noisy" else x
    levels = [(h, jnp.zeros(x.shape[-1]), jnp.ones(x.shape[-1]))]
    for i, (n, r) in enumerate(zip(self.sizes, rngs[1:])):
      z, mean, std, h = EncoderBlock(n, top=i == len(self.sizes) - 1, name=f"block_{i}")(
          h, mode, self.noise_std, r)
      levels.append((z, mean, std))
    return levels, h


class DecoderBlock(nn.Module):
  """Level ``l`` of the decoder: ``u`` from the level above (``V ẑ_{l+1}``, batch-normalised;
  or the normalised top output itself), then the combinator."""

  combinator: str = "gauss"
  vertical: bool = True

  @nn.compact
  def __call__(self, z_noisy, above):
    if self.vertical:
      above = nn.Dense(z_noisy.shape[-1], use_bias=False, kernel_init=_dense_init, name="v")(above)
    return Combinator(self.combinator, name="g")(z_noisy, _normalise(above))


class LadderDecoder(nn.Module):
  """Denoises every level, top to input (``block_L`` … ``block_0``; the Γ-model: the top)."""

  combinator: str = "gauss"
  variant: str = "full"

  @nn.compact
  def __call__(self, noisy_levels, top_output):
    """{level: ẑ_level}."""
    top = len(noisy_levels) - 1
    out = {top: DecoderBlock(self.combinator, vertical=False, name=f"block_{top}")(
        noisy_levels[top][0], jax.nn.softmax(top_output))}
    if self.variant == "full":
      for level in range(top - 1, -1, -1):
        out[level] = DecoderBlock(self.combinator, name=f"block_{level}")(
            noisy_levels[level][0], out[level + 1])
    return out


class LadderNetwork(nn.Module):
  """Dense ladder ``input → widths → num_classes``; ``__call__`` gives clean logits.
  ``{'encoder': {'block_<l>'}, 'decoder': {'block_<l>'}}``."""

  CAN: ClassVar[Can] = Can(init="init_all")

  widths: Sequence[int] = (1000, 500, 250, 250, 250)
  num_classes: int = 10
  noise_std: float = 0.3
  combinator: str = "gauss"
  variant: str = "full"

  def setup(self):
    self.encoder = LadderEncoder((*self.widths, self.num_classes), self.noise_std)
    self.decoder = LadderDecoder(self.combinator, self.variant)

  def __call__(self, x, *, train: bool = False):
    """Clean logits with the running statistics (inference)."""
    del train
    return self.encoder(x, "eval")[1]

  def encode(self, x, *, train: bool = False):
    """The clean top layer's logits (the ladder's code is its class layer)."""
    return self(x, train=train)

  def costs(self, labelled, unlabelled, rng, *, train: bool = True):
    """(corrupted logits of ``labelled``, {level: denoising cost} of ``unlabelled``); the
    clean pass over ``unlabelled`` updates the running statistics when they are mutable."""
    del train
    r_lab, r_unl = jax.random.split(rng)
    noisy_logits = self.encoder(labelled, "noisy", r_lab)[1]
    noisy, top = self.encoder(unlabelled, "noisy", r_unl)
    clean, _ = self.encoder(unlabelled, "clean")
    costs = {}
    for level, z_hat in self.decoder(noisy, top).items():
      z, mean, std = clean[level]
      costs[level] = jnp.mean(jnp.sum(((z_hat - mean) / std - z) ** 2, -1)) / z.shape[-1]
    return noisy_logits, costs

  def init_all(self, x):
    """Touches every parameter (for ``init``)."""
    return self.costs(x, x, jax.random.PRNGKey(0))
