"""Input pipeline throughput next to training throughput (MNIST-size data).

    python -m aetl_jax.bench.data [--idx ../shared/datasets/mnist]

Measures examples/s of: the in-memory path (shuffle + gather of every batch
of an epoch on the device, what the scan runner does besides the step), the
streaming path (tf.data shuffle/batch/prefetch + transfer to the device), and
dense-autoencoder pretraining on the in-memory path (scan runner). The input
pipeline must be several times faster than training so that data never bounds
a step. Uses the real MNIST IDX files when ``--idx`` is given, else random
28×28 pixels of the same size.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--idx", help="a folder with MNIST IDX files")
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  if args.idx:
    from aetl_jax.data.idx import load_idx_split
    images = load_idx_split(args.idx, "train")[0].astype(np.float32) / 255.0
  else:
    images = np.random.default_rng(0).random((60000, 28, 28, 1), dtype=np.float32)
  bs, repeats = args.batch, args.repeats
  usable = (len(images) // bs) * bs
  print(f"backend={jax.default_backend()} examples={len(images)} batch={bs}")
  data = {"image": jax.device_put(images)}
  t_mem = in_memory_seconds(data, bs, repeats)
  t_stream, stream_first = streaming_seconds(images, bs, repeats)
  train_rate = usable / training_seconds(data, images[:1], bs, repeats)
  print(f"{'path':<44} {'examples/s':>12} {'x training':>11}")
  for name, t in (("in-memory (device shuffle + gather)", t_mem),
                  ("streaming (tf.data + prefetch to device)", t_stream)):
    rate = usable / t
    print(f"{name:<44} {rate:12.0f} {rate / train_rate:10.1f}x")
  print(f"{'dense AE 784-256-128-32 training (scan)':<44} {train_rate:12.0f} {1.0:10.1f}x")
  print(f"(first streaming epoch, including tf.data start-up: {stream_first:.2f} s)")


def in_memory_seconds(data, bs: int, repeats: int) -> float:
  """An epoch of the runners' own on-device shuffle and gather, nothing trained."""
  from aetl_jax.bench.timing import time_calls
  from aetl_jax.engine.loop import _Reader

  @jax.jit
  def gather_epoch(data, rng):
    reader = _Reader(None, bs)
    (idx,), _ = reader.plan(rng, data)
    return jax.lax.map(lambda i: jnp.sum(reader.gather(data, (i,))["image"]), idx)

  return time_calls(lambda: gather_epoch(data, jax.random.PRNGKey(0)), repeats=repeats)["median_s"]


def streaming_seconds(images, bs: int, repeats: int) -> tuple[float, float]:
  """(seconds of a streamed epoch, seconds of the first one with tf.data's start-up)."""
  from aetl_jax.bench.timing import time_calls
  from aetl_jax.data.streaming import array_stream, numpy_batches, prefetch_to_device

  def stream_epoch():
    last = None
    for batch in prefetch_to_device(numpy_batches(array_stream({"image": images}, batch_size=bs,
                                                              seed=0))):
      last = batch["image"]
    return last

  start = time.perf_counter()
  stream_epoch()
  first = time.perf_counter() - start
  return time_calls(stream_epoch, repeats=repeats, warmup=0)["median_s"], first


def training_seconds(data, example, bs: int, repeats: int) -> float:
  """An epoch of the dense AE's training (scan runner) on ``data``."""
  from aetl_jax.bench.timing import time_calls
  from aetl_jax.core.optim import make_optimizer
  from aetl_jax.engine.loop import make_epoch_fn
  from aetl_jax.engine.state import TrainState
  from aetl_jax.engine.step import make_train_step
  from aetl_jax.models.autoencoder import Autoencoder
  from aetl_jax.models.mlp import MLPDecoder, MLPEncoder
  from aetl_jax.objectives.reconstruction import make_reconstruction_loss

  model = Autoencoder(MLPEncoder((256, 128), 32), MLPDecoder((28, 28, 1), (128, 256)))
  params = model.init(jax.random.PRNGKey(0), example)["params"]
  tx = make_optimizer(learning_rate=1e-3)
  epoch = make_epoch_fn(make_train_step(make_reconstruction_loss(model), tx),
                        feed=(("images", "source", bs),))
  holder = {"state": TrainState.create(params, tx)}

  def train():
    holder["state"], m = epoch(holder["state"], {"source": data}, jax.random.PRNGKey(1))
    return m

  return time_calls(train, repeats=repeats)["median_s"]


if __name__ == "__main__":
  from aetl_jax.core.heap import start
  start()
  main()
