"""Label budgets × strategies × seeds, resumable cell by cell.

Each finished cell is one JSON line in ``results/cells.jsonl``; a rerun skips
cells already there. The pretrained encoder is read once from the Orbax
checkpoint (encoder subtree only) and transplanted into every classifier.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from aetl_jax import checkpointing
from aetl_jax.data.splits import class_counts
from aetl_jax.data.transfer_split import TransferSplit, draw_target_labels
from aetl_jax.models.registry import build_classifier
from aetl_jax.training.loop import resolve_runner
from aetl_jax.training.metrics_log import JsonlLog
from aetl_jax.training.pretrain import ENCODER_SUBTREE
from aetl_jax.transfer.finetune import OptimSettings, run_strategy, run_strategy_seeds
from aetl_jax.transfer.rules import reinit_paths
from aetl_jax.transfer.strategies import build_strategy

log = logging.getLogger(__name__)


def cells_log(workdir) -> JsonlLog:
  return JsonlLog(Path(workdir) / "results" / "cells.jsonl")


def load_encoder(config, model, ckpt_dir, input_shape):
  """Initial classifier params and the encoder restored from ``ckpt_dir``."""
  sidecar = checkpointing.read_sidecar(ckpt_dir)
  if sidecar is not None and sidecar.get("family") != config.model.family:
    raise checkpointing.CheckpointError(
        f"checkpoint in {ckpt_dir} holds a '{sidecar.get('family')}' encoder but the target model "
        f"is '{config.model.family}'; use the same model.family for pretraining and transfer")
  template = model.init(jax.random.PRNGKey(0), jnp.zeros((1, *input_shape)))["params"]
  # Re-init patterns are full classifier paths ('encoder/block_2/.*') like every other rule.
  reinit = [p.removeprefix("encoder/") for p in
            reinit_paths({"encoder": template["encoder"]}, tuple(config.transfer.reinit))]
  if reinit:
    log.warning("transfer: re-initialising instead of loading: %s", ", ".join(reinit))
  step, encoder = checkpointing.restore_subtree(ckpt_dir, template["encoder"], reinit=tuple(reinit),
                                                subtree=ENCODER_SUBTREE)
  return step, encoder, reinit


def run_sweep(config, workdir, *, images, labels, split: TransferSplit, num_classes: int,
              ckpt_dir, progress: bool = True) -> list[dict]:
  tcfg = config.transfer
  model = build_classifier(config.model, num_classes)
  input_shape = tuple(images.shape[1:])
  ckpt_step, pretrained_encoder, reinit = load_encoder(config, model, ckpt_dir, input_shape)
  opt = OptimSettings.from_config(tcfg, config.get("launch"), config.model.family)
  test = {"input": jax.device_put(images[split.test]), "label": jax.device_put(labels[split.test])}

  results = cells_log(workdir)
  histories = JsonlLog(Path(workdir) / "metrics" / "finetune.jsonl")
  results.repair()
  done_keys = {(r["budget"], r["strategy"], r["seed"]) for r in results.read()}
  # A history written just before a kill whose cell result was not: drop it.
  histories.keep(lambda r: (r["budget"], r["strategy"], r["seed"]) in done_keys)
  done = done_keys
  cells = [(b, s, seed) for b in tcfg.budgets for s in tcfg.strategies
           for seed in range(tcfg.seeds)]
  todo = [c for c in cells if c not in done]
  if done:
    log.info("sweep: %d of %d cells already finished, running %d", len(cells) - len(todo),
             len(cells), len(todo))
  def prepare(budget, name, seed):
    """Labelled data, initial params and rng of one cell."""
    train_idx, val_idx = draw_target_labels(labels, split, per_class=budget,
                                            val_per_class=tcfg.val_per_class,
                                            seed=tcfg.label_seed + 1000 * seed + budget,
                                            num_classes=num_classes)
    data = {name_: {"input": images[idx], "label": labels[idx]}
            for name_, idx in (("train", train_idx), ("val", val_idx))}
    init_key, train_key = jax.random.split(jax.random.PRNGKey(tcfg.seed_offset + seed))
    params = model.init(init_key, jnp.zeros((1, *input_shape)))["params"]
    strategy = build_strategy(name, tcfg, params["encoder"])
    if strategy.init == "pretrained":
      params = {**params, "encoder": pretrained_encoder}
    info = {"train_per_class": class_counts(labels, train_idx, num_classes),
            "val_size": int(len(val_idx))}
    return strategy, params, data, train_key, info

  def record(budget, name, cells_done):
    """Logs ``(seed, info, result, history, seconds)`` cells of one group in one write each.

    A kill never splits a vmapped group, so a resumed run reruns whole groups
    with the same program and gets bitwise the numbers of an uninterrupted run.
    """
    histories.extend([{"budget": budget, "strategy": name, "seed": seed, "history": history}
                      for seed, _, _, history, _ in cells_done])
    results.extend([{"budget": budget, "strategy": name, "seed": seed, **info,
                     "checkpoint_step": ckpt_step, "reinit": reinit,
                     "seconds": round(seconds, 3), **result}
                    for seed, info, result, _, seconds in cells_done])

  # Cells of one (budget, strategy) that are still to run; with vmap_seeds
  # they train together as one vmapped program.
  groups = {}
  for budget, name, seed in todo:
    groups.setdefault((budget, name), []).append(seed)
  # The vmapped program is one scan; where the runner resolves to per-batch
  # (conv families on CPU: convolutions inside a scan are ~20x slower there,
  # BENCHMARKS.md) the seeds run one after another instead.
  together = (tcfg.vmap_seeds and not tcfg.checkpoint_every
              and resolve_runner(opt.runner, opt.model_family) == "scan")
  bar = tqdm(total=len(todo), desc="transfer", disable=not progress, leave=False)
  for (budget, name), seeds in groups.items():
    if together and len(seeds) > 1:
      bar.set_postfix_str(f"{name} k={budget} seeds={seeds}", refresh=False)
      cells_k = [prepare(budget, name, seed) for seed in seeds]
      stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
      data = stack([c[2] for c in cells_k])
      data["test"] = jax.tree.map(lambda a: jnp.broadcast_to(a, (len(seeds), *a.shape)), test)
      start = time.perf_counter()
      _, res, hist = run_strategy_seeds(cells_k[0][0], model, stack([c[1] for c in cells_k]),
                                        data, opt, jnp.stack([c[3] for c in cells_k]),
                                        probe_cfg=tcfg)
      seconds = (time.perf_counter() - start) / len(seeds)
      record(budget, name, [(seed, c[4], r, h, seconds)
                            for seed, c, r, h in zip(seeds, cells_k, res, hist)])
      bar.update(len(seeds))
      continue
    for seed in seeds:
      bar.set_postfix_str(f"{name} k={budget} seed={seed}", refresh=False)
      strategy, params, data, train_key, info = prepare(budget, name, seed)
      data = {k: jax.device_put(v) for k, v in data.items()}
      data["test"] = test
      history = []
      start = time.perf_counter()
      cell_ckpt = None
      if tcfg.checkpoint_every:
        cell_ckpt = Path(workdir) / "transfer" / f"budget{budget}_{name}_seed{seed}"
      _, result = run_strategy(strategy, model, params, data, opt, train_key, probe_cfg=tcfg,
                               on_epoch=history.append, checkpoint_dir=cell_ckpt,
                               checkpoint_every=tcfg.checkpoint_every)
      record(budget, name, [(seed, info, result, history, time.perf_counter() - start)])
      bar.update(1)
  bar.close()
  return results.read()
