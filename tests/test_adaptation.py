"""Labelled and joint source tasks, budget 0, domain adaptation, semi-supervised pseudo-labels
and augmentation."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aetl_jax import api
from aetl_jax.core.config import ConfigError
from aetl_jax.objectives.adaptation import coral_distance, mmd2, reverse_gradient
from aetl_jax.objectives.augmentation import AUGMENTATIONS, augment
from tests.conftest import digits_config, normal, TINY

NEW = ("source_only", "scratch", "dann", "drcn", "coral", "mmd", "pseudo_label")
SMALL = TINY + ["objective.name='classification'", "transfer.budgets=(0,2)",
                "transfer.adaptation_epochs=1", "transfer.semi_epochs=1", "data.max_pool=200",
                "model.widths=(32,)", "model.code_dim=8", "transfer.batch_size=16",
                f"transfer.strategies={NEW!r}"]


# --- the pieces --------------------------------------------------------------------------------


def test_gradient_reversal_flips_exactly_the_sign_of_the_gradient():
  x = jnp.array([0.3, -1.2, 2.0])
  w = jnp.array([1.5, 2.0, -0.5])
  f = lambda x, scale: jnp.sum(w * reverse_gradient(x, scale) ** 2)
  plain = jax.grad(lambda x: jnp.sum(w * x ** 2))(x)
  for scale in (1.0, 0.3):
    assert f(x, scale) == pytest.approx(float(jnp.sum(w * x ** 2)))  # identity forward
    np.testing.assert_allclose(jax.grad(f)(x, scale), -scale * plain, rtol=1e-6)


def test_coral_and_mmd_are_zero_for_identical_batches_and_positive_otherwise():
  a = normal(0, (64, 5))
  b = 2.0 * normal(1, (64, 5)) + 1.0
  assert float(coral_distance(a, a)) == pytest.approx(0.0, abs=1e-7)
  assert float(mmd2(a, a)) == pytest.approx(0.0, abs=1e-6)
  assert float(coral_distance(a, b)) > 1e-2 and float(mmd2(a, b)) > 1e-2
  # CORAL sees second-order statistics only: a shift of the mean does not move it
  assert float(coral_distance(a, a + 3.0)) == pytest.approx(0.0, abs=1e-5)
  assert float(mmd2(a, a + 3.0)) > 1e-2


@pytest.mark.parametrize("name, strength", [("translate", 0.25), ("rotate", 20), ("noise", 0.2),
                                            ("cutout", 0.5)])
@pytest.mark.slow
def test_augmentations_are_deterministic_per_key_and_stay_images(name, strength, digits):
  images, _ = digits
  x = jnp.asarray(images[:16] / 16.0, jnp.float32)
  chain = ((name, strength),)
  one = augment(jax.random.PRNGKey(3), x, chain)
  assert one.shape == x.shape and float(one.min()) >= 0.0 and float(one.max()) <= 1.0
  np.testing.assert_array_equal(one, augment(jax.random.PRNGKey(3), x, chain))
  assert not np.allclose(one, augment(jax.random.PRNGKey(4), x, chain))
  assert not np.allclose(one, x)
  jitted = jax.jit(lambda k, v: augment(k, v, chain))
  np.testing.assert_allclose(jitted(jax.random.PRNGKey(3), x), one, atol=1e-6)
  assert np.array_equal(augment(jax.random.PRNGKey(3), x, ()), x)


def test_translate_moves_pixels_without_changing_them():
  x = jnp.zeros((1, 8, 8, 1)).at[0, 3, 4, 0].set(1.0)
  out = np.asarray(AUGMENTATIONS.get("translate").fn(jax.random.PRNGKey(0), x[0], 0.25))
  assert out.sum() == 1.0 and set(np.unique(out)) == {0.0, 1.0}
  (y, xx, _), = np.argwhere(out == 1.0)
  assert abs(y - 3) <= 2 and abs(xx - 4) <= 2


@pytest.mark.slow
def test_pseudo_label_term_uses_only_confident_predictions_and_keeps_labels(digits):
  from aetl_jax.models.registry import build_classifier
  from aetl_jax.objectives.adaptation import pseudo_label
  from aetl_jax.objectives.classification import cross_entropy
  config = digits_config("model.widths=(16,)", "model.code_dim=8")
  model = build_classifier(config.model, 10)
  images, labels = digits
  x = jnp.asarray(images[:32] / 16.0, jnp.float32)
  params = model.init(jax.random.PRNGKey(0), x[:1])["params"]
  batches = {"labelled": {"image": x[:8], "label": jnp.asarray(labels[:8])}, "images": {"image": x}}
  make = lambda conf, weight=1.0: pseudo_label(model, dict_section(
      weight=weight, confidence=conf, weak=(), strong=()))
  # confidence 0: every prediction is a pseudo-label; an untrained model's are barely confident
  _, all_in = make(0.0)(params, batches, jax.random.PRNGKey(1))
  _, none_in = make(0.999)(params, batches, jax.random.PRNGKey(1))
  assert float(all_in["mask_rate"]) == 1.0 and float(none_in["mask_rate"]) == 0.0
  assert float(none_in["pseudo_label"]) == 0.0 and float(all_in["pseudo_label"]) > 0.0
  # without augmentation the supervised term is the plain cross-entropy on the given labels
  loss, aux = make(0.999, weight=1.0)(params, batches, jax.random.PRNGKey(1))
  ce, _ = cross_entropy(model.apply({"params": params}, x[:8]), jnp.asarray(labels[:8]))
  assert float(loss) == pytest.approx(float(ce), rel=1e-5)


class dict_section(dict):
  __getattr__ = dict.__getitem__

  def __init__(self, **kw):
    super().__init__(kw)


# --- the strategies in a sweep -----------------------------------------------------------------


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("adaptation")
  config = digits_config(*SMALL)
  return config, workdir, api.run(config, workdir, progress=False)


@pytest.mark.slow
def test_every_new_strategy_trains_and_reports(adapted):
  config, workdir, out = adapted
  cells = {(r["budget"], r["strategy"]) for r in out["rows"]}
  needs_labels = {"scratch", "pseudo_label"}
  assert cells == {(b, s) for b in (0, 2) for s in NEW if b > 0 or s not in needs_labels}
  logged = {r["strategy"]: r for r in out["rows"] if r["budget"] == 2 and r["seed"] == 0}
  assert logged["source_only"]["phases"] == []
  for name in ("dann", "drcn", "coral", "mmd", "pseudo_label"):
    assert logged[name]["phases"][0]["final_train_loss"] > 0
  # every cell's recorded accuracy is its saved classifier's on the test set (the DANN ones
  # without their domain head)
  from aetl_jax.data.domains import build_transfer_data
  from aetl_jax.transfer.classifiers import load_classifier
  data = build_transfer_data(config.data, progress=False)
  x, y = data.images[data.split.test], data.labels[data.split.test]
  for row in out["rows"]:
    clf = load_classifier(workdir, f"budget{row['budget']}_{row['strategy']}_seed{row['seed']}")
    assert float(np.mean(clf.predict(x).argmax(1) == y)) == pytest.approx(row["test_accuracy"],
                                                                           abs=1e-9)
  md = (workdir / "results" / "results.md").read_text()
  assert "| 0 labels/class | 2 labels/class |" in md
  assert "Difference to `source_only`" in md and "Difference to `scratch`" in md
  saved = json.loads((workdir / "results" / "results.json").read_text())  # both paired tables
  assert {r.get("baseline") for r in saved} == {None, "scratch", "source_only"}
  assert "labelled images" in md  # the caption says the source was labelled


@pytest.mark.slow
def test_budget_zero_evaluates_the_source_classifier_without_training(adapted):
  """source_only at budget 0 is the pretrained source classifier as it is: its recorded
  accuracy is that of the checkpoint's encoder + head on the target test set."""
  from aetl_jax.data.domains import build_transfer_data
  from aetl_jax.engine import checkpoint
  from aetl_jax.models.registry import build_classifier
  config, workdir, out = adapted
  model = build_classifier(config.model, 10)
  data = build_transfer_data(config.data, progress=False)
  x, y = data.images[data.split.test], data.labels[data.split.test]
  template = model.init(jax.random.PRNGKey(0), x[:1])["params"]
  ckpt = workdir / "pretrain" / "checkpoints"
  _, head = checkpoint.restore_subtree(ckpt, template["head"], subtree=("params", "head"))
  _, encoder = checkpoint.restore_subtree(ckpt, template["encoder"])
  logits = model.apply({"params": {"encoder": encoder, "head": head}}, x)
  expected = float(np.mean(np.argmax(np.asarray(logits), -1) == y))
  zero = [r for r in out["rows"] if r["strategy"] == "source_only"]
  assert len(zero) == 4 and all(r["test_accuracy"] == pytest.approx(expected, abs=1e-6) for r in zero)
  assert expected > 0.5  # the digits source classifier is far above chance on digits
  # the pretraining log scored the classifier on a held-out share of the *source*, never on
  # the target's test set: the same split, carved here by hand from the source's labels (one
  # generator drawing every class in turn)
  draw, share = np.random.default_rng(config.data.split_seed + 5), config.pretrain.holdout_fraction
  labels = data.source_labels
  held = np.sort(np.concatenate([draw.permutation(np.flatnonzero(labels == c))[
      :int(round(share * np.sum(labels == c)))] for c in np.unique(labels)]))
  logits = model.apply({"params": {"encoder": encoder, "head": head}}, data.source_images[held])
  on_source = float(np.mean(np.argmax(np.asarray(logits), -1) == data.source_labels[held]))
  last = [r for r in out["pretrain_history"] if "eval_accuracy" in r][-1]
  assert last["eval_accuracy"] == pytest.approx(on_source, abs=1e-6)


@pytest.mark.slow
def test_dann_logs_its_domain_classifier(adapted):
  _, workdir, _ = adapted
  import json
  rows = [json.loads(l) for l in (workdir / "metrics" / "finetune.jsonl").read_text().splitlines()]
  dann = next(r for r in rows if r["strategy"] == "dann" and r["budget"] == 2)
  terms = dann["history"][-1]
  assert {"domain", "domain_accuracy", "source_classification", "labelled_classification"} <= set(terms)
  drcn = next(r for r in rows if r["strategy"] == "drcn" and r["budget"] == 0)
  assert "reconstruction" in drcn["history"][-1] and "labelled_classification" not in drcn["history"][-1]


@pytest.mark.slow
def test_joint_source_pretraining_transfers_its_encoder(tmp_path):
  config = digits_config(*TINY, "objective.name='joint'", "transfer.budgets=(0,2)",
                         "transfer.strategies=('source_only','finetune')", "model.widths=(32,)",
                         "model.code_dim=8", "transfer.seeds=1")
  out = api.run(config, tmp_path, progress=False)
  assert {r["strategy"] for r in out["rows"]} == {"source_only", "finetune"}
  history = out["pretrain_history"]
  assert {"train_classification", "train_reconstruction", "eval_accuracy", "eval_mse"} <= set(history[-1])


# --- bad input before anything compiles --------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    (["transfer.adaptation_weight=-1.0"], r"transfer.adaptation_weight.*must be >= 0"),
    (["transfer.unlabelled_ratio=0.0"], r"transfer.unlabelled_ratio.*must be a finite positive number"),
    (["transfer.confidence=1.0"], r"transfer.confidence.*\[0, 1\)"),
    (["transfer.strong_augment=(('warp',0.1),)"], r"unknown augmentation 'warp'.*translate"),
    (["transfer.augment=(('noise',-0.5),)"],
     r"^config key 'transfer.augment': strength of 'noise' must be a number >= 0, got -0.5$"),
    (["objective.name='reconstruction'"], r"strategy 'source_only' evaluates the classifier "
                                          r"pretrained on the source.*'classification' or 'joint'"),
])
def test_adaptation_bad_input_is_one_line_before_training(overrides, message):
  with pytest.raises(ConfigError, match=message) as e:
    api.load_and_check(digits_config(*SMALL, *overrides), progress=False)
  assert "\n" not in str(e.value)


def test_a_source_that_is_the_pool_cannot_be_trained_on_its_labels():
  with pytest.raises(ConfigError, match=r"source_fraction.*objective 'classification', strategy "
                                        r"'source_only'.*would train on every pool label"):
    api.load_and_check(digits_config(*SMALL, "data.source_fraction=0.0"), progress=False)


def test_budget_zero_needs_a_strategy_that_runs_without_labels():
  with pytest.raises(ConfigError, match=r"budget 0 .*needs a strategy that trains without them: "
                                        r"source_only"):
    api.load_and_check(digits_config(*TINY, "transfer.budgets=(0,)"), progress=False)


def test_budget_zero_across_label_spaces_names_both_label_sets(tmp_path, digits):
  images, labels = digits
  np.savez(tmp_path / "letters.npz", images=images[:400], labels=labels[:400] % 5)
  config = digits_config(*TINY, "objective.name='classification'",
                         f"data.source='npz:{tmp_path / 'letters.npz'}'",
                         "transfer.strategies=('source_only',)", "transfer.budgets=(0,)")
  with pytest.raises(ConfigError, match=r"source npz:.* has classes \[0, 1, 2, 3, 4\], target "
                                        r"digits has \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\]"):
    api.load_and_check(config, progress=False)
  shared = api.load_config(config, ["data.label_space='shared'"])
  with pytest.raises(ConfigError, match=r"label_space='shared' but the source .* has classes "
                                        r"\[0, 1, 2, 3, 4\]"):
    api.load_and_check(shared, progress=False)


def test_source_fraction_zero_and_include_target_pool_choose_what_pretrains():
  from aetl_jax.data.domains import build_transfer_data
  from aetl_jax.tasks.transfer import _pretraining_data
  semi = digits_config("data.source_fraction=0.0")
  data = build_transfer_data(semi.data, progress=False)
  pool = data.images[data.split.target_pool]
  np.testing.assert_array_equal(data.source_images, pool)  # every pool image, unlabelled
  np.testing.assert_array_equal(data.source_labels, data.labels[data.split.target_pool])
  both = digits_config("pretrain.include_target_pool=True")
  data = build_transfer_data(both.data, progress=False)
  images, held, kw = _pretraining_data(both, data)
  assert len(images) + len(held) == len(data.source_images) + len(data.split.target_pool)
  assert kw == {} and len(held) == round(0.1 * (len(images) + len(held)))
  labelled = digits_config("objective.name='classification'")
  images, held, kw = _pretraining_data(labelled, build_transfer_data(labelled.data, progress=False))
  assert kw["num_classes"] == 10 and len(kw["train_labels"]) == len(images)
  assert len(kw["eval_labels"]) == len(held)
  with pytest.raises(ConfigError, match="source_fraction.*needs data.source == data.target"):
    api.validate(digits_config("data.source_fraction=0.0", "data.target='npz:x.npz'"))


def test_a_rerun_with_nested_tuple_keys_resumes(tmp_path):
  """config.json stores tuples as lists at every depth; the augmentation chains (tuples of
  (name, strength) pairs) must compare equal on the rerun, or the run could never resume."""
  from aetl_jax.workdir import prepare_workdir
  config = digits_config(*SMALL)
  assert isinstance(config.transfer.strong_augment[0], tuple)
  prepare_workdir(tmp_path, config, experiment="transfer")
  (tmp_path / "results").mkdir()
  (tmp_path / "results" / "cells.jsonl").write_text("{}\n")  # it produced something
  _, resuming = prepare_workdir(tmp_path, digits_config(*SMALL), experiment="transfer")
  assert resuming


@pytest.mark.slow
def test_any_strategy_can_augment_its_labelled_images(digits):
  """transfer.augment wraps every phase's objective; a head-only phase then trains on images
  (features of augmented images cannot be cached). Off by default."""
  from aetl_jax.engine.phase import Optim
  from aetl_jax.strategies import StrategyContext, build_strategy
  from tests.conftest import classifier_and_params
  images, labels = digits
  batch = {"labelled": {"image": jnp.asarray(images[:16] / 16.0, jnp.float32),
                        "label": jnp.asarray(labels[:16])}}
  plain_cfg = digits_config("model.widths=(16,)", "model.code_dim=8")
  model, params = classifier_and_params(plain_cfg)
  aug_cfg = api.load_config(plain_cfg, ["transfer.augment=(('translate',0.25),('noise',0.1))"])
  for name in ("finetune", "linear_probe"):
    plain = build_strategy(name, StrategyContext(name, plain_cfg.transfer, model, params,
                                                 Optim.from_config(plain_cfg.transfer)))
    aug = build_strategy(name, StrategyContext(name, aug_cfg.transfer, model, params,
                                               Optim.from_config(aug_cfg.transfer)))
    assert aug.phases[-1].subtree is None  # no feature cache under augmentation
    loss = aug.phases[-1].loss
    a, _ = loss(params, batch, jax.random.PRNGKey(0))
    b, _ = loss(params, batch, jax.random.PRNGKey(0))
    c, _ = loss(params, batch, jax.random.PRNGKey(1))
    assert float(a) == float(b) and float(a) != float(c)
    if name == "finetune":
      p, _ = plain.phases[0].loss(params, batch, jax.random.PRNGKey(0))
      assert float(p) != float(a)
  with pytest.raises(ConfigError, match="transfer.augment.*unknown augmentation 'blur'"):
    api.validate(api.load_config(plain_cfg, ["transfer.augment=(('blur',1.0),)"]))


def test_the_alignment_objective_is_cross_entropy_on_both_labelled_roles_plus_weight_times_the_gap():
  """The CORAL objective recomputed by hand on a tiny classifier: the cross-entropy of every
  labelled role (source and target-labelled), + weight × coral_distance(source codes, target
  codes), with the accuracy metric of the labelled role; and the binary cross-entropy DANN
  and ADDA use equals its definition, also for large logits."""
  import ml_collections
  import optax

  from aetl_jax.models.autoencoder import Classifier
  from aetl_jax.models.mlp import MLPEncoder
  from aetl_jax.objectives.adaptation import binary_cross_entropy, coral_distance
  from aetl_jax.objectives.registry import OBJECTIVES

  rng = np.random.default_rng(0)
  model = Classifier(MLPEncoder((6,), 3), 4)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 1)))["params"]
  batch = lambda n: {"image": jnp.asarray(rng.random((n, 4, 4, 1)), jnp.float32),
                     "label": jnp.asarray(rng.integers(0, 4, n))}
  batches = {"source": batch(8), "labelled": batch(5), "images": {"image": batch(7)["image"]}}
  loss_fn = OBJECTIVES.get("coral").fn(model, ml_collections.FrozenConfigDict({"weight": 0.7}))
  loss, metrics = jax.jit(loss_fn)(params, batches, jax.random.PRNGKey(1))

  encode = lambda x: model.apply({"params": params}, x, method="encode")
  ce = lambda b: float(optax.softmax_cross_entropy_with_integer_labels(
      model.apply({"params": params}, b["image"]), b["label"]).mean())
  gap = float(coral_distance(encode(batches["source"]["image"]), encode(batches["images"]["image"])))
  assert float(metrics["alignment"]) == pytest.approx(gap, rel=1e-5)
  assert float(loss) == pytest.approx(ce(batches["source"]) + ce(batches["labelled"]) + 0.7 * gap,
                                      rel=1e-5)
  acc = float(np.mean(np.argmax(model.apply({"params": params}, batches["labelled"]["image"]), -1)
                      == np.asarray(batches["labelled"]["label"])))
  assert float(metrics["accuracy"]) == pytest.approx(acc)
  source_only = {k: v for k, v in batches.items() if k != "labelled"}  # budget 0: source labels only
  _, metrics = jax.jit(loss_fn)(params, source_only, jax.random.PRNGKey(1))
  acc = float(np.mean(np.argmax(model.apply({"params": params}, batches["source"]["image"]), -1)
                      == np.asarray(batches["source"]["label"])))
  assert float(metrics["accuracy"]) == pytest.approx(acc) and "labelled_accuracy" not in metrics
  # with dropout, both the labelled and the target passes get their dropout keys
  dropped = Classifier(MLPEncoder((6,), 3, dropout_rate=0.5), 4)
  loss_d = OBJECTIVES.get("coral").fn(dropped, ml_collections.FrozenConfigDict({"weight": 0.7}))
  value, _ = jax.jit(loss_d)(params, batches, jax.random.PRNGKey(1))
  assert np.isfinite(float(value)) and float(value) != pytest.approx(float(loss), rel=1e-6)

  bce = lambda z, t: float(binary_cross_entropy(jnp.asarray(z), jnp.asarray(t)))
  logits, targets = np.array([-2.0, -0.5, 0.0, 3.0]), np.array([1.0, 0.0, 1.0, 0.0])
  p = 1 / (1 + np.exp(-logits))
  assert bce(logits, targets) == pytest.approx(
      -np.mean(targets * np.log(p) + (1 - targets) * np.log(1 - p)), rel=1e-5)
  # large logits: -log sigmoid(z) = log(1 + e^-z), finite where the naive form is not
  logits, targets = np.array([-80.0, 90.0]), np.array([1.0, 0.0])
  assert bce(logits, targets) == pytest.approx(np.mean(np.logaddexp(0, [80.0, 90.0])), rel=1e-5)


def test_augment_applies_the_chain_in_order_with_a_key_per_image(monkeypatch):
  """``augment`` with two stand-in augmentations registered for the test: the chain runs in
  its order ((x + 1) × 2, not x × 2 + 1), every image gets its own key (equal images come out
  different, the same key gives the same batch), an empty chain returns the images."""
  from aetl_jax.objectives.augmentation import AUGMENTATIONS
  entries = dict(AUGMENTATIONS._entries)
  monkeypatch.setattr(AUGMENTATIONS, "_entries", entries)
  AUGMENTATIONS.register("_plus")(lambda key, image, s: image + s)
  AUGMENTATIONS.register("_times")(lambda key, image, s: image * s)
  AUGMENTATIONS.register("_keyed")(lambda key, image, s: image + s * jax.random.uniform(key))
  x = jnp.ones((3, 2, 2, 1))
  out = augment(jax.random.PRNGKey(0), x, (("_plus", 1.0), ("_times", 2.0)))
  np.testing.assert_allclose(out, 4.0)
  keyed = np.asarray(augment(jax.random.PRNGKey(0), x, (("_keyed", 1.0),)))
  assert len({float(v) for v in keyed[:, 0, 0, 0]}) == 3  # one draw per image
  np.testing.assert_array_equal(keyed, augment(jax.random.PRNGKey(0), x, (("_keyed", 1.0),)))
  assert augment(jax.random.PRNGKey(0), x, ()) is x
  from aetl_jax.objectives.augmentation import check_chain
  assert check_chain((("noise", 0.0),), "transfer.augment") == (("noise", 0.0),)  # 0: no effect, valid
