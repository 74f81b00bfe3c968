"""ResNet-18 in torchvision's layout: conversion, BatchNorm statistics through the engine,
the backbone strategies and ``model.weights``."""

import functools
import sys
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from aetl_jax.core.rules import FROZEN, tree_paths
from aetl_jax.core.statistics import mark_frozen, statistics_mask
from aetl_jax.engine.driver import run_phases, run_phases_vmapped
from aetl_jax.engine.phase import Optim, Phase
from aetl_jax.engine.runtime import make_runtime
from aetl_jax.engine.store import CheckpointStore
from aetl_jax.models.registry import build_classifier, build_model
from aetl_jax.models.resnet18 import ResNet18
from aetl_jax.models.torchvision import check_weights, convert_state_dict, torchvision_state_dict
from aetl_jax.models.variables import apply, apply_train, tree_of
from aetl_jax.objectives.classification import cross_entropy
from aetl_jax.objectives.registry import OBJECTIVES
from tests.conftest import quick_jit, tree_equal

SHAPE = (16, 16, 1)
RUNTIME = make_runtime(family="resnet18")


def resnet_cfg(**overrides):
  """XLA's convolution unless overridden: it compiles ~40% faster than CPU's default (im2col),
  and what these tests check does not depend on it (the two are compared below)."""
  return ml_collections.ConfigDict({**dict(
      family="resnet18", code_dim=0, input_norm="imagenet", weights="",
      decoder_channels=(64, 32), upsampling="transpose", conv_impl="xla"), **overrides})


def classifier(num_classes=5, seed=0, **overrides):
  model = build_classifier(resnet_cfg(**overrides), num_classes)
  return model, tree_of(model.init(jax.random.PRNGKey(seed), jnp.zeros((1, *SHAPE))))


def randomised_statistics(tree, seed=1):
  """Running statistics away from their (0, 1) initialisation, so using them shows."""
  rng = np.random.RandomState(seed)
  def leaf(path, x):
    if path.endswith("running_mean"):
      return jnp.asarray(rng.uniform(-0.3, 0.3, x.shape), x.dtype)
    if path.endswith("running_var"):
      return jnp.asarray(rng.uniform(0.5, 2.0, x.shape), x.dtype)
    return x
  flat = dict(zip(tree_paths(tree), jax.tree.leaves(tree)))
  return jax.tree.unflatten(jax.tree.structure(tree), [leaf(p, x) for p, x in flat.items()])


def batch(n=8, seed=0, classes=5):
  rng = np.random.RandomState(seed)
  return {"image": jnp.asarray(rng.rand(n, *SHAPE), jnp.float32),
          "label": jnp.asarray(rng.randint(0, classes, n), jnp.int32)}


# --- torchvision equality (needs torch + torchvision) --------------------------------------


def _torchvision():
  try:
    import torch
    import torchvision
    return torch, torchvision
  except Exception as e:  # noqa: BLE001 - absent, or a build that does not load here
    pytest.skip(f"torchvision not usable here ({type(e).__name__}: {str(e)[:80]}); "
                f"pip install 'aetl_jax[torch]'")


@pytest.mark.parametrize("impl", ["auto", "im2col", "xla"])
def test_logits_and_running_statistics_equal_torchvision(impl):
  torch, torchvision = _torchvision()
  torch.manual_seed(0)
  tm = torchvision.models.resnet18(num_classes=7)
  with torch.no_grad():  # away from the initial values, so a wrong mapping shows
    for m in tm.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 2.0)
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
  fm = ResNet18(num_classes=7, input_norm="none", conv_impl=impl)
  template = tree_of(jax.eval_shape(lambda: fm.init(jax.random.PRNGKey(0),
                                                    jnp.zeros((1, 64, 64, 3)))))
  tree = convert_state_dict(tm.state_dict(), template)
  x = np.random.RandomState(0).rand(4, 64, 64, 3).astype(np.float32)
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2))
  tm.eval()
  with torch.no_grad():
    ref_eval = tm(xt).numpy()
  tm.train()
  with torch.no_grad():
    ref_train = tm(xt).numpy()  # batch statistics; updates torch's running statistics
  out_eval = np.asarray(apply(fm, tree, x))
  out_train, state = apply_train(fm, tree, x)
  from aetl_jax.core.statistics import merge_updates
  updated = merge_updates(tree, state["batch_stats"])
  expected = convert_state_dict(tm.state_dict(), template)
  errors = {"eval": np.abs(out_eval - ref_eval).max(), "train": np.abs(out_train - ref_train).max(),
            "running statistics": max(np.abs(np.asarray(a) - b).max() for a, b in
                                      zip(jax.tree.leaves(updated), jax.tree.leaves(expected)))}
  print("max |flax - torchvision|:", {k: f"{v:.2e}" for k, v in errors.items()})
  assert np.abs(ref_eval).max() > 0.1 and np.abs(ref_eval - ref_train).max() > 0.01
  assert all(v < 1e-4 for v in errors.values()), errors


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["auto", "im2col", "xla"])
def test_logits_and_running_statistics_equal_torchvisions_recorded_outputs(impl):
  """Without torch: torchvision's outputs on NumPy-seeded weights, recorded by
  tests/fixtures/torchvision_resnet18.py, against the Flax ResNet-18 on the same weights
  (rebuilt from the key names): eval and train logits, updated running statistics."""
  from aetl_jax.core.statistics import merge_updates
  from tests.fixtures import torchvision_resnet18 as fixture
  ref = np.load(fixture.FIXTURE)
  fm = ResNet18(num_classes=fixture.NUM_CLASSES, input_norm="none", conv_impl=impl)
  template = tree_of(jax.eval_shape(lambda: fm.init(jax.random.PRNGKey(0),
                                                    jnp.zeros((1, *fixture.SHAPE)))))
  layout = _state_dict_of(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template))
  tree = convert_state_dict({k: fixture.seeded_value(k, v.shape) for k, v in layout.items()},
                            template)
  x = fixture.inputs()
  np.testing.assert_allclose(np.asarray(apply(fm, tree, x)), ref["eval_logits"], atol=1e-4)
  out_train, state = apply_train(fm, tree, x)
  np.testing.assert_allclose(np.asarray(out_train), ref["train_logits"], atol=1e-4)
  updated = _state_dict_of(merge_updates(tree, state["batch_stats"]))
  names = [k.removeprefix("stat:") for k in ref.files if k.startswith("stat:")]
  assert len(names) == 40  # 20 BatchNorms' running means and variances
  for name in names:
    np.testing.assert_allclose(updated[name], ref[f"stat:{name}"], rtol=1e-4, atol=1e-5,
                               err_msg=name)
  assert np.abs(ref["eval_logits"] - ref["train_logits"]).max() > 0.01


@pytest.mark.slow
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="oneDNN's custom calls are CPU's")
def test_onednn_convolutions_give_the_xla_resnet_or_the_config_says_what_is_missing(
    tmp_path, monkeypatch):
  """conv_impl='onednn' with every convolution forced onto the custom calls (7×7/2 stem,
  3×3/1 and /2, 1×1/2 downsamples, torch's explicit padding): XLA's logits, statistics and
  gradients. Without oneDNN here, the config check refuses it in one line."""
  from aetl_jax.models import onednn, resnet18
  from aetl_jax.validation import validate_transfer_config
  from aetl_jax.api import load_config
  from aetl_jax.core.config import ConfigError
  from aetl_jax.tasks.transfer import default_config
  monkeypatch.setenv("AETL_CACHE", str(tmp_path))
  if (why := onednn.problem()) is not None:
    with pytest.raises(ConfigError, match="model.conv_impl.*libdnnl-dev"):
      validate_transfer_config(load_config(default_config(), [
          "model.family='resnet18'", "model.conv_impl='onednn'"]))
    return
  original = resnet18.resolve_impl
  monkeypatch.setattr(resnet18, "resolve_impl",
                      lambda impl, *a: "onednn" if impl == "onednn" else original(impl, *a))
  _, params = classifier()
  params = randomised_statistics(params)
  b = batch()
  models = {impl: build_classifier(resnet_cfg(conv_impl=impl), 5) for impl in ("onednn", "xla")}

  def outputs(params, x, y, model):
    def loss(p):
      logits, state = apply_train(model, p, x)
      return cross_entropy(logits, y)[0], (logits, state)
    return jax.grad(loss, has_aux=True)(params)

  out = {impl: jax.jit(outputs, static_argnums=3)(params, b["image"], b["label"], model)
         for impl, model in models.items()}
  for a, ref in zip(jax.tree.leaves(out["onednn"]), jax.tree.leaves(out["xla"])):
    np.testing.assert_allclose(a, ref, rtol=1e-3, atol=1e-4)  # 18 BatchNorms amplify noise
  text = jax.jit(outputs, static_argnums=3).lower(params, b["image"], b["label"],
                                                  models["onednn"]).as_text()
  assert text.count("aetl_onednn_conv_Forward") >= 20  # every convolution of the network


@pytest.mark.slow
def test_im2col_and_xla_convolutions_are_the_same_resnet():
  """CPU's default convolution (im2col) and XLA's: the same training-mode logits, running
  statistics and gradients from the same tree (without torch: the test above needs it)."""
  _, params = classifier()
  params = randomised_statistics(params)
  b = batch()
  models = {impl: build_classifier(resnet_cfg(conv_impl=impl), 5) for impl in ("im2col", "xla")}

  @quick_jit
  def outputs(params, x, y):
    out = {}
    for impl, model in models.items():
      def loss(p, model=model):
        logits, state = apply_train(model, p, x)
        return cross_entropy(logits, y)[0], (logits, state)
      out[impl] = jax.grad(loss, has_aux=True)(params)
    return out

  out = outputs(params, b["image"], b["label"])
  for a, ref in zip(jax.tree.leaves(out["im2col"]), jax.tree.leaves(out["xla"])):
    np.testing.assert_allclose(a, ref, rtol=1e-3, atol=1e-4)  # 18 BatchNorms amplify float noise


# --- the converter's errors (no torch needed) --------------------------------------------


def _state_dict_of(tree):
  """torchvision-style keys and layouts of a Flax tree (the converter's inverse)."""
  out = {}
  for path, x in zip(tree_paths(tree), jax.tree.leaves(tree)):
    *mods, leaf = path.split("/")
    x = np.asarray(x)
    if leaf == "kernel":
      x = x.transpose(3, 2, 0, 1) if x.ndim == 4 else x.T
    out[".".join([*mods, {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)])] = x
    if leaf == "running_var":
      out[".".join([*mods, "num_batches_tracked"])] = np.asarray(3)
  return out


def _full():
  """ResNet-18's tree with a different random value in every element (a wrong transpose or
  mapping shows); drawn with NumPy from the shapes (an eager init takes seconds)."""
  fm = ResNet18(num_classes=3, input_norm="none")
  shapes = tree_of(jax.eval_shape(lambda: fm.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))))
  rng = np.random.RandomState(0)
  return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)


def test_converter_round_trip_and_key_errors():
  tree = _full()
  sd = _state_dict_of(tree)
  assert len(sd) == 122  # torchvision resnet18's state_dict has 122 entries
  assert tree_equal(convert_state_dict(sd, tree), tree)
  missing = {k: v for k, v in sd.items() if k != "layer2.1.bn1.running_var"}
  with pytest.raises(ValueError, match=r"missing keys: layer2\.1\.bn1\.running_var"):
    convert_state_dict(missing, tree)
  with pytest.raises(ValueError, match=r"unexpected keys: layer5\.0\.conv1\.weight"):
    convert_state_dict({**sd, "layer5.0.conv1.weight": np.zeros(1)}, tree)
  wrong = {**sd, "layer3.0.conv2.weight": np.zeros((256, 128, 3, 3), np.float32)}
  with pytest.raises(ValueError, match=r"layer3\.0\.conv2\.weight.*\(256, 128, 3, 3\).*"
                                       r"layer3/0/conv2/kernel needs \(3, 3, 256, 256\)"):
    convert_state_dict(wrong, tree)


def test_weights_errors_say_what_is_valid_and_how_to_install(monkeypatch):
  for bad in ("imagenet", "torchvision:IMAGENET1K_V9", "checkpoint:"):
    with pytest.raises(ValueError, match="torchvision:IMAGENET1K_V1.*checkpoint:DIR"):
      check_weights(bad)
  check_weights("torchvision:IMAGENET1K_V1")
  monkeypatch.setitem(sys.modules, "torchvision", None)  # not installed
  with pytest.raises(RuntimeError, match=r"needs torchvision.*pip install 'aetl_jax\[torch\]'"):
    torchvision_state_dict()

  def offline(weights):
    raise OSError(f"<urlopen error [Errno -3] Temporary failure in name resolution> {weights}")
  fake = types.SimpleNamespace(models=types.SimpleNamespace(resnet18=offline))
  monkeypatch.setitem(sys.modules, "torchvision", fake)
  with pytest.raises(RuntimeError, match="could not download.*need internet"):
    torchvision_state_dict()


# --- BatchNorm statistics through the engine -------------------------------------------


@functools.lru_cache(maxsize=None)
def _loss(model):  # one function per model: equal phases share their compiled programs
  return OBJECTIVES.get("classification").fn(model, None)


def _phase(model, rules, epochs=1, name="train", optimizer="adam", lr=1e-2):
  loss = _loss(model)
  return Phase(name, loss, (("labelled", "labelled", 8),), epochs,
               Optim(learning_rate=lr, schedule="constant", optimizer=optimizer), tuple(rules))


def _stem_batch_mean(params, x):
  """bn1's batch mean, computed from the definition (grey → RGB, ImageNet norm, 7×7/2 conv)."""
  x = jnp.repeat(x, 3, -1)
  x = (x - jnp.asarray([0.485, 0.456, 0.406])) / jnp.asarray([0.229, 0.224, 0.225])
  y = jax.lax.conv_general_dilated(x, params["encoder"]["conv1"]["kernel"], (2, 2),
                                   ((3, 3), (3, 3)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y.mean((0, 1, 2))


@pytest.mark.slow
def test_trainable_blocks_update_statistics_and_frozen_blocks_keep_them():
  model, params = classifier()
  params = randomised_statistics(params)
  b = batch()
  rules = (("encoder/layer1/.*", FROZEN), (".*", 1.0))
  out, _ = run_phases([_phase(model, rules)], params, {"labelled": b}, jax.random.PRNGKey(0),
                      runtime=RUNTIME)
  enc0, enc1 = params["encoder"], out["encoder"]
  assert tree_equal(enc1["layer1"], enc0["layer1"])  # weights and statistics of the frozen block
  expected = 0.9 * enc0["bn1"]["running_mean"] + 0.1 * _stem_batch_mean(params, b["image"])
  np.testing.assert_allclose(enc1["bn1"]["running_mean"], expected, rtol=1e-4, atol=1e-5)
  for block in ("layer2", "layer3", "layer4"):
    assert not np.allclose(enc1[block]["0"]["bn1"]["running_var"],
                           enc0[block]["0"]["bn1"]["running_var"])
  # statistics are never differentiated: frozen or not, no optimiser state holds them
  assert not np.allclose(enc1["conv1"]["kernel"], enc0["conv1"]["kernel"])


@pytest.mark.slow
def test_a_frozen_block_normalises_with_its_running_statistics():
  """With the encoder frozen, the training loss is the cross-entropy of the inference-mode
  logits; with it trainable, batch statistics make it differ."""
  model, params = classifier()
  params = randomised_statistics(params)
  b = batch()
  logits = apply(model, params, b["image"])  # inference mode
  expected = float(jnp.mean(jax.nn.logsumexp(logits, -1)
                            - jnp.take_along_axis(logits, b["label"][:, None], 1)[:, 0]))
  frozen = (("encoder/.*", FROZEN), ("head/.*", 1.0))
  out, rows = run_phases([_phase(model, frozen)], params, {"labelled": b}, jax.random.PRNGKey(0),
                         runtime=RUNTIME)
  assert rows[0]["loss"] == pytest.approx(expected, rel=1e-5)
  assert tree_equal(out["encoder"], params["encoder"])
  _, rows = run_phases([_phase(model, ((".*", 1.0),))], params, {"labelled": b},
                       jax.random.PRNGKey(0), runtime=RUNTIME)
  assert abs(rows[0]["loss"] - expected) > 1e-3


@pytest.mark.slow
def test_mark_frozen_renames_only_frozen_statistics():
  _, params = classifier()
  trainable = jax.tree_util.tree_map_with_path(
      lambda p, _: not "/".join(str(k.key) for k in p).startswith("encoder/layer2"), params)
  marked = mark_frozen(params, trainable)
  assert set(marked["encoder"]["layer2"]["0"]["bn1"]) == {"scale", "bias", "frozen_running_mean",
                                                          "frozen_running_var"}
  assert set(marked["encoder"]["layer3"]["0"]["bn1"]) == {"scale", "bias", "running_mean",
                                                          "running_var"}
  assert sum(jax.tree.leaves(statistics_mask(params))) == 2 * 20  # 20 BatchNorms


@pytest.mark.slow
def test_vmapped_seeds_carry_statistics_like_separate_runs():
  model = classifier()[0]
  seeds = [randomised_statistics(classifier(seed=s)[1], seed=s) for s in (0, 1)]
  data = [{"labelled": batch(16, seed=s)} for s in (0, 1)]
  rngs = [jax.random.PRNGKey(10 + s) for s in (0, 1)]
  # SGD: Adam's first steps are sign-like and amplify float noise in near-zero gradients
  rules = (("encoder/layer1/.*", FROZEN), (".*", 1.0))
  phases = [_phase(model, rules, 2, optimizer="sgd", lr=1e-4)]
  stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
  vparams, _ = run_phases_vmapped(phases, stack(seeds), stack(data), jnp.stack(rngs),
                                  runtime=RUNTIME)
  for k in (0, 1):
    alone, _ = run_phases(phases, seeds[k], data[k], rngs[k], runtime=RUNTIME)
    for a, v in zip(jax.tree.leaves(alone), jax.tree.leaves(jax.tree.map(lambda x: x[k], vparams))):
      np.testing.assert_allclose(np.asarray(v), np.asarray(a), rtol=1e-3, atol=1e-4)
    assert not np.allclose(alone["encoder"]["bn1"]["running_mean"],
                           seeds[k]["encoder"]["bn1"]["running_mean"])


@pytest.mark.slow
def test_statistics_survive_checkpoints_resume_and_the_encoder_transplant(tmp_path):
  from aetl_jax.transfer.encoder import load_encoder
  model, params = classifier()
  b = {"labelled": batch(16)}
  phases = [_phase(model, ((".*", 1.0),), epochs=2)]
  whole, _ = run_phases(phases, params, b, jax.random.PRNGKey(0), runtime=RUNTIME)
  store = CheckpointStore(tmp_path / "ckpt", every=1)
  run_phases([_phase(model, ((".*", 1.0),), epochs=1)], params, b, jax.random.PRNGKey(0),
             runtime=RUNTIME, store=store)  # "killed" after epoch 1 of 2
  resumed, _ = run_phases(phases, params, b, jax.random.PRNGKey(0), runtime=RUNTIME,
                          store=CheckpointStore(tmp_path / "ckpt", every=1))
  for a, r in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed)):
    np.testing.assert_allclose(np.asarray(r), np.asarray(a), rtol=1e-5, atol=1e-6)
  config = ml_collections.ConfigDict({"model": resnet_cfg(), "transfer": {"reinit": ()}})
  target, template = classifier(num_classes=3, seed=5)
  _, encoder, _ = load_encoder(config, tmp_path / "ckpt", template)
  assert tree_equal(encoder, resumed["encoder"])
  assert not np.allclose(encoder["layer4"]["1"]["bn2"]["running_var"], 1.0)


# --- strategies on torchvision's names ---------------------------------------------------


def _context(name, **keys):
  from aetl_jax.strategies.registry import STRATEGIES, StrategyContext
  model, params = classifier() if name != "backbone_ae" else _ae_classifier()
  cfg = ml_collections.ConfigDict(dict(epochs=3, batch_size=8, learning_rate=1e-3,
                                       optimizer="adam", weight_decay=0.0, schedule="cosine",
                                       warmup_epochs=0, augment=(), wd_rules=(),
                                       **STRATEGIES.get(name).defaults))
  cfg.update(keys)
  return StrategyContext(name, cfg, model, params, Optim.from_config(cfg))


def _ae_classifier():
  model = build_model(resnet_cfg(), SHAPE, "autoencoder_classifier", 5)
  return model, tree_of(model.init(jax.random.PRNGKey(0), jnp.zeros((1, *SHAPE)),
                                   method="init_all"))


def _frozen_blocks(phase, params):
  from aetl_jax.core.rules import trainable_mask
  mask = trainable_mask(params, phase.rules)
  return sorted(b for b in params["encoder"]
                if not any(jax.tree.leaves(mask["encoder"][b])))


def test_block_strategies_use_torchvision_block_names():
  from aetl_jax.strategies.registry import build_strategy
  ctx = _context("partial", partial_freeze_blocks=3)
  assert ctx.blocks() == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]
  (phase,) = build_strategy("partial", ctx).phases
  assert _frozen_blocks(phase, ctx.params) == ["bn1", "conv1", "layer1"]
  ctx = _context("gradual_unfreeze", unfreeze_epochs=1)
  phases = build_strategy("gradual_unfreeze", ctx).phases
  assert [len(_frozen_blocks(p, ctx.params)) for p in phases] == [6, 5, 4, 3, 2, 1, 0]
  assert _frozen_blocks(phases[2], ctx.params) == ["bn1", "conv1", "layer1", "layer2"]
  ctx = _context("layerwise", layer_decay=0.5)
  (phase,) = build_strategy("layerwise", ctx).phases
  assert dict(phase.rules)["encoder/layer4/.*"] == 0.5
  assert dict(phase.rules)["encoder/conv1/.*"] == 0.5 ** 6


def test_frozen_backbone_recipe_phases():
  from aetl_jax.strategies.registry import build_strategy
  ctx = _context("frozen_backbone")
  head, finetune = build_strategy("frozen_backbone", ctx).phases
  assert head.subtree == "head" and head.epochs == 3  # the frozen backbone's features cached
  assert (head.optim.optimizer, head.optim.learning_rate, head.optim.momentum,
          head.optim.nesterov, head.optim.schedule) == ("sgd", 1e-3, 0.9, False, "constant")
  assert finetune.subtree is None and _frozen_blocks(finetune, ctx.params) == []
  assert finetune.optim.learning_rate == 1e-4 and finetune.epochs == 10
  ctx = _context("frozen_backbone", recipe_ft_epochs=0)
  assert len(build_strategy("frozen_backbone", ctx).phases) == 1


@pytest.mark.slow
def test_backbone_ae_reconstructs_then_finetunes_and_trains_on_the_pool():
  from aetl_jax.core.rules import trainable_mask
  from aetl_jax.strategies.registry import build_strategy
  ctx = _context("backbone_ae", ae_epochs=2)
  strategy = build_strategy("backbone_ae", ctx)
  reconstruct, finetune = strategy.phases
  assert strategy.init == "pretrained" and reconstruct.epochs == 2
  assert reconstruct.streams == ("target_unlabelled",)
  m1, m2 = (trainable_mask(ctx.params, p.rules) for p in (reconstruct, finetune))
  assert not any(jax.tree.leaves(m1["head"])) and all(jax.tree.leaves(m1["decoder"]))
  assert not any(jax.tree.leaves(m2["decoder"])) and all(jax.tree.leaves(m2["encoder"]))
  params = randomised_statistics(ctx.params)
  data = {"target_unlabelled": {"image": batch(8)["image"]}, "target_labelled": batch(8)}
  ends = {}
  out, rows = run_phases(strategy.phases, params, data, jax.random.PRNGKey(0), runtime=RUNTIME,
                         on_phase_end=lambda name, _, end: ends.setdefault(name, end))
  assert [r["phase"] for r in rows] == ["reconstruct"] * 2 + ["finetune"] * 3
  assert "mse" in rows[0] and "accuracy" in rows[-1]
  assert not np.allclose(out["encoder"]["bn1"]["running_mean"],
                         params["encoder"]["bn1"]["running_mean"])
  # the reconstruction trained the decoder; fine-tuning must not move it
  assert not tree_equal(ends["reconstruct"]["decoder"], params["decoder"])
  assert tree_equal(out["decoder"], ends["reconstruct"]["decoder"])


# --- model.weights and bad input --------------------------------------------------------


def test_weights_from_another_runs_checkpoint(tmp_path):
  from aetl_jax.engine import checkpoint
  from aetl_jax.transfer.encoder import backbone_weights
  _, source = classifier(seed=3)
  source = randomised_statistics(source)
  store = CheckpointStore(tmp_path / "src" / "pretrain" / "checkpoints")
  store.save(4, {"params": source})
  store.close()
  checkpoint.write_sidecar(tmp_path / "src" / "pretrain" / "checkpoints", {"family": "resnet18"})
  _, target = classifier(seed=0, code_dim=6)  # a code layer the source lacks keeps its init
  got = backbone_weights(resnet_cfg(weights=f"checkpoint:{tmp_path / 'src'}", code_dim=6),
                         target["encoder"], tmp_path / "work")
  assert tree_equal({k: v for k, v in got.items() if k != "code"}, source["encoder"])
  assert tree_equal(got["code"], target["encoder"]["code"])
  with pytest.raises(Exception, match="holds a 'mlp' encoder, not 'resnet18'"):
    checkpoint.write_sidecar(tmp_path / "src" / "pretrain" / "checkpoints", {"family": "mlp"})
    backbone_weights(resnet_cfg(weights=f"checkpoint:{tmp_path / 'src'}"), target["encoder"],
                     tmp_path / "work")


@pytest.mark.parametrize("override, message", [
    ("objective.name='contractive'", "does not update BatchNorm statistics.*valid: "),
    ("model.weights='imagenet'", "model.weights='imagenet' is not valid"),
    ("model.input_norm='zscore'", "model.input_norm.*valid: imagenet, none"),
    ("pretrain.epochs=0", "pretrain.epochs.*positive"),
])
def test_bad_backbone_configs_fail_before_training(override, message):
  from aetl_jax import api
  from tests.conftest import ROOT
  config = api.load_config(ROOT / "experiments" / "olivetti_backbone.py", [override])
  with pytest.raises(Exception, match=message):
    api.validate(config)


def test_zero_pretraining_epochs_are_valid_with_weights():
  from aetl_jax import api
  from tests.conftest import ROOT
  api.validate(api.load_config(ROOT / "experiments" / "olivetti_backbone.py", [
      "model.weights='torchvision:IMAGENET1K_V1'", "pretrain.epochs=0"]))


@pytest.mark.slow
def test_torchvision_weights_are_converted_once_and_cached_with_orbax(tmp_path, monkeypatch):
  """torchvision faked by a module whose resnet18 returns a known state_dict: the encoder gets
  it (fc dropped), and a rerun reads the Orbax copy without torchvision."""
  from aetl_jax.transfer.encoder import backbone_weights
  full = _full()
  full["fc"] = {"kernel": jnp.ones((512, 1000)), "bias": jnp.zeros(1000)}
  sd = {k: _torch_tensor(v) for k, v in _state_dict_of(full).items()}
  asked = []

  def resnet18(weights):
    asked.append(weights)
    return types.SimpleNamespace(state_dict=lambda: sd)
  monkeypatch.setitem(sys.modules, "torchvision",
                      types.SimpleNamespace(models=types.SimpleNamespace(resnet18=resnet18)))
  _, target = classifier(code_dim=4)
  m = resnet_cfg(weights="torchvision:IMAGENET1K_V1", code_dim=4)
  got = backbone_weights(m, target["encoder"], tmp_path)
  expected = {k: v for k, v in full.items() if k != "fc"}
  assert tree_equal({k: v for k, v in got.items() if k != "code"}, expected)
  assert tree_equal(got["code"], target["encoder"]["code"]) and asked == ["IMAGENET1K_V1"]
  monkeypatch.setitem(sys.modules, "torchvision", None)
  again = backbone_weights(m, target["encoder"], tmp_path)
  assert tree_equal(again, got) and (tmp_path / "pretrain" / "backbone").is_dir()


class _torch_tensor:
  """What the converter reads of a torch tensor: ``.detach().cpu().numpy()``."""

  def __init__(self, x):
    self.x = np.asarray(x)

  def detach(self):
    return self

  def cpu(self):
    return self

  def numpy(self):
    return self.x


@pytest.mark.slow
def test_zero_epochs_make_the_loaded_backbone_the_pretrained_encoder(tmp_path):
  from aetl_jax import api
  from aetl_jax.tasks.pretrain import checkpoint_dir, pretrain
  from aetl_jax.transfer.encoder import load_encoder
  from tests.conftest import ROOT
  _, source = classifier(seed=7)
  source = randomised_statistics(source)
  store = CheckpointStore(tmp_path / "src" / "pretrain" / "checkpoints")
  store.save(2, {"params": source})
  store.close()
  config = api.load_config(ROOT / "experiments" / "olivetti_backbone.py", [
      f"model.weights='checkpoint:{tmp_path / 'src'}'", "pretrain.epochs=0",
      "model.decoder_channels=(64,32)"])
  api.validate(config)
  images = np.random.RandomState(0).rand(8, *SHAPE).astype(np.float32)
  labels = np.arange(8, dtype=np.int32) % 5
  for _ in range(2):  # the rerun finds the step-0 checkpoint
    _, params, history = pretrain(config, images, images, tmp_path / "work", progress=False,
                                  train_labels=labels, num_classes=5)
    assert history == [] and tree_equal(params["encoder"], source["encoder"])
  _, template = classifier(num_classes=3)
  step, encoder, _ = load_encoder(config, checkpoint_dir(tmp_path / "work"), template)
  assert step == 0 and tree_equal(encoder, source["encoder"])


# --- the CPU kernels of the ResNet-18 step: pooling, BatchNorm, the per-shape conv table ---


@pytest.mark.parametrize("shape,window,strides,padding", [
    ((2, 9, 9, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ((3, 8, 10, 2), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ((2, 7, 7, 4), (2, 2), (2, 2), ((0, 0), (0, 0))),
    ((1, 6, 5, 2), (3, 2), (1, 2), ((1, 1), (0, 1)))])
def test_max_pool_equals_flax_in_values_and_gradients_ties_included(shape, window, strides,
                                                                    padding):
  import flax.linen as nn

  from aetl_jax.models.kernels import max_pool
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  for inputs in (x, jax.nn.relu(x), jnp.round(x)):  # ReLU'd and rounded: many tied maxima
    ref, ref_vjp = jax.vjp(lambda v: nn.max_pool(v, window, strides, padding), inputs)
    out, out_vjp = jax.vjp(lambda v: max_pool(v, window, strides, padding), inputs)
    dy = jax.random.normal(jax.random.PRNGKey(1), ref.shape)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_allclose(out_vjp(dy)[0], ref_vjp(dy)[0], atol=1e-6)


def test_batch_norm_equals_the_plain_expression_in_values_and_gradients():
  from aetl_jax.models.kernels import batch_norm

  def plain(x, scale, bias):
    mean = jnp.mean(x, (0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), (0, 1, 2))
    return (x - mean) * (jax.lax.rsqrt(var + 1e-5) * scale) + bias, mean, var

  x = 2.0 * jax.random.normal(jax.random.PRNGKey(0), (4, 5, 6, 3)) + 1.0
  scale, bias = jnp.array([1.0, 2.0, 0.5]), jnp.array([0.1, 0.0, -1.0])
  ref, ref_vjp = jax.vjp(plain, x, scale, bias)
  out, out_vjp = jax.vjp(batch_norm, x, scale, bias)
  for a, b in zip(out, ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # cotangents on the statistics too (the running averages never send one; others might)
  cotangents = tuple(jax.random.normal(jax.random.PRNGKey(i), r.shape) for i, r in enumerate(ref))
  for a, b in zip(out_vjp(cotangents), ref_vjp(cotangents)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _entry(**kw):
  base = dict(backend="cpu", kernel=3, stride=1, batch=32, out=16, cin=64, cout=64,
              ms={"xla": 1.0, "patches": 2.0})
  return {**base, **kw}


def test_conv_table_takes_the_nearest_entry_of_the_same_kernel_stride_and_map_size():
  from aetl_jax.models.conv_table import measured_choice
  entries = (_entry(), _entry(out=2, cin=512, cout=512, ms={"xla": 9.0, "patches": 1.0}),
             _entry(kernel=1, ms={"xla": 5.0, "patches": 1.0}),
             _entry(batch=256, ms={"xla": 5.0, "patches": 1.0}))
  pick = functools.partial(measured_choice, ("xla", "patches"), backend="cpu", entries=entries)
  assert pick(batch=32, out=16, cin=64, cout=64, kernel=3, stride=1) == "xla"
  assert pick(batch=48, out=16, cin=96, cout=64, kernel=3, stride=1) == "xla"  # nearest: batch 32
  assert pick(batch=200, out=16, cin=64, cout=64, kernel=3, stride=1) == "patches"  # batch 256
  assert pick(batch=32, out=2, cin=512, cout=512, kernel=3, stride=1) == "patches"
  assert pick(batch=32, out=16, cin=64, cout=64, kernel=1, stride=1) == "patches"
  assert pick(batch=32, out=16, cin=64, cout=64, kernel=3, stride=2) is None  # none measured
  assert pick(batch=32, out=4, cin=64, cout=64, kernel=3, stride=1) is None  # other map size
  assert pick(batch=32, out=16, cin=3, cout=64, kernel=3, stride=1) is None  # too far
  assert measured_choice(("xla", "narrow"), backend="cpu", entries=entries, batch=32, out=16,
                         cin=64, cout=64, kernel=3, stride=1) is None  # 'narrow' not measured
  assert pick(backend="gpu", batch=32, out=16, cin=64, cout=64, kernel=3, stride=1) is None


def test_the_shipped_conv_table_is_whole_and_resnet_auto_follows_a_table(tmp_path, monkeypatch):
  import json

  from aetl_jax.models import conv_table
  from aetl_jax.models.resnet18 import resolve_impl
  shipped = json.loads(conv_table.TABLE_FILE.read_text())
  assert shipped["command"] and shipped["machine"] and shipped["layers"]
  for e in shipped["layers"]:
    assert e["best"] == min(e["ms"], key=e["ms"].get), e
    assert e["pixels"] == e["batch"] * e["out"] ** 2, e
  from aetl_jax.bench.conv_layers import RESNET_SIZES, resnet18_layers
  for size, batch in RESNET_SIZES:  # every layer the shipped sizes run is in the table
    for in_size, cin, cout, k, stride, _ in resnet18_layers(size):
      assert any(
          e["batch"] == batch and e["size"] == in_size and (e["cin"], e["cout"], e["kernel"],
                                                            e["stride"]) == (cin, cout, k, stride)
          for e in shipped["layers"]), (size, in_size, cin, cout, k, stride)
  if jax.default_backend() != "cpu":
    pytest.skip("the table is consulted on CPU only")
  from aetl_jax.models import onednn
  impl_of = {"xla": "xla", "patches": "im2col", "onednn": "onednn"}
  for usable in (False, True):  # without oneDNN's handlers, and with them
    monkeypatch.setattr(onednn, "usable", lambda usable=usable: usable)
    for ms in ({"xla": 1.0, "patches": 3.0}, {"xla": 3.0, "patches": 1.0},
               {"xla": 1.0, "patches": 3.0, "onednn": 2.0},
               {"xla": 3.0, "patches": 2.0, "onednn": 1.0}):
      path = tmp_path / "table.json"
      path.write_text(json.dumps({"layers": [_entry(ms=ms)]}))
      conv_table.load.cache_clear()
      monkeypatch.setenv(conv_table.ENV, str(path))
      fastest = min((c for c in ms if usable or c != "onednn"), key=ms.get)
      if usable and "onednn" not in ms and fastest == "xla":
        fastest = "onednn"  # a table without oneDNN's column: it takes XLA's layers
      assert resolve_impl("auto", (32, 16, 16, 64), (3, 3, 64, 64), 1) == impl_of[fastest], ms
      assert resolve_impl("auto", (32, 16, 16, 64), (5, 5, 64, 64), 1) == "im2col"  # unmeasured
  monkeypatch.setenv(conv_table.ENV, str(tmp_path / "absent.json"))
  assert resolve_impl("auto", (32, 16, 16, 64), (3, 3, 64, 64), 1) == "im2col"
  (tmp_path / "bad.json").write_text("{not json")
  monkeypatch.setenv(conv_table.ENV, str(tmp_path / "bad.json"))
  with pytest.raises(ValueError, match="conv_layers --table --write"):
    resolve_impl("auto", (32, 16, 16, 64), (3, 3, 64, 64), 1)


@pytest.mark.slow
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's copy insertion")
def test_the_per_batch_step_copies_no_donated_kernel_before_updating_it():
  """The engine's step donates its state; with the family's options Adam updates each
  convolution kernel in place, without first copying it (42.6 MiB a step at 64 px)."""
  import re
  from aetl_jax.engine.phase import build_program, tree_spec
  model, params = classifier()
  prog = build_program(_phase(model, ((".*", 1.0),)), tree_spec(params), 8, RUNTIME)
  args = (prog.init_state(params), {"labelled": batch(8)}, jax.random.PRNGKey(0))
  def kernel_copies(options):
    text = jax.jit(prog.step, donate_argnums=0, compiler_options=options).lower(
        *args).compile().as_text()
    entry = text[text.index("\nENTRY"):]
    return len(re.findall(r"copy\(%state_params_\S*kernel", entry))
  option = "xla_cpu_copy_insertion_use_region_analysis"
  assert RUNTIME.options.get(option) is True
  assert kernel_copies(RUNTIME.options) == 0
  without = {k: v for k, v in RUNTIME.options.items() if k != option}
  assert kernel_copies(without) >= 20  # XLA's default copies every one: the option still pays


def test_resnet18_trains_one_call_per_batch_from_64_px_with_its_own_options_on_cpu():
  from aetl_jax.engine.compiler import train_compiler_options
  runner = lambda shape: make_runtime(family="resnet18", backend="cpu", input_shape=shape).runner
  # XLA's convolutions are slow inside a scan (jax#12868); small inputs: scan + im2col
  assert runner(None) == runner((64, 64, 3)) == runner((224, 224, 1)) == "per_batch"
  assert runner((32, 32, 1)) == runner((63, 80, 3)) == "scan"
  assert make_runtime(family="mlp", backend="cpu", input_shape=(224, 224, 3)).runner == "scan"
  if jax.default_backend() == "cpu":  # the model's 'auto' agrees: im2col below 64 px
    import unittest.mock
    from aetl_jax.models import resnet18
    seen = []
    with unittest.mock.patch.object(resnet18, "patches_conv",
                                    side_effect=lambda *a: seen.append(1) or
                                    resnet18.lax.conv_general_dilated(
                                        a[0], a[1], a[2], "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))):
      jax.eval_shape(lambda: ResNet18(num_classes=3).init(jax.random.PRNGKey(0),
                                                          jnp.zeros((2, 32, 32, 1))))
    assert len(seen) == 20  # every convolution of the network
  # per batch: no copy of the donated kernels; from 160 px YNNPACK for dots and BatchNorm only
  regions = {"xla_cpu_copy_insertion_use_region_analysis": True}
  assert train_compiler_options("resnet18", "cpu", (64, 64, 3)) == regions
  options = train_compiler_options("resnet18", "cpu", (224, 224, 3))
  assert options.items() >= regions.items()
  assert "CONVOLUTION" not in options["xla_cpu_experimental_ynn_fusion_type"]
  assert "ELTWISE" in options["xla_cpu_experimental_ynn_fusion_type"]
  assert train_compiler_options("resnet18", "cpu", (32, 32, 3)) == {}  # scan + im2col: defaults
  assert make_runtime(family="resnet18", backend="cpu", input_shape=(32, 32, 3)).options is None
