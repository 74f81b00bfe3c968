"""The one training entry point: pretrain → Orbax checkpoint → transfer sweep → report.

Works on any labelled in-memory image dataset; experiment modules only choose
the data and the config. Every stage resumes from what ``workdir`` holds.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from aetl_jax.config import ConfigError
from aetl_jax.data.transfer_split import describe_split, draw_target_labels, make_transfer_split
from aetl_jax.models.registry import check_input_shape
from aetl_jax.evaluation.reconstruction import reconstruct, reconstruction_metrics
from aetl_jax.reporting.figures import summary_figure
from aetl_jax.reporting.tables import paired_differences, summarise, write_tables
from aetl_jax.training.pretrain import checkpoint_dir, pretrain
from aetl_jax.transfer.sweep import run_sweep
from aetl_jax.validation import validate_transfer_config

log = logging.getLogger(__name__)


def _split(config, labels):
  return make_transfer_split(labels, test_fraction=config.data.test_fraction,
                             source_fraction=config.data.source_fraction,
                             seed=config.data.split_seed)


def check_against_data(config, labels, num_classes: int, images_shape) -> None:
  """Config checks that need the data: the encoder fits the image shape and
  every budget fits the target pool."""
  validate_transfer_config(config)
  try:
    check_input_shape(config.model, images_shape)
  except ValueError as e:
    raise ConfigError(f"config key 'model': {e}") from None
  split = _split(config, labels)
  for budget in config.transfer.budgets:
    try:
      draw_target_labels(labels, split, per_class=budget,
                         val_per_class=config.transfer.val_per_class, seed=0,
                         num_classes=num_classes)
    except ValueError as e:
      raise ConfigError(f"config key 'transfer.budgets': {e} (the target pool after "
                        f"{config.transfer.val_per_class} validation labels per class)") from None


def run_transfer_experiment(config, workdir, *, images, labels, num_classes: int, title: str,
                            progress: bool = True) -> dict:
  """Runs every stage and writes artifacts into ``workdir``; returns a summary dict."""
  check_against_data(config, labels, num_classes, images.shape[1:])
  workdir = Path(workdir)
  split = _split(config, labels)
  (workdir / "data.json").write_text(json.dumps(describe_split(labels, split, num_classes), indent=2))

  model, params, pretrain_history = pretrain(config, images[split.source], images[split.test],
                                             workdir, progress=progress)
  recon = reconstruction_metrics(model, params, images[split.test])
  log.info("pretraining done: held-out reconstruction %s", recon)

  rows = run_sweep(config, workdir, images=images, labels=labels, split=split,
                   num_classes=num_classes, ckpt_dir=checkpoint_dir(workdir), progress=progress)
  strategies = list(config.transfer.strategies)
  budgets = list(config.transfer.budgets)
  wanted = {(b, s) for b in budgets for s in strategies}
  rows = [r for r in rows if (r["budget"], r["strategy"]) in wanted and r["seed"] < config.transfer.seeds]
  summary = summarise(rows)
  baseline = "scratch" if "scratch" in strategies else None
  paired = paired_differences(rows, baseline=baseline) if baseline else None
  caption = (f"{title}. Test accuracy, mean ± 95% CI over {config.transfer.seeds} seeds "
             f"(seeds vary the labelled subset and the initialisation). Pretraining: "
             f"{config.pretrain.epochs} epochs on {len(split.source)} unlabelled source images, "
             f"held-out reconstruction MSE {recon['mse']:.4f}, PSNR {recon['psnr']:.1f} dB.")
  table = write_tables(summary, workdir / "results", strategies=strategies, budgets=budgets,
                       caption=caption, paired=paired, baseline=baseline)
  test_images = images[split.test][: config.report.num_figure_images]
  figure = summary_figure(workdir / "results" / "summary.png", originals=test_images,
                          reconstructions=reconstruct(model, params, test_images),
                          summary=summary, strategies=strategies, budgets=budgets, title=title)
  return {"table": table, "summary": summary, "reconstruction": recon, "figure": str(figure),
          "pretrain_history": pretrain_history, "rows": rows}
