import logging

import jax.numpy as jnp
import numpy as np
import pytest

from aetl_jax.core import rules

PARAMS = {
    "encoder": {"block_0": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)},
                "block_1": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}},
    "head": {"kernel": jnp.ones((2, 5)), "bias": jnp.zeros(5)},
}


def test_paths_are_slash_joined():
  assert "encoder/block_0/kernel" in rules.tree_paths(PARAMS)


def test_first_match_wins():
  values = rules.match_rules(PARAMS, [("encoder/block_0/.*", "a"), ("encoder/.*", "b"), (".*", "c")])
  assert values["encoder"]["block_0"]["kernel"] == "a"
  assert values["encoder"]["block_1"]["bias"] == "b"
  assert values["head"]["kernel"] == "c"


def test_uncovered_leaves_are_listed():
  with pytest.raises(ValueError) as e:
    rules.match_rules(PARAMS, [("encoder/.*", 1.0)])
  assert "head/kernel" in str(e.value) and "head/bias" in str(e.value)


def test_rule_matching_nothing_warns(caplog):
  with caplog.at_level(logging.WARNING):
    rules.match_rules(PARAMS, [("decoder/.*", 1.0), (".*", 1.0)])
  assert "decoder/.*" in caplog.text


@pytest.mark.parametrize("bad", [0, 0.0, -1.0, "slow", True])
def test_zero_negative_or_junk_multiplier_is_refused(bad):
  with pytest.raises(ValueError, match="frozen"):
    rules.trainable_mask(PARAMS, [("encoder/.*", bad), (".*", 1.0)])


def test_mask_and_multipliers():
  r = [("encoder/block_0/.*", "frozen"), ("encoder/.*", 0.5), (".*", 1.0)]
  mask = rules.trainable_mask(PARAMS, r)
  mults = rules.lr_multipliers(PARAMS, r)
  assert mask["encoder"]["block_0"]["kernel"] is False
  assert mask["encoder"]["block_1"]["kernel"] is True
  assert mults["encoder"]["block_0"]["bias"] == 0.0
  assert mults["encoder"]["block_1"]["bias"] == 0.5


def test_invalid_regex_is_reported():
  with pytest.raises(ValueError, match="invalid regex"):
    rules.match_rules(PARAMS, [("encoder/(", 1.0)])


def test_split_merge_round_trip():
  mask = rules.trainable_mask(PARAMS, [("encoder/.*", "frozen"), (".*", 1.0)])
  selected, rest = rules.split_by_mask(PARAMS, mask)
  assert selected["encoder"]["block_0"]["kernel"] is None
  assert rest["head"]["kernel"] is None
  merged = rules.merge_split(selected, rest)
  for path in rules.tree_paths(PARAMS):
    a, b = PARAMS, merged
    for k in path.split("/"):
      a, b = a[k], b[k]
    np.testing.assert_array_equal(a, b)


def test_reinit_paths():
  assert rules.reinit_paths(PARAMS, ["encoder/block_1/.*"]) == [
      "encoder/block_1/bias", "encoder/block_1/kernel"]
  assert rules.reinit_paths(PARAMS, []) == []


def test_weight_decay_and_reinit_rules_name_themselves_in_their_errors():
  from aetl_jax.core.rules import reinit_paths, weight_decay_multipliers
  tree = {"encoder": {"w": np.zeros(2)}, "head": {"w": np.zeros(2)}}
  with pytest.raises(ValueError, match=r"^weight-decay rules: leaf 'encoder/w' got value -1\.0; "
                                       r"valid values are numbers >= 0 \(0: no decay\)$"):
    weight_decay_multipliers(tree, (("encoder/.*", -1.0),))
  with pytest.raises(ValueError, match=r"^weight-decay rules: leaf 'head/w' got value True"):
    weight_decay_multipliers(tree, (("head/.*", True),))  # a flag is not a multiplier
  with pytest.raises(ValueError, match=r"^weight-decay rules: invalid regex '\('"):
    weight_decay_multipliers(tree, (("(", 0.0),))
  with pytest.raises(ValueError, match=r"^reinit rules: invalid regex '\('"):
    reinit_paths(tree, ["("])
  assert weight_decay_multipliers(tree, (("head/.*", 0),)) == {"encoder": {"w": 1.0},
                                                              "head": {"w": 0.0}}
  assert reinit_paths(tree, ["head/.*"]) == ["head/w"]
