"""The source/target/test layout of a same-dataset transfer experiment."""

from __future__ import annotations

import dataclasses

import numpy as np

from aetl_jax.data.splits import class_counts, label_budget, stratified_split


@dataclasses.dataclass(frozen=True)
class TransferSplit:
  """Disjoint index sets into one labelled dataset.

  ``source`` is used without labels for pretraining; labelled training and
  validation examples for the target task are drawn from ``target_pool``;
  ``test`` is touched only for final evaluation. ``val``, when the dataset has
  its own validation split (SST-2's dev), is every cell's validation set;
  otherwise validation labels are drawn from the pool.
  """

  source: np.ndarray
  target_pool: np.ndarray
  test: np.ndarray
  val: np.ndarray | None = None

  def check_disjoint(self):
    sets = {"source": self.source, "target_pool": self.target_pool, "test": self.test}
    if self.val is not None:
      sets["val"] = self.val
    names = list(sets)
    for i, a in enumerate(names):
      for b in names[i + 1:]:
        both = np.intersect1d(sets[a], sets[b])
        if len(both):
          raise AssertionError(f"{a} and {b} share {len(both)} examples")


def make_transfer_split(labels, *, test_fraction: float, source_fraction: float,
                        seed: int) -> TransferSplit:
  """Stratified test split, then the rest split into source and target pool."""
  rest, test = stratified_split(labels, test_fraction, seed)
  target_rel, source_rel = stratified_split(labels[rest], source_fraction, seed + 1)
  split = TransferSplit(source=rest[source_rel], target_pool=rest[target_rel], test=test)
  split.check_disjoint()
  return split


# How a cell's validation labels relate to its budget: 'extra' (val_per_class more per class,
# drawn beside the budget), 'within' (val_per_class of the budget's own labels, the rest train)
# or 'none' (no validation labels: choices fall back to fixed defaults).
VALIDATION_MODES = ("extra", "within", "none")


def draw_target_labels(labels, split: TransferSplit, *, per_class: int, val_per_class: int,
                       seed: int, num_classes: int, validation: str = "extra"):
  """Labelled train and validation indices for one (budget, seed) cell.

  Budget 0 uses no target label at all: neither train nor validation. Otherwise, with
  ``validation='extra'`` validation is the split's fixed ``val`` when it has one, else a
  separate stratified draw of ``val_per_class`` from the target pool (never from test),
  disjoint from the training labels; ``'within'`` carves ``val_per_class`` per class out of
  the ``per_class`` drawn labels; ``'none'`` draws none.
  """
  if validation not in VALIDATION_MODES:
    raise ValueError(f"unknown validation mode {validation!r}; valid: {', '.join(VALIDATION_MODES)}")
  empty = np.empty(0, np.int64)
  if per_class == 0:  # budget 0: no target labels (source-only and adaptation strategies)
    return empty, empty
  train = label_budget(labels, per_class, seed, pool=split.target_pool, num_classes=num_classes)
  if validation == "none" or not val_per_class:
    return train, (split.val if split.val is not None and validation == "extra" else empty)
  if validation == "within":
    if val_per_class >= per_class:
      raise ValueError(f"validation 'within' keeps {val_per_class} of the {per_class} labels per "
                       f"class for validation; the budget must be larger")
    val = label_budget(labels, val_per_class, seed + 10_000, pool=train, num_classes=num_classes)
    return np.setdiff1d(train, val), val
  if split.val is not None:
    return train, split.val
  remaining = np.setdiff1d(split.target_pool, train)
  val = label_budget(labels, val_per_class, seed + 10_000, pool=remaining, num_classes=num_classes)
  return train, val


def describe_split(labels, split: TransferSplit, num_classes: int) -> dict:
  return {name: {"size": int(len(idx)), "per_class": class_counts(labels, idx, num_classes)}
          for name, idx in (("source", split.source), ("target_pool", split.target_pool),
                            ("test", split.test))}


@dataclasses.dataclass
class TransferData:
  """Everything a transfer experiment trains and tests on, as [0, 1] float arrays.

  ``source_images`` are used without labels for pretraining; labelled
  examples are drawn from ``images[split.target_pool]``; ``images[split.test]``
  is touched only for final evaluation.
  """

  source_images: np.ndarray | None
  images: np.ndarray
  labels: np.ndarray
  split: TransferSplit
  num_classes: int
  description: dict = dataclasses.field(default_factory=dict)
  # Streamed source (data on disk): seed -> tf.data batches, and its size.
  source_stream: object = None
  num_source: int | None = None
  # The source's labels (None: unlabelled or streamed), its classes, and whether source and
  # target share one label space (same dataset, or declared by data.label_space).
  source_labels: np.ndarray | None = None
  source_classes: tuple = ()
  target_classes: tuple = ()
  shared_labels: bool = False
  # Text: the tokenizer (trained on the source sentences) that produced the token ids.
  tokenizer: object = None
  texts: dict | None = None  # {'source': sentences, 'target': sentences in the rows' order}

  def content(self) -> dict:
    """What the run's data is made of (its fingerprint's input): for text the sentences and
    labels, not the token ids a trained vocabulary derives from them; for images all of it."""
    if self.texts is None:
      return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    return {"texts": self.texts, "labels": self.labels, "split": self.split,
            "source_labels": self.source_labels}

  def describe(self) -> dict:
    if self.source_images is None:
      out = {"source": {"size": self.num_source, "streamed": True}}
    else:
      out = {"source": {"size": int(len(self.source_images)),
                        "shape": list(self.source_images.shape[1:])}}
    for name in ("target_pool", "test", "val"):
      idx = getattr(self.split, name)
      if idx is None:
        continue
      out[name] = {"size": int(len(idx)), "per_class": class_counts(self.labels, idx,
                                                                     self.num_classes)}
    return {**out, **self.description}
