"""Task ``transfer``: pretrain → Orbax checkpoint → transfer sweep → report.

Source and target are named datasets (``data.source``, ``data.target``,
see :mod:`aetl_jax.data.sources`); every stage resumes from what ``workdir``
holds.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import ml_collections

from aetl_jax.core.config import ConfigError
from aetl_jax.data.domains import build_transfer_data
from aetl_jax.data.transfer_split import TransferData, draw_target_labels
from aetl_jax.engine.launchers import is_main_process
from aetl_jax.engine.runtime import runtime_from_config
from aetl_jax.evaluation.reconstruction import reconstruct, reconstruction_metrics
from aetl_jax.models.registry import check_input_shape
from aetl_jax.objectives.registry import model_kind
from aetl_jax.reporting.figures import summary_figure
from aetl_jax.reporting.tables import markdown_table, paired_differences, summarise, write_tables
from aetl_jax.tasks.pretrain import checkpoint_dir, pretrain
from aetl_jax.tasks.registry import TASKS
from aetl_jax.transfer.classifiers import make_saver
from aetl_jax.transfer.sweep import SweepData, run_sweep

log = logging.getLogger(__name__)


def default_config() -> ml_collections.ConfigDict:
  """The transfer task's sections with their defaults (sklearn digits, dense AE).

  Keys owned by the chosen model family, objective and strategies are added
  from their registries (``aetl_jax.api.complete``).
  """
  c = ml_collections.ConfigDict()
  c.task = "transfer"
  c.data = dict(source="digits", target="digits", data_dir="", manual_dir="", common_shape=(),
                resize="pad", test_fraction=0.3, source_fraction=0.5, split_seed=0,
                max_source=0, max_pool=0, max_test=0, stream_source=False)
  c.model = dict(family="mlp")
  c.objective = dict(name="reconstruction")
  c.pretrain = dict(
      epochs=200, batch_size=64, learning_rate=3e-3, optimizer="adam", weight_decay=0.0,
      l1_decay=0.0, schedule="cosine", warmup_epochs=0, runner="auto", seed=0, eval_every=25,
      checkpoint_every=25, keep_checkpoints=2, grad_clip_norm=0.0, data_path="auto",
      memory_limit_mb=1024.0)
  c.transfer = dict(
      strategies=("scratch", "linear_probe", "finetune", "lp_ft", "ridge_probe", "knn_probe"),
      budgets=(10, 25, 50), seeds=5, val_per_class=5, label_seed=0, seed_offset=0,
      epochs=100, learning_rate=3e-3, optimizer="adam", weight_decay=0.0, schedule="cosine",
      warmup_epochs=0, batch_size=32, runner="auto", checkpoint_every=0, vmap_seeds=True,
      reinit=(), wd_rules=(), save_classifiers=True)
  c.launch = dict(launcher="jit", num_devices=0, distributed=False)
  c.report = dict(num_figure_images=10)
  return c


def load(config, *, progress: bool = True) -> TransferData:
  try:
    return build_transfer_data(config.data, config.pretrain.batch_size, progress=progress)
  except (ValueError, FileNotFoundError) as e:
    raise ConfigError(f"config key 'data': {e}") from None


def check(config, data: TransferData) -> None:
  """Config checks that need the data: the encoder fits the images and every
  budget fits the target pool."""
  try:
    check_input_shape(config.model, data.images.shape[1:], model_kind(config.objective.name))
  except ValueError as e:
    raise ConfigError(f"config key 'model': {e}") from None
  _check_strategies(config, data)
  for budget in config.transfer.budgets:
    try:
      draw_target_labels(data.labels, data.split, per_class=budget,
                         val_per_class=config.transfer.val_per_class, seed=0,
                         num_classes=data.num_classes)
    except ValueError as e:
      raise ConfigError(f"config key 'transfer.budgets': {e} (the target pool after "
                        f"{config.transfer.val_per_class} validation labels per class)") from None


def _check_strategies(config, data: TransferData) -> None:
  """Builds every strategy's phases on the target model's shapes (nothing trains), so a rule
  that does not fit the model fails now, not after pretraining."""
  import jax
  import jax.numpy as jnp
  from aetl_jax.core.rules import reinit_paths
  from aetl_jax.engine.phase import Optim
  from aetl_jax.strategies.registry import StrategyContext, build_strategy, target_model_kind
  from aetl_jax.transfer.encoder import target_model
  shape = tuple(data.images.shape[1:])
  for name in config.transfer.strategies:
    model = target_model(config, data.num_classes, target_model_kind(name), shape)
    method = "init_all" if hasattr(model, "init_all") else None
    params = jax.eval_shape(lambda m=model: m.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)),
                                                   method=method)["params"])
    try:
      build_strategy(name, StrategyContext(name, config.transfer, model, params,
                                           Optim.from_config(config.transfer)))
    except ValueError as e:
      raise ConfigError(f"config key 'transfer.strategies': strategy {name!r} does not fit the "
                        f"model: {e}") from None
    try:
      reinit_paths({"encoder": params["encoder"]}, tuple(config.transfer.reinit))
    except ValueError as e:
      raise ConfigError(f"config key 'transfer.reinit': {e}") from None


@TASKS.register("transfer", load=load, check=check)
def run(config, workdir, data: TransferData, *, progress: bool = True) -> dict:
  """Pretrain on the source, sweep budgets × strategies × seeds on the target, report."""
  workdir = Path(workdir)
  (workdir / "data.json").write_text(json.dumps(data.describe(), indent=2))
  test_images = data.images[data.split.test]
  model, params, pretrain_history = pretrain(config, data.source_images, test_images, workdir,
                                             progress=progress, train_stream=data.source_stream,
                                             num_train=data.num_source)
  recon = reconstruction_metrics(model, params, test_images)
  log.info("pretraining done: held-out reconstruction %s", recon)
  save = None
  if config.transfer.save_classifiers:
    save = make_saver(workdir, config, input_shape=data.images.shape[1:], num_classes=data.num_classes,
                      label_names=[str(c) for c in range(data.num_classes)],
                      preprocessing_={"max_value": data.description.get("target_max_value", 255.0),
                                      "resize": config.data.resize})
  rows = run_sweep(config, workdir, SweepData(data.images, data.labels, data.split,
                                              data.num_classes),
                   ckpt_dir=checkpoint_dir(workdir), runtime=runtime_from_config(config, "transfer"),
                   progress=progress, save=save)
  return _report(config, workdir, data, rows, recon, model, params, pretrain_history)


def _title(config) -> str:
  d = config.data
  return (f"{d.source} → {d.target}: {config.model.family}/{config.objective.name} autoencoder "
          f"→ few-label classification")


def _report(config, workdir, data, rows, recon, model, params, pretrain_history) -> dict:
  strategies, budgets = list(config.transfer.strategies), list(config.transfer.budgets)
  wanted = {(b, s) for b in budgets for s in strategies}
  rows = [r for r in rows if (r["budget"], r["strategy"]) in wanted and r["seed"] < config.transfer.seeds]
  summary = summarise(rows)
  baseline = "scratch" if "scratch" in strategies else None
  paired = paired_differences(rows, baseline=baseline) if baseline else None
  caption = (f"{_title(config)}. Test accuracy, mean ± 95% CI over {config.transfer.seeds} seeds "
             f"(seeds vary the labelled subset and the initialisation). Pretraining: "
             f"{config.pretrain.epochs} epochs on {data.describe()['source']['size']} unlabelled source "
             f"images, held-out reconstruction MSE {recon['mse']:.4f}, PSNR {recon['psnr']:.1f} dB.")
  shown = data.images[data.split.test][: config.report.num_figure_images]
  figure = workdir / "results" / "summary.png"
  table = markdown_table(summary, strategies, budgets)
  if is_main_process():  # tables and figures are written once in a multi-host run
    table = write_tables(summary, workdir / "results", strategies=strategies, budgets=budgets,
                         caption=caption, paired=paired, baseline=baseline)
    summary_figure(figure, originals=shown, reconstructions=reconstruct(model, params, shown),
                   summary=summary, strategies=strategies, budgets=budgets, title=_title(config))
  return {"table": table, "summary": summary, "reconstruction": recon, "figure": str(figure),
          "pretrain_history": pretrain_history, "rows": rows}
