"""The one training entry point: pretrain → Orbax checkpoint → transfer sweep → report.

Works on any in-memory image data; experiment modules only choose the data
and the config. Every stage resumes from what ``workdir`` holds.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from aetl_jax.config import ConfigError
from aetl_jax.data.transfer_split import TransferData, draw_target_labels, make_transfer_split
from aetl_jax.evaluation.reconstruction import reconstruct, reconstruction_metrics
from aetl_jax.models.registry import check_input_shape
from aetl_jax.reporting.figures import summary_figure
from aetl_jax.reporting.tables import markdown_table, paired_differences, summarise, write_tables
from aetl_jax.training.launchers import is_main_process
from aetl_jax.training.pretrain import checkpoint_dir, pretrain
from aetl_jax.transfer.sweep import run_sweep
from aetl_jax.validation import validate_transfer_config

log = logging.getLogger(__name__)


def same_dataset_data(config, images, labels, num_classes: int, **description) -> TransferData:
  """Source and target from one labelled dataset: disjoint stratified splits."""
  split = make_transfer_split(labels, test_fraction=config.data.test_fraction,
                              source_fraction=config.data.source_fraction,
                              seed=config.data.split_seed)
  return TransferData(images[split.source], images, labels, split, num_classes, description)


def check_against_data(config, data: TransferData) -> None:
  """Config checks that need the data: the encoder fits the images and every
  budget fits the target pool."""
  validate_transfer_config(config)
  try:
    check_input_shape(config.model, data.images.shape[1:])
  except ValueError as e:
    raise ConfigError(f"config key 'model': {e}") from None
  for budget in config.transfer.budgets:
    try:
      draw_target_labels(data.labels, data.split, per_class=budget,
                         val_per_class=config.transfer.val_per_class, seed=0,
                         num_classes=data.num_classes)
    except ValueError as e:
      raise ConfigError(f"config key 'transfer.budgets': {e} (the target pool after "
                        f"{config.transfer.val_per_class} validation labels per class)") from None


def run_transfer_experiment(config, workdir, data: TransferData, *, title: str,
                            progress: bool = True) -> dict:
  """Runs every stage and writes artifacts into ``workdir``; returns a summary dict."""
  check_against_data(config, data)
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "data.json").write_text(json.dumps(data.describe(), indent=2))
  test_images = data.images[data.split.test]

  model, params, pretrain_history = pretrain(config, data.source_images, test_images, workdir,
                                             progress=progress, train_stream=data.source_stream,
                                             num_train=data.num_source)
  recon = reconstruction_metrics(model, params, test_images)
  log.info("pretraining done: held-out reconstruction %s", recon)

  rows = run_sweep(config, workdir, images=data.images, labels=data.labels, split=data.split,
                   num_classes=data.num_classes, ckpt_dir=checkpoint_dir(workdir),
                   progress=progress)
  strategies = list(config.transfer.strategies)
  budgets = list(config.transfer.budgets)
  wanted = {(b, s) for b in budgets for s in strategies}
  rows = [r for r in rows if (r["budget"], r["strategy"]) in wanted and r["seed"] < config.transfer.seeds]
  summary = summarise(rows)
  baseline = "scratch" if "scratch" in strategies else None
  paired = paired_differences(rows, baseline=baseline) if baseline else None
  caption = (f"{title}. Test accuracy, mean ± 95% CI over {config.transfer.seeds} seeds "
             f"(seeds vary the labelled subset and the initialisation). Pretraining: "
             f"{config.pretrain.epochs} epochs on {data.describe()['source']['size']} unlabelled source "
             f"images, held-out reconstruction MSE {recon['mse']:.4f}, PSNR {recon['psnr']:.1f} dB.")
  shown = test_images[: config.report.num_figure_images]
  figure = workdir / "results" / "summary.png"
  table = markdown_table(summary, strategies, budgets)
  if is_main_process():  # tables and figures are written once in a multi-host run
    table = write_tables(summary, workdir / "results", strategies=strategies, budgets=budgets,
                         caption=caption, paired=paired, baseline=baseline)
    summary_figure(figure, originals=shown, reconstructions=reconstruct(model, params, shown),
                   summary=summary, strategies=strategies, budgets=budgets, title=title)
  return {"table": table, "summary": summary, "reconstruction": recon, "figure": str(figure),
          "pretrain_history": pretrain_history, "rows": rows}
