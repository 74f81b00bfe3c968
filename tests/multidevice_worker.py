"""Run by tests/test_launchers.py in a subprocess with 4 fake CPU devices.

Trains the same classifier for two epochs with every launcher, runner and
1, 2 and 4 devices, and prints the results as JSON.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from aetl_jax.data.digits import load_digits_arrays  # noqa: E402
from aetl_jax.evaluation.batched import batched_apply  # noqa: E402
from aetl_jax.models.autoencoder import Classifier  # noqa: E402
from aetl_jax.models.mlp import MLPEncoder  # noqa: E402
from aetl_jax.objectives.classification import make_classification_loss  # noqa: E402
from aetl_jax.engine.launchers import make_launcher  # noqa: E402
from aetl_jax.engine.loop import make_epoch_fn  # noqa: E402
from aetl_jax.engine.state import TrainState  # noqa: E402
from aetl_jax.engine.step import make_train_step  # noqa: E402
from aetl_jax.core.optim import make_optimizer  # noqa: E402
from aetl_jax.core.rules import trainable_mask  # noqa: E402
from aetl_jax.strategies.base import HEAD_ONLY  # noqa: E402


def main():
  assert jax.device_count() == 4, jax.devices()
  images, labels = load_digits_arrays()
  data = {"image": jnp.asarray(images[:520]), "label": jnp.asarray(labels[:520])}
  model = Classifier(encoder=MLPEncoder((32, 16), 8), num_classes=10)
  params = model.init(jax.random.PRNGKey(0), data["image"][:1])["params"]
  apply = lambda p, x, rng: model.apply({"params": p}, x)
  loss = make_classification_loss(apply, role=None)
  out = {}
  # Every launcher with 1, 2 and 4 devices and each runner (each pair of launcher and runner
  # at least once); the head-only rules on a subset.
  grid = {"all": (("jit", 1, "scan"), ("jit", 1, "per_batch"), ("pmap", 1, "scan"),
                  ("pmap", 2, "per_batch"), ("pmap", 4, "scan"), ("shard_map", 1, "scan"),
                  ("shard_map", 2, "per_batch"), ("shard_map", 4, "scan")),
          "head": (("jit", 1, "scan"), ("pmap", 4, "scan"), ("shard_map", 2, "per_batch"))}
  for rules_name, rules in (("all", ((".*", 1.0),)), ("head", HEAD_ONLY)):
    mask = trainable_mask(params, rules)
    for kind, n, runner in grid[rules_name]:
      launcher = make_launcher(kind, n)
      # SGD: linear in the gradients, so float reduction-order noise is not
      # amplified the way Adam amplifies it for near-zero gradients.
      tx = make_optimizer(learning_rate=5e-2, optimizer="sgd")
      step = make_train_step(loss, tx, mask, axis_name=launcher.axis_name)
      epoch = make_epoch_fn(step, batch_size=64, runner=runner, launcher=launcher)
      state = launcher.replicate(TrainState.create(jax.tree.map(jnp.copy, params), tx, mask))
      for e in range(2):
        state, metrics = epoch(state, data, jax.random.PRNGKey(e))
      final = launcher.unreplicate(state)
      out[f"{rules_name}/{kind}/{n}/{runner}"] = {
          "params": [np.asarray(x).tolist() for x in jax.tree.leaves(final.params)],
          "step": int(final.step), "loss": float(np.asarray(metrics["loss"]))}
  # Errors that must be clear.
  errors = {}
  for name, fn in (("batch", lambda: make_launcher("pmap", 4).check_batch_size(30)),
                   ("devices", lambda: make_launcher("shard_map", 8))):
    try:
      fn()
    except ValueError as e:
      errors[name] = str(e)
  # Padded, sharded evaluation equals one unbatched pass.
  predict = jax.jit(lambda p, x: model.apply({"params": p}, x))
  x = data["image"][:131]
  full = np.asarray(predict(params, x))
  sharded = np.asarray(batched_apply(predict, params, x, batch_size=24,
                                     launcher=make_launcher("shard_map", 4)))
  out["eval_max_abs_diff"] = float(np.max(np.abs(full - sharded)))
  out["eval_rows"] = int(sharded.shape[0])
  json.dump({"runs": out, "errors": errors, "batch_norm": batch_norm()}, sys.stdout)


def batch_norm():
  """One step per launcher of a small BatchNorm classifier built from ResNet-18's own layers
  (stem convolution + BatchNorm, one basic block of two): the stem BatchNorm's new running
  mean (its input does not depend on other BatchNorms) and the first layer1 running variance."""
  import flax.linen as nn
  from aetl_jax.core.statistics import statistics_mask
  from aetl_jax.models.resnet18 import BatchNorm, Conv, Stage
  from aetl_jax.models.variables import tree_of
  from aetl_jax.objectives.registry import OBJECTIVES

  class SmallResNet(nn.Module):
    @nn.compact
    def __call__(self, x, *, train: bool = False):
      x = Conv(16, (3, 3), (2, 2), padding=1, name="conv1")(x)
      x = nn.relu(BatchNorm(name="bn1")(x, train=train))
      x = Stage(16, 1, blocks=1, name="layer1")(x, train=train)
      return jnp.mean(x, axis=(1, 2))

  model = Classifier(encoder=SmallResNet(), num_classes=10)
  rng = np.random.RandomState(0)
  data = {"labelled": {"image": jnp.asarray(rng.rand(16, 16, 16, 1), jnp.float32),
                       "label": jnp.asarray(rng.randint(0, 10, 16), jnp.int32)}}
  params = tree_of(model.init(jax.random.PRNGKey(0), data["labelled"]["image"][:1]))
  stats = statistics_mask(params)
  mask = jax.tree.map(lambda s: not s, stats)
  loss = OBJECTIVES.get("classification").fn(model, None)
  out = {}
  for kind, n in (("jit", 1), ("pmap", 2), ("shard_map", 2)):
    launcher = make_launcher(kind, n)
    tx = make_optimizer(learning_rate=1e-3, optimizer="sgd")
    step = make_train_step(loss, tx, mask, axis_name=launcher.axis_name,
                           stats_mask=jax.tree.map(lambda _: True, stats))
    epoch = make_epoch_fn(step, feed=(("labelled", "labelled", 16),), runner="per_batch",
                          launcher=launcher)
    state = launcher.replicate(TrainState.create(jax.tree.map(jnp.copy, params), tx, mask))
    state, _ = epoch(state, data, jax.random.PRNGKey(0))
    enc = launcher.unreplicate(state).params["encoder"]
    out[kind] = {"stem_mean": np.asarray(enc["bn1"]["running_mean"]).tolist(),
                 "layer1_var": np.asarray(enc["layer1"]["0"]["bn1"]["running_var"]).tolist(),
                 "initial_mean": np.asarray(params["encoder"]["bn1"]["running_mean"]).tolist()}
  return out


if __name__ == "__main__":
  main()
