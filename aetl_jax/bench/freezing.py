"""Is frozen really free? Step time and memory of the ways to freeze an encoder.

    python -m aetl_jax.bench.freezing [--width 2048] [--batch 256] [--steps 64]

Compares, on one dense classifier (784 → width → width → width/2 → 256 → 10):

* ``masked``: full forward/backward, frozen leaves zeroed by
  ``optax.partition(..., set_to_zero())`` — gradients computed, then thrown away;
* ``partition``: the project's step — only the trainable partition is
  differentiated (frozen leaves are constants);
* ``cached``: linear probe on features computed once (head-only steps).

for a linear probe (whole encoder frozen) and for ``partial`` (first two
blocks frozen). Times are per optimizer step, median of repeats of a
``--steps``-step ``lax.scan`` epoch after warm-up; memory is XLA's estimate of
the compiled epoch's temporary buffers.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

from aetl_jax.bench.timing import compiled_stats, time_calls, write_json
from aetl_jax.models.autoencoder import Classifier
from aetl_jax.models.mlp import MLPEncoder
from aetl_jax.objectives.classification import make_classification_loss
from aetl_jax.engine.loop import make_epoch_fn
from aetl_jax.engine.state import TrainState
from aetl_jax.engine.step import make_train_step
from aetl_jax.core.rules import trainable_mask
from aetl_jax.strategies.base import HEAD_ONLY

PARTIAL = (("encoder/(block_0|block_1)/.*", "frozen"), (".*", 1.0))


def measure(name, loss_fn, tx, mask, params, data, batch, steps, repeats):
  step = make_train_step(loss_fn, tx, mask)
  epoch = make_epoch_fn(step, batch_size=batch, runner="scan")
  # The epoch donates its state: give it copies so `params` serves every mode.
  state = TrainState.create(jax.tree.map(jnp.copy, params), tx, mask)
  rng = jax.random.PRNGKey(0)
  stats = compiled_stats(epoch, state, data, rng)
  # XLA counts a loop body once, so FLOPs come from one jitted step.
  one_batch = jax.tree.map(lambda a: a[:batch], data)
  stats["flops"] = compiled_stats(jax.jit(step), state, one_batch, rng)["flops"]
  holder = {"state": state}

  def run():
    holder["state"], m = epoch(holder["state"], data, rng)
    return m

  t = time_calls(run, repeats=repeats)
  opt_leaves = sum(x.size for x in jax.tree.leaves(holder["state"].opt_state))
  return {"mode": name, "step_ms": 1e3 * t["median_s"] / steps, "opt_state_floats": int(opt_leaves),
          **{k: v for k, v in stats.items()}}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--width", type=int, default=2048)
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--steps", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--json", help="also write the rows to this file")
  args = parser.parse_args(argv)

  w = args.width
  model = Classifier(encoder=MLPEncoder(widths=(w, w, w // 2), code_dim=256), num_classes=10)
  n = args.batch * args.steps
  key = jax.random.PRNGKey(0)
  x = jax.random.uniform(key, (n, 28, 28, 1))
  y = jax.random.randint(key, (n,), 0, 10)
  params = model.init(key, x[:1])["params"]
  data = {"image": x, "label": y}
  full_apply = lambda p, inp, rng: model.apply({"params": p}, inp)
  loss_full = make_classification_loss(full_apply, role=None)
  adam = optax.adam(1e-3)

  rows = []
  for label, rules in (("linear_probe", HEAD_ONLY), ("partial", PARTIAL)):
    mask = trainable_mask(params, rules)
    labels = jax.tree.map(lambda m: "train" if m else "frozen", mask)
    masked_tx = optax.partition({"train": adam, "frozen": optax.set_to_zero()}, labels)
    rows.append({"strategy": label, **measure("masked (set_to_zero)", loss_full, masked_tx, None,
                                               params, data, args.batch, args.steps, args.repeats)})
    rows.append({"strategy": label, **measure("partition-only grads", loss_full, adam, mask, params,
                                               data, args.batch, args.steps, args.repeats)})
    if label == "linear_probe":
      features = jax.jit(lambda p, inp: model.apply({"params": p}, inp, method="encode"))
      feats = features(params, x).block_until_ready()
      feat_time = time_calls(lambda: features(params, x), repeats=args.repeats)["median_s"]
      head_apply = lambda h, f, rng: model.apply({"params": {"head": h}}, f,
                                                 method="classify_features")
      row = measure("cached features", make_classification_loss(head_apply, role=None), adam, None,
                    params["head"], {"image": feats, "label": y}, args.batch, args.steps,
                    args.repeats)
      row["feature_pass_ms"] = 1e3 * feat_time
      rows.append({"strategy": label, **row})

  print(f"backend={jax.default_backend()} devices={jax.device_count()} width={w} "
        f"batch={args.batch} steps/epoch={args.steps}")
  print(f"{'strategy':<13} {'mode':<22} {'step ms':>9} {'GFLOP/step':>11} {'temp MiB':>9} "
        f"{'opt floats':>11} {'vs masked':>10}")
  base = {}
  for r in rows:
    if r["mode"].startswith("masked"):
      base[r["strategy"]] = r
    b = base[r["strategy"]]
    speedup = b["step_ms"] / r["step_ms"]
    print(f"{r['strategy']:<13} {r['mode']:<22} {r['step_ms']:9.2f} "
          f"{r['flops'] / 1e9:11.3f} {r.get('temp_bytes', 0) / 2**20:9.1f} "
          f"{r['opt_state_floats']:11d} {speedup:9.1f}x")
  for r in rows:
    if "feature_pass_ms" in r:
      print(f"(one-time feature pass over {n} examples: {r['feature_pass_ms']:.1f} ms)")
  write_json(args.json, rows)
  return rows


if __name__ == "__main__":
  from aetl_jax.core.heap import start
  start()
  main()
