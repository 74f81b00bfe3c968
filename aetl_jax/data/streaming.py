"""The streaming data path: tf.data batches prefetched to the device.

For datasets that do not fit in memory (or not on the device), batches come
from a ``tf.data`` pipeline (shuffle with a per-epoch seed, batch, prefetch)
over a TFDS split or over host arrays, sharded per host for multi-process
runs, and a background thread keeps ``prefetch`` batches on the device ahead
of the train step. The in-memory path (arrays placed on the device once, the
whole epoch in one compiled call) stays the fast path for small data;
:func:`choose_data_path` picks by size.
"""

from __future__ import annotations

import collections
import threading

import jax
import numpy as np

DATA_PATHS = ("auto", "memory", "stream")


def choose_data_path(requested: str, nbytes: int, limit_mb: float) -> str:
  if requested not in DATA_PATHS:
    raise ValueError(f"unknown data path {requested!r}; valid: {', '.join(DATA_PATHS)}")
  if requested != "auto":
    return requested
  return "memory" if nbytes <= limit_mb * 2 ** 20 else "stream"


def _tf():
  import tensorflow as tf  # lazily: only the streaming path needs it
  tf.config.set_visible_devices([], "GPU")  # keep TensorFlow off the accelerators
  return tf


def array_stream(arrays: dict, *, batch_size: int, seed: int, drop_remainder: bool = True,
                 shard_index: int = 0, num_shards: int = 1, shuffle_buffer: int | None = None):
  """A tf.data pipeline over host arrays, one process's shard, reshuffled per ``seed``."""
  tf = _tf()
  ds = tf.data.Dataset.from_tensor_slices(arrays)
  if num_shards > 1:
    ds = ds.shard(num_shards, shard_index)
  n = len(next(iter(arrays.values()))) // max(num_shards, 1)
  ds = ds.shuffle(shuffle_buffer or n, seed=seed, reshuffle_each_iteration=False)
  return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def tfds_stream(builder, split: str, *, batch_size: int, seed: int, max_value: float = 255.0,
                shape=None, resize: str = "pad", drop_remainder: bool = True,
                shuffle_buffer: int = 10_000):
  """``{'image'}`` batches of a prepared TFDS split, read from disk, scaled to
  [0, 1] and brought to ``shape`` (H, W, C) like ``preprocessing.to_shape``;
  each process reads its own shard of the files."""
  tf = _tf()
  import tensorflow_datasets as tfds
  read_config = tfds.ReadConfig(
      shuffle_seed=seed,
      input_context=tf.distribute.InputContext(num_input_pipelines=jax.process_count(),
                                               input_pipeline_id=jax.process_index()))
  ds = builder.as_dataset(split=split, shuffle_files=True, read_config=read_config)
  def prep(ex):
    img = tf.cast(ex["image"], tf.float32) / max_value
    if shape is not None:
      height, width, channels = shape
      if img.shape[-1] == 1 and channels == 3:
        img = tf.image.grayscale_to_rgb(img)
      elif img.shape[-1] == 3 and channels == 1:
        img = tf.image.rgb_to_grayscale(img)
      if tuple(img.shape[:2]) != (height, width):
        img = (tf.image.resize_with_crop_or_pad(img, height, width) if resize == "pad" else
               tf.clip_by_value(tf.image.resize(img, (height, width)), 0.0, 1.0))
    return {"image": img}

  ds = ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.shuffle(shuffle_buffer, seed=seed)
  return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def prefetch_to_device(iterator, size: int = 2, sharding=None):
  """Yields device arrays, keeping ``size`` batches transferred ahead (a thread)."""
  queue = collections.deque()
  lock = threading.Condition()
  done = []

  def put(batch):
    batch = jax.tree.map(np.asarray, batch)
    return jax.device_put(batch, sharding) if sharding is not None else jax.device_put(batch)

  def producer():
    try:
      for batch in iterator:
        item = put(batch)
        with lock:
          while len(queue) >= size:
            lock.wait()
          queue.append(item)
          lock.notify_all()
    finally:
      with lock:
        done.append(True)
        lock.notify_all()

  thread = threading.Thread(target=producer, daemon=True)
  thread.start()
  while True:
    with lock:
      while not queue and not done:
        lock.wait()
      if queue:
        item = queue.popleft()
        lock.notify_all()
      else:
        return
    yield item


def numpy_batches(ds):
  """tf.data → iterator of dicts of numpy arrays."""
  return ({k: np.asarray(v) for k, v in b.items()} for b in ds.as_numpy_iterator())
