"""Source/target domains from named datasets (see ``data.sources``).

``data.source == data.target``: one dataset, disjoint stratified splits of its
train split into an unlabelled source part and a labelled target pool; the
test split (or, when the dataset has none, a stratified carve of train) is
the test set. Different names: the source dataset's train images are the
unlabelled source; the target's train split is the pool. Domains of different
shapes are brought to ``data.common_shape`` (pad or resize, grey↔RGB).
"""

from __future__ import annotations

import logging

import numpy as np

from aetl_jax.data import preprocessing
from aetl_jax.data.sources import Dataset, load_dataset, prepare_builder
from aetl_jax.data.streaming import tfds_stream
from aetl_jax.data.text import build_text_transfer_data, is_text
from aetl_jax.data.splits import stratified_split, subsample
from aetl_jax.data.transfer_split import TransferData, TransferSplit

log = logging.getLogger(__name__)


def build_transfer_data(d, batch_size: int = 128, *, progress: bool = True,
                        vocab_size: int = 8000) -> TransferData:
  """``d`` is the ``config.data`` section; ``batch_size`` that of a streamed source;
  ``vocab_size`` the most tokens a text source's vocabulary holds."""
  if is_text(d.target):
    return build_text_transfer_data(d, vocab_size, progress=progress)
  if is_text(d.source):
    raise ValueError(f"a text source ({d.source}) needs a text target, got {d.target!r}")
  kw = dict(data_dir=d.data_dir or None, manual_dir=d.manual_dir or None, progress=progress)
  target = load_dataset(d.target, **kw)
  source, builder = _source(d, target, kw)
  shape = preprocessing.common_shape(
      {f"source {d.source}": next(iter(source.splits.values()))[0].shape[1:],
       f"target {d.target}": next(iter(target.splits.values()))[0].shape[1:]},
      tuple(d.common_shape) or None)

  def prep(images, max_value):
    return preprocessing.to_shape(preprocessing.to_unit(images, max_value), shape, d.resize)

  (train_x, train_y), (test_x, test_y), (source_images, source_labels) = _carve(d, target, source)
  images = np.concatenate([prep(train_x, target.max_value), prep(test_x, target.max_value)])
  labels = np.concatenate([train_y, test_y]).astype(np.int32)
  split = TransferSplit(source=np.empty(0, np.int64), target_pool=np.arange(len(train_y)),
                        test=np.arange(len(train_y), len(labels)))
  description = {"source_dataset": {"name": d.source, "route": source.route},
                 "target_dataset": {"name": d.target, "route": target.route},
                 "common_shape": list(shape), "resize": d.resize,
                 "target_max_value": float(target.max_value)}
  if builder is not None:
    stream, num = _source_stream(d, builder, batch_size, shape)
    return TransferData(None, images, labels, split, target.num_classes, description,
                        source_stream=stream, num_source=num)
  source_images = prep(source_images, source.max_value)
  if d.source != d.target:
    description["pixel_statistics"] = _compare_domains(d, source_images, images[split.target_pool])
  return TransferData(source_images, images, labels, split,
                      target.num_classes, description, source_labels=source_labels,
                      source_classes=_classes(source_labels),
                      target_classes=tuple(range(target.num_classes)),
                      shared_labels=_shared(d, source_labels, target.num_classes))


# Source and target differ "strongly" when their shares of ink pixels differ by this factor.
INK_RATIO_HINT = 1.5


def _compare_domains(d, source_images, target_images) -> dict:
  """Pixel statistics of both domains as the model sees them; a one-line hint in the log when
  their ink shares differ strongly under ``data.resize`` (the common shape decides much)."""
  stats = {"source": preprocessing.ink_statistics(source_images[:20_000]),
           "target": preprocessing.ink_statistics(target_images[:20_000])}
  a, b = stats["source"]["ink_fraction"], stats["target"]["ink_fraction"]
  if min(a, b) > 0 and max(a, b) / min(a, b) > INK_RATIO_HINT:
    other = [m for m in preprocessing.RESIZE_MODES if m != d.resize]
    log.warning("data: under data.resize=%r ink covers %.0f%% of the source's (%s) pixels and "
                "%.0f%% of the target's (%s); domains this unlike each other make adaptation "
                "harder: try data.resize=%s", d.resize, 100 * a, d.source, 100 * b, d.target,
                " or ".join(repr(m) for m in other))
  return stats


def _source(d, target, kw) -> tuple:
  """(the source dataset, its prepared TFDS builder when it is streamed from disk, else None).
  A streamed source's in-memory stand-in holds one zero image, for its shape."""
  streamed = d.get("stream_source", False)
  if streamed and d.source == d.target:
    raise ValueError("data.stream_source needs a source dataset other than the target (a "
                     "same-dataset split is carved in memory)")
  if not streamed:
    return (target if d.source == d.target else load_dataset(d.source, **kw)), None
  builder, route = prepare_builder(d.source, splits=("train",), **kw)
  sample = next(iter(builder.as_dataset(split="train").take(1)))["image"].shape
  stand_in = Dataset(d.source, {"train": (np.zeros((1, *sample), np.uint8), None)}, 255.0,
                     builder.info.features["label"].num_classes, route + " (streamed from disk)")
  return stand_in, builder


def _carve(d, target, source) -> tuple:
  """((pool images, labels), (test images, labels), (source images, labels)), raw: the
  target's test split (carved from its train split when it has none), the same-dataset
  source/pool split, and the ``max_*`` caps. The source's images are None when it is
  streamed; its labels None when it has none."""
  train_x, train_y = target.splits["train"]
  if "test" in target.splits:
    test_x, test_y = target.splits["test"]
  else:
    keep, test = stratified_split(train_y, d.test_fraction, d.split_seed)
    (train_x, train_y), (test_x, test_y) = (train_x[keep], train_y[keep]), (train_x[test], train_y[test])
  test_sel = subsample(len(test_y), d.max_test, d.split_seed + 2)
  test_x, test_y = test_x[test_sel], test_y[test_sel]
  source_labels = None
  if d.source == d.target and d.source_fraction == 0:  # the source is the pool itself
    source_images, source_labels = train_x, train_y
  elif d.source == d.target:
    pool_rel, source_rel = stratified_split(train_y, d.source_fraction, d.split_seed + 1)
    source_images, source_labels = train_x[source_rel], train_y[source_rel]
    train_x, train_y = train_x[pool_rel], train_y[pool_rel]
  elif d.get("stream_source", False):
    source_images = None
  else:
    source_images, source_labels = source.splits["train"]
  if source_images is not None:
    keep = subsample(len(source_images), d.max_source, d.split_seed + 3)
    source_images = source_images[keep]
    source_labels = None if source_labels is None else np.asarray(source_labels, np.int32)[keep]
  pool_sel = subsample(len(train_y), d.max_pool, d.split_seed + 4)
  return ((train_x[pool_sel], train_y[pool_sel]), (test_x, test_y),
          (source_images, source_labels))


def _source_stream(d, builder, batch_size: int, shape) -> tuple:
  """(a function of the seed streaming the source's batches from disk, the number of
  source examples this process reads per epoch)."""
  import jax
  try:
    total = builder.info.splits["train"].num_examples
  except KeyError:  # no split metadata (e.g. mocked data): count once
    total = int(builder.as_dataset(split="train").reduce(0, lambda n, _: n + 1))

  def stream(seed):
    return tfds_stream(builder, "train", batch_size=batch_size, seed=seed, shape=shape,
                       resize=d.resize)
  return stream, total // jax.process_count()


def _classes(labels) -> tuple:
  return () if labels is None else tuple(int(c) for c in np.unique(labels))


def _shared(d, source_labels, num_target_classes: int) -> bool:
  """Whether source and target share one label space: the same dataset, or
  ``data.label_space='shared'`` (checked: the source's classes must be the target's)."""
  mode = d.get("label_space", "auto")
  if mode == "different" or source_labels is None:
    return False
  if mode == "auto":
    return d.source == d.target
  source = _classes(source_labels)
  if source != tuple(range(num_target_classes)):
    raise ValueError(f"data.label_space='shared' but the source {d.source} has classes "
                     f"{list(source)} and the target {d.target} has {list(range(num_target_classes))}")
  return True
