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
import numpy as np

from aetl_jax.core.config import ConfigError
from aetl_jax.data.domains import build_transfer_data
from aetl_jax.data.splits import stratified_split
from aetl_jax.data.text import (check_vocabulary, export_embeddings, saved_tokenizer,
                                vocabulary_hash, with_tokenizer)
from aetl_jax.data.transfer_split import TransferData, draw_target_labels
from aetl_jax.engine.launchers import is_main_process
from aetl_jax.engine.runtime import runtime_from_config
from aetl_jax.evaluation.reconstruction import reconstruct, reconstruction_metrics
from aetl_jax.models.registry import check_input_shape, init_method, reconstructs
from aetl_jax.objectives.registry import model_kind
from aetl_jax.objectives.registry import roles as objective_roles
from aetl_jax.reporting.figures import summary_figure
from aetl_jax.reporting.tables import markdown_table, paired_differences, summarise, write_tables
from aetl_jax.tasks.pretrain import check_source, checkpoint_dir, pretrain
from aetl_jax.tasks.keys import KEYS, TARGET_POOL_KEYS, docs, sections
from aetl_jax.tasks.registry import TASKS
from aetl_jax.transfer.classifiers import make_saver
from aetl_jax.transfer.sweep import SweepData, run_sweep
from aetl_jax.models.variables import tree_of

log = logging.getLogger(__name__)


def default_config() -> ml_collections.ConfigDict:
  """The transfer task's sections with their defaults (sklearn digits, dense AE).

  Keys owned by the chosen model family, objective and strategies are added
  from their registries (``aetl_jax.api.complete``).
  """
  c = ml_collections.ConfigDict()
  c.task = "transfer"
  parts = sections(KEYS)
  c.data = parts["data"]
  c.model = dict(family="mlp")
  c.objective = dict(name="reconstruction")
  for name in ("pretrain", "transfer", "launch", "report"):
    c[name] = parts[name]
  return c


def pretrain_section() -> dict:
  """The ``pretrain`` section for tasks that pretrain on one dataset (one-class, clustering):
  the transfer task's, less its target-pool key."""
  return sections(KEYS, without=TARGET_POOL_KEYS)["pretrain"]


# One line per key of the sections above (what --print-config and aetl list show).
KEY_DOCS = {
    "task": "what the run does (aetl list tasks)",
    "model.family": "the encoder family (aetl list families)",
    "objective.name": "what pretraining minimises (aetl list objectives)",
    **docs(KEYS),
}


def load(config, *, progress: bool = True) -> TransferData:
  try:
    return build_transfer_data(config.data, config.pretrain.batch_size, progress=progress,
                               vocab_size=config.model.get("vocab_size", 8000))
  except (ValueError, FileNotFoundError) as e:
    raise ConfigError(f"config key 'data': {e}") from None


def _check_classes(config, data: TransferData) -> None:
  """A classification target (and a labelled source that an objective or strategy
  classifies) holds at least two classes: with one, every accuracy is 100% and means nothing."""
  present = np.unique(data.labels[data.split.target_pool])
  if len(present) < 2:
    raise ConfigError(f"config key 'data.target': {config.data.target} has {len(present)} class "
                      f"(labels {present.tolist()}) in its training split; a classification "
                      f"target needs at least two")
  if data.source_labels is not None and "labelled" in objective_roles(config.objective.name):
    source = np.unique(data.source_labels)
    if len(source) < 2:
      raise ConfigError(f"config key 'data.source': {config.data.source} has {len(source)} "
                        f"class (labels {source.tolist()}); objective "
                        f"{config.objective.name!r} classifies it, which needs at least two")


def check(config, data: TransferData) -> None:
  """Config checks that need the data: the encoder fits the images and every
  budget fits the target pool."""
  _check_classes(config, data)
  try:
    check_input_shape(config.model, data.images.shape[1:], model_kind(config.objective.name))
  except ValueError as e:
    raise ConfigError(f"config key 'model': {e}") from None
  if data.tokenizer is not None and config.transfer.augment:
    raise ConfigError("config key 'transfer.augment': augmentations transform images; the target "
                      "here is text (token ids), leave it empty")
  _check_sources(config, data)
  _check_pretraining_memory(config, data)
  _check_strategies(config, data)
  _check_budgets(config.transfer, data)


def _check_budgets(t, data: TransferData) -> None:
  """Every budget (with its validation labels) fits every class of the target pool; the
  error names the budget asked for and what the validation draw adds to it."""
  counts = np.bincount(data.labels[data.split.target_pool], minlength=data.num_classes)
  extra = t.val_per_class if t.validation == "extra" and data.split.val is None else 0
  for budget in t.budgets:
    need = budget + (extra if budget else 0)
    short = [(c, int(n)) for c, n in enumerate(counts) if n < need]
    if short:
      c, n = min(short, key=lambda cn: cn[1])
      plus = f" + {extra} validation labels (transfer.validation='extra')" if extra and budget else ""
      raise ConfigError(f"config key 'transfer.budgets': {budget} labels per class{plus} needs "
                        f"{need} images of every class in the target pool, but class {c} has "
                        f"{n}; lower the budget" + (", transfer.val_per_class, or use "
                        "transfer.validation='within' or 'none'" if plus else ""))
  for budget in t.budgets:  # whatever else a draw refuses (a budget within validation ...)
    try:
      draw_target_labels(data.labels, data.split, per_class=budget, val_per_class=t.val_per_class,
                         seed=0, num_classes=data.num_classes, validation=t.validation)
    except ValueError as e:
      raise ConfigError(f"config key 'transfer.budgets': {e}") from None


def _label_sets(config, data: TransferData) -> str:
  return (f"source {config.data.source} has classes {list(data.source_classes) or 'none (unlabelled)'}, "
          f"target {config.data.target} has {list(data.target_classes)}")


def _check_sources(config, data: TransferData) -> None:
  """The source can feed the pretraining objective, and strategies that train or evaluate on
  source labels have them, in the target's label space."""
  from aetl_jax.strategies.registry import STRATEGIES, needs_source_labels
  labelled = data.source_labels is not None
  try:
    check_source(config, labelled=labelled, streamed=data.source_images is None)
  except ValueError as e:
    raise ConfigError(f"config key 'objective.name': {e}") from None
  if config.pretrain.include_target_pool and "labelled" in objective_roles(config.objective.name):
    raise ConfigError("config key 'pretrain.include_target_pool': adds the target pool's images "
                      "without labels; it needs an unsupervised objective, got "
                      f"{config.objective.name!r}")
  if config.data.source_fraction == 0 and config.data.source == config.data.target:
    leaks = ([f"objective {config.objective.name!r}"]
             if "labelled" in objective_roles(config.objective.name) else [])
    leaks += [f"strategy {n!r}" for n in config.transfer.strategies if needs_source_labels(n)]
    if leaks:
      raise ConfigError(f"config key 'data.source_fraction': 0 makes the source the target pool, "
                        f"so {', '.join(leaks)} would train on every pool label; use an "
                        f"unsupervised objective and target-side strategies, or a fraction > 0")
  shared_hint = ("; set data.label_space='shared' if both name the same classes"
                 if labelled and config.data.source != config.data.target else "")
  for name in config.transfer.strategies:
    if not needs_source_labels(name):
      continue
    if not labelled:
      raise ConfigError(f"config key 'transfer.strategies': strategy {name!r} reads the labelled "
                        f"source (stream source_labelled), but {_label_sets(config, data)}")
    if not data.shared_labels:
      raise ConfigError(f"config key 'transfer.strategies': strategy {name!r} trains the target's "
                        f"classifier on source labels, which needs one label space, but "
                        f"{_label_sets(config, data)} (data.label_space="
                        f"{config.data.label_space!r}){shared_hint}")
    if STRATEGIES.get(name).info.get("init") == "source" and \
        model_kind(config.objective.name) not in ("classifier", "autoencoder_classifier"):
      raise ConfigError(f"config key 'transfer.strategies': strategy {name!r} evaluates the "
                        f"classifier pretrained on the source; pretrain one with objective.name="
                        f"'classification' or 'joint', got {config.objective.name!r}")
  if 0 in config.transfer.budgets and not data.shared_labels:
    raise ConfigError(f"config key 'transfer.budgets': budget 0 scores a classifier trained on "
                      f"source labels on the target, which needs one label space, but "
                      f"{_label_sets(config, data)}{shared_hint}")


def _check_pretraining_memory(config, data: TransferData) -> None:
  """The pretraining model's parameters fit this device (shapes only, nothing allocated)."""
  import jax
  import jax.numpy as jnp
  from aetl_jax.core.memory import check_fits
  from aetl_jax.tasks.pretrain import pretrain_model
  shape = tuple(data.images.shape[1:])
  classes = max(data.source_classes) + 1 if data.source_classes else data.num_classes
  model = pretrain_model(config, shape, classes)
  check_fits(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)),
                                               method=init_method(model))),
             f"{config.model.family} {model_kind(config.objective.name)} model", "model")


def _check_strategies(config, data: TransferData) -> None:
  """Builds every strategy's phases on the target model's shapes (nothing trains), so a rule
  that does not fit the model fails now, not after pretraining."""
  import jax
  import jax.numpy as jnp
  from aetl_jax.core.memory import check_fits
  from aetl_jax.core.rules import reinit_paths
  from aetl_jax.engine.phase import Optim
  from aetl_jax.strategies.registry import StrategyContext, build_strategy
  from aetl_jax.transfer.encoder import strategy_model
  shape = tuple(data.images.shape[1:])
  for name in config.transfer.strategies:
    model = strategy_model(config, name, data.num_classes, shape)
    params = jax.eval_shape(lambda m=model: tree_of(
        m.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)), method=init_method(m))))
    check_fits(params, f"model of strategy {name!r}", "transfer.strategies")
    try:
      strategy = build_strategy(name, StrategyContext(name, config.transfer, model, params,
                                                      Optim.from_config(config.transfer)))
    except ValueError as e:
      raise ConfigError(f"config key 'transfer.strategies': strategy {name!r} does not fit the "
                        f"model: {e}") from None
    if strategy.init == "random":  # transfer.reinit applies to a pretrained encoder
      continue
    try:
      reinit_paths({"encoder": params["encoder"]}, tuple(config.transfer.reinit))
    except ValueError as e:
      raise ConfigError(f"config key 'transfer.reinit': {e}") from None


@TASKS.register("transfer", load=load, check=check, default_config=default_config,
                distributed=True, key_docs=KEY_DOCS)
def run(config, workdir, data: TransferData, *, progress: bool = True) -> dict:
  """Pretrain on the source, sweep budgets × strategies × seeds on the target, report."""
  workdir = Path(workdir)
  vocabulary = None
  if data.tokenizer is not None:
    data, vocabulary = _text_vocabulary(config, workdir, data)
  if is_main_process():
    (workdir / "data.json").write_text(json.dumps(data.describe(), indent=2))
  source_images, held_out, labelled = _pretraining_data(config, data)
  model, params, pretrain_history = pretrain(config, source_images, held_out, workdir,
                                             progress=progress, train_stream=data.source_stream,
                                             num_train=data.num_source, vocabulary=vocabulary,
                                             **labelled)
  recon = reconstruction_metrics(model, params, held_out) if reconstructs(model) else {}
  if data.tokenizer is not None and is_main_process():
    export_embeddings(checkpoint_dir(workdir).parent, data.tokenizer,
                      params["encoder"]["block_0"]["embedding"])
  last = pretrain_history[-1] if pretrain_history else {}  # none: 0 epochs (a backbone as is)
  log.info("pretraining done: %s", recon or {k: v for k, v in last.items()
                                              if k.startswith("eval_")})
  save = None
  if config.transfer.save_classifiers:
    save = make_saver(workdir, config, input_shape=data.images.shape[1:], num_classes=data.num_classes,
                      label_names=[str(c) for c in range(data.num_classes)],
                      preprocessing_=_preprocessing(config, data))
  rows = run_sweep(config, workdir, SweepData(data.images, data.labels, data.split,
                                              data.num_classes, data.source_images,
                                              data.source_labels),
                   ckpt_dir=checkpoint_dir(workdir), runtime=runtime_from_config(config, "transfer",
                                                              data.images.shape[1:]),
                   progress=progress, save=save)
  return _report(config, workdir, data, rows, recon, model, params, pretrain_history)


def _text_vocabulary(config, workdir, data: TransferData):
  """(data encoded with the run's tokenizer, its hash): the one saved beside the checkpoint
  when resuming, else the one just trained (saved now); checked against the checkpoint."""
  from aetl_jax.engine import checkpoint
  directory = checkpoint_dir(workdir).parent
  try:
    tok = saved_tokenizer(directory, data.tokenizer)
    check_vocabulary(checkpoint.read_sidecar(checkpoint_dir(workdir)), tok, config.model.vocab_size)
  except ValueError as e:
    raise ConfigError(f"config key 'data.source': {e}") from None
  if tok is not data.tokenizer:
    data = with_tokenizer(data, tok, config.data.max_len)
  return data, vocabulary_hash(tok)


def _preprocessing(config, data: TransferData) -> dict:
  """What a saved classifier's inputs went through (its description records it)."""
  if data.tokenizer is not None:
    return {"tokenizer": "pretrain/tokenizer.json", "max_len": int(config.data.max_len)}
  return {"max_value": data.description.get("target_max_value", 255.0),
          "resize": config.data.resize}


def _pretraining_data(config, data: TransferData):
  """(training images, held-out images, keywords of :func:`pretrain`).

  The source (with the target pool's images when ``pretrain.include_target_pool``) loses a
  stratified ``pretrain.holdout_fraction`` that pretraining is evaluated on (reconstruction,
  and accuracy when the objective classifies): the target's test set is read only for the
  final scores. A source streamed from disk is evaluated on target-pool images (no labels).
  """
  images, labels = data.source_images, data.source_labels
  classifies = "labelled" in objective_roles(config.objective.name)
  if images is None:
    return None, data.images[data.split.target_pool][:HELD_OUT_STREAMED], {}
  if config.pretrain.include_target_pool:
    images, labels = np.concatenate([images, data.images[data.split.target_pool]]), None
  fraction = config.pretrain.holdout_fraction
  strata = labels if labels is not None else np.zeros(len(images), np.int64)
  train, held = stratified_split(strata, fraction, config.data.split_seed + 5) if fraction else (
      np.arange(len(images)), np.arange(min(len(images), HELD_OUT_STREAMED)))
  kw = {}
  if classifies:
    kw = dict(train_labels=labels[train], num_classes=max(data.source_classes) + 1,
              eval_labels=labels[held])
  return images[train], images[held], kw


def _labels_caption(t, data: TransferData) -> str:
  """Every target label a cell uses, validation included."""
  v = t.val_per_class
  if t.validation == "none" or not v:
    text = ("Labels: k per class for training, none for validation (choices fall back to fixed "
            "defaults)")
  elif t.validation == "within":
    text = (f"Labels: k per class in all, of which {v} per class are held out for validation "
            f"(k - {v} train)")
  elif data.split.val is not None:
    text = (f"Labels: k per class for training + the dataset's fixed validation split "
            f"({len(data.split.val)} labelled examples)")
  else:
    text = (f"Labels: k per class for training + {v} per class for validation, so k + {v} "
            f"labels per class in all")
  if 0 in t.budgets:
    text += "; budget 0 uses no target label at all (no validation either)"
  from aetl_jax.strategies.registry import STRATEGIES
  manifold = [s for s in t.strategies if "manifold_mode" in STRATEGIES.get(s).defaults]
  if manifold:
    text += (". Manifold probes and the strategies trained on their labels ("
             + ", ".join(manifold) + f") ran {t.manifold_mode}: their embedding and graph were "
             + "fitted on the target "
             + ("pool and the test images together (test labels unread)"
                if t.manifold_mode == "transductive" else "pool only, the test set mapped after"))
  return text + "."

# Held-out images pretraining is evaluated on when it cannot hold any out (streamed source,
# holdout_fraction 0: then they are also training images, and the log says "train").
HELD_OUT_STREAMED = 5000


def _title(config) -> str:
  d = config.data
  kind = model_kind(config.objective.name)
  what = {"classifier": "classifier", "autoencoder_classifier": "autoencoder + classifier"}.get(
      kind, "autoencoder")
  return (f"{d.source} → {d.target}: {config.model.family}/{config.objective.name} {what} "
          f"→ few-label classification")


def _pretraining_summary(config, data, recon) -> str:
  labelled = "labelled" in objective_roles(config.objective.name)
  size = data.describe()["source"]["size"]
  if config.pretrain.include_target_pool:
    size = f"{size} source + {len(data.split.target_pool)} target-pool"
  held = config.pretrain.holdout_fraction
  text = (f"Pretraining: {config.pretrain.epochs} epochs on {size} "
          f"{'labelled' if labelled else 'unlabelled'} images"
          + (f" less {100 * held:.0f}% held out to evaluate it" if held and data.source_images
             is not None else ""))
  if data.tokenizer is not None:
    text = text.replace(" images", " sentences")
  where = "held-out source" if held and data.source_images is not None else "target-pool"
  if recon and "mse" in recon:
    text += f", {where} reconstruction MSE {recon['mse']:.4f}, PSNR {recon['psnr']:.1f} dB"
  elif recon:
    text += (f", {where} token accuracy {100 * recon['token_accuracy']:.1f}% (perplexity "
             f"{recon['perplexity']:.1f}, teacher-forced)")
  d = config.data
  if d.source != d.target:
    text += (f"; both domains brought to {tuple(data.description.get('common_shape', ()))} by "
             f"data.resize={d.resize!r}")
  moved = "params/encoder" + (" (source_only: + params/head)"
                              if "source_only" in config.transfer.strategies else "")
  return text + f"; the target receives {moved}."


def _report(config, workdir, data, rows, recon, model, params, pretrain_history) -> dict:
  strategies, budgets = list(config.transfer.strategies), list(config.transfer.budgets)
  wanted = {(b, s) for b in budgets for s in strategies}
  rows = [r for r in rows if (r["budget"], r["strategy"]) in wanted and r["seed"] < config.transfer.seeds]
  summary = summarise(rows)
  # differences to training from scratch, and to the source classifier as it is when it ran
  paired = {b: paired_differences(rows, baseline=b) for b in ("scratch", "source_only")
            if b in strategies}
  caption = (f"{_title(config)}. Test accuracy, mean ± 95% CI over {config.transfer.seeds} seeds "
             f"(seeds vary the labelled subset and the initialisation). "
             f"{_labels_caption(config.transfer, data)} "
             f"{_pretraining_summary(config, data, recon)}")
  shown = (None if data.tokenizer is not None  # text: no pictures to show
           else data.images[data.split.target_pool][: config.report.num_figure_images])
  figure = workdir / "results" / "summary.png"
  table = markdown_table(summary, strategies, budgets)
  if is_main_process():  # tables and figures are written once in a multi-host run
    table = write_tables(summary, workdir / "results", strategies=strategies, budgets=budgets,
                         caption=caption, paired=paired)
    summary_figure(figure, originals=shown,
                   reconstructions=reconstruct(model, params, shown) if recon and shown is not None
                   else None,
                   summary=summary, strategies=strategies, budgets=budgets, title=_title(config),
                   paired=paired)
  return {"table": table, "summary": summary, "reconstruction": recon, "figure": str(figure),
          "pretrain_history": pretrain_history, "rows": rows}
