import numpy as np
import pytest

from aetl_jax.data.splits import label_budget, stratified_split
from aetl_jax.data.transfer_split import draw_target_labels, make_transfer_split


def test_transfer_split_is_disjoint_and_stratified(digits):
  _, labels = digits
  split = make_transfer_split(labels, test_fraction=0.3, source_fraction=0.5, seed=0)
  all_idx = np.concatenate([split.source, split.target_pool, split.test])
  assert len(np.unique(all_idx)) == len(labels) == len(all_idx)
  # Every class: round(30%) of its examples in test, then round(50%) of the rest in source.
  for c in range(10):
    n_c = int(np.sum(labels == c))
    test_c = int(np.sum(labels[split.test] == c))
    assert test_c == round(0.3 * n_c), c
    assert int(np.sum(labels[split.source] == c)) == round(0.5 * (n_c - test_c)), c


def test_label_budget_exact_reproducible_and_seed_dependent(digits):
  _, labels = digits
  a = label_budget(labels, 7, seed=3)
  assert np.array_equal(a, label_budget(labels, 7, seed=3))
  assert not np.array_equal(a, label_budget(labels, 7, seed=4))
  assert np.bincount(labels[a], minlength=10).tolist() == [7] * 10


def test_validation_is_disjoint_from_train_and_inside_target_pool(digits):
  _, labels = digits
  split = make_transfer_split(labels, test_fraction=0.3, source_fraction=0.5, seed=0)
  train, val = draw_target_labels(labels, split, per_class=10, val_per_class=5, seed=0,
                                  num_classes=10)
  assert len(np.intersect1d(train, val)) == 0
  assert set(train) | set(val) <= set(split.target_pool)
  assert np.bincount(labels[val], minlength=10).tolist() == [5] * 10


def test_budget_larger_than_class_names_class_and_count():
  labels = np.array([0] * 5 + [1] * 2)
  with pytest.raises(ValueError, match=r"class 1 holds \(2 examples available\)"):
    label_budget(labels, 3, seed=0)


def test_bad_fraction():
  with pytest.raises(ValueError, match=r"\(0, 1\)"):
    stratified_split(np.zeros(4, int), 1.5, 0)


def test_label_budget_errors_and_declared_classes():
  labels = np.array([0, 0, 1, 1, 0, 1])
  with pytest.raises(ValueError, match=r"^label budget must be >= 1 per class, got 0$"):
    label_budget(labels, 0, seed=0)
  assert sorted(labels[label_budget(labels, 2, seed=0)].tolist()) == [0, 0, 1, 1]
  # A declared class with no examples is named, not silently skipped.
  with pytest.raises(ValueError, match=r"larger than class 2 holds \(0 examples available\)"):
    label_budget(labels, 1, seed=0, num_classes=3)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_a_split_fraction_outside_the_open_interval_is_refused(fraction):
  with pytest.raises(ValueError, match=rf"^split fraction must be in \(0, 1\), got {fraction}$"):
    stratified_split(np.array([0, 1, 0, 1]), fraction, seed=0)


def test_splits_and_subsets_are_functions_of_their_seed():
  from aetl_jax.data.splits import subsample
  labels = np.repeat(np.arange(3), 40)
  same = [stratified_split(labels, 0.3, seed=5) for _ in range(2)]
  assert all(np.array_equal(x, y) for x, y in zip(*same))
  assert not np.array_equal(stratified_split(labels, 0.3, seed=6)[1], same[0][1])
  assert np.array_equal(subsample(100, 10, seed=5), subsample(100, 10, seed=5))
  assert not np.array_equal(subsample(100, 10, seed=6), subsample(100, 10, seed=5))
  assert np.array_equal(subsample(100, 0, seed=5), np.arange(100))
  assert np.array_equal(subsample(100, 100, seed=5), np.arange(100))
