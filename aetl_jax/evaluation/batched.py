"""Batched, padded application of a jitted function over a whole array.

Padding every batch to the same size means one compilation per function,
whatever the dataset size, and every example is counted exactly once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from aetl_jax.engine.launchers import DATA_AXIS


def batched_apply(fn, params, x, *, batch_size: int = 1024, launcher=None):
  """Returns ``concat(fn(params, batch))`` over ``x`` with the pad rows dropped.

  With a multi-device ``launcher`` each padded batch is sharded over its
  devices (the jitted ``fn`` then runs data-parallel); the batch size is
  rounded up to a multiple of the device count.
  """
  n = x.shape[0]
  if n == 0:
    raise ValueError("batched_apply got an empty array")
  bs = min(batch_size, n)
  sharding = None
  if launcher is not None and launcher.num_devices > 1:
    devices = launcher.num_devices
    bs = -(-bs // devices) * devices
    sharding = NamedSharding(launcher.mesh, P(DATA_AXIS))
    params = jax.device_put(params, NamedSharding(launcher.mesh, P()))
  outs = []
  for start in range(0, n, bs):
    chunk = x[start:start + bs]
    pad = bs - chunk.shape[0]
    if pad:
      chunk = jnp.concatenate([chunk, jnp.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
    if sharding is not None:
      chunk = jax.device_put(chunk, sharding)
    out = fn(params, chunk)
    outs.append(jax.tree.map(lambda o: o[: bs - pad], out))
  return jax.tree.map(lambda *o: jnp.concatenate(o), *outs)


def accuracy(logits, labels) -> float:
  return float(np.mean(np.asarray(jnp.argmax(logits, -1)) == np.asarray(labels)))
