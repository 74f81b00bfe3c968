"""Checks a config before anything is compiled, from the registries.

The common sections (optimiser settings, launch, data fractions) are checked
here; every registered part named in the config (model family, objective,
strategies) checks its own keys. Each failure is a ConfigError naming the key
and the valid values.
"""

from __future__ import annotations

from aetl_jax.core.config import is_number, require, require_positive
from aetl_jax.data.streaming import DATA_PATHS
from aetl_jax.engine.launchers import LAUNCHERS
from aetl_jax.engine.runtime import RUNNERS
from aetl_jax.models.family import FAMILIES
from aetl_jax.objectives.augmentation import check_chain
from aetl_jax.objectives.registry import OBJECTIVES, batch_norm_objectives, model_kind, roles
from aetl_jax.strategies.registry import STRATEGIES

OPTIMIZERS = ("adam", "sgd")
LABEL_SPACES = ("auto", "shared", "different")
SCHEDULES = ("constant", "cosine", "linear_tail", "inverse_power")
VALIDATION = ("extra", "within", "none")


def _choice(cfg, prefix, name, choices):
  require(cfg[name] in choices, f"{prefix}.{name}",
          f"unknown value {cfg[name]!r}; valid: {', '.join(choices)}")


def _optim(cfg, prefix, zero_epochs: str = ""):
  """``zero_epochs``: why 0 epochs is valid here too ('' : it is not)."""
  require_positive(cfg, prefix, "learning_rate")
  require_positive(cfg, prefix, "batch_size", integer=True)
  _choice(cfg, prefix, "optimizer", OPTIMIZERS)
  _choice(cfg, prefix, "schedule", SCHEDULES)
  _choice(cfg, prefix, "runner", RUNNERS)
  require(is_number(cfg.weight_decay) and cfg.weight_decay >= 0, f"{prefix}.weight_decay",
          f"must be >= 0, got {cfg.weight_decay}")
  if zero_epochs and cfg.epochs == 0:
    return
  require_positive(cfg, prefix, "epochs", integer=True)
  require(0 <= cfg.warmup_epochs < cfg.epochs, f"{prefix}.warmup_epochs",
          f"must be in [0, {prefix}.epochs), got {cfg.warmup_epochs}")


def _launch(config, sections):
  launch = config.get("launch")
  if launch is None:
    return
  _choice(launch, "launch", "launcher", LAUNCHERS)
  require(launch.num_devices >= 0, "launch.num_devices", "must be >= 0 (0: every device)")
  if "timeout_s" in launch:
    require(is_number(launch.timeout_s, integer=True) and launch.timeout_s > 0, "launch.timeout_s",
            f"must be a positive integer (seconds the processes of a multi-process run wait for "
            f"each other), got {launch.timeout_s!r}")
  import jax
  present = len(jax.devices())
  require(launch.num_devices <= present, "launch.num_devices",
          f"asks for {launch.num_devices} devices but {present} are present: "
          + ", ".join(str(d) for d in jax.devices()))
  if launch.launcher == "jit":
    require(launch.num_devices in (0, 1), "launch.num_devices",
            "launcher 'jit' runs on one device; use 'pmap' or 'shard_map' for several")
    return
  n = launch.num_devices or present
  for section in sections:
    bs = config[section].batch_size
    lower = (bs // n) * n
    require(bs % n == 0, f"{section}.batch_size",
            f"global batch {bs} is not divisible by the {n} devices; nearest valid sizes: "
            + ", ".join(str(b) for b in (lower, lower + n) if b > 0))


def _pretrainable(name: str) -> bool:
  """Objectives a source can feed: unlabelled images and/or labelled images."""
  return set(roles(name)) <= {"images", "labelled"}


def _model_and_objective(config) -> None:
  m, o = config.model, config.objective
  family, objective = FAMILIES.get(m.family), OBJECTIVES.get(o.name)
  if "code_dim" in m and not (m.code_dim == 0 and (family.info.get("input") == "tokens"
                                                    or family.info.get("zero_code_dim"))):
    require_positive(m, "model", "code_dim", integer=True)  # (0: a recurrent encoder's last state)
  if "latent_dim" in m:
    require_positive(m, "model", "latent_dim", integer=True)
  if "mask_ratio" in m:
    require(0.0 < m.mask_ratio < 1.0, "model.mask_ratio", f"must be in (0, 1), got {m.mask_ratio}")
  family.check(m, "model")
  objective.check(o, "objective")
  kind = model_kind(o.name)
  if family.info.get("batch_norm"):
    valid = batch_norm_objectives()
    require(o.name in valid, "objective.name",
            f"{o.name!r} does not update BatchNorm statistics, which family {m.family!r} keeps; "
            f"valid: {', '.join(valid)}")
  require(_pretrainable(o.name), "objective.name",
          f"{o.name!r} reads {', '.join(roles(o.name))}, which a source does not provide; "
          f"pretraining objectives: " + ", ".join(n for n in OBJECTIVES.names() if _pretrainable(n)))
  require((kind == "mae") == (m.family == "vit"), "objective.name",
          f"a masked autoencoder ('mae') needs model.family 'vit' and family 'vit' is pretrained "
          f"as one; got family {m.family!r} with objective {o.name!r}")


def validate_pretrain_config(config) -> None:
  """Model, objective, pretraining and launch sections."""
  _launch(config, sections=("pretrain",))
  _model_and_objective(config)
  p = config.pretrain
  _optim(p, "pretrain", zero_epochs=config.model.get("weights", ""))
  require_positive(p, "pretrain", "eval_every", "checkpoint_every", "keep_checkpoints", integer=True)
  require(is_number(p.grad_clip_norm) and p.grad_clip_norm >= 0, "pretrain.grad_clip_norm",
          "must be >= 0 (0 disables clipping)")
  _choice(p, "pretrain", "data_path", DATA_PATHS)
  if "holdout_fraction" in p:
    require(is_number(p.holdout_fraction) and 0 <= p.holdout_fraction < 1, "pretrain.holdout_fraction",
            f"must be in [0, 1) (the source's share pretraining is evaluated on), got "
            f"{p.holdout_fraction!r}")
  require_positive(p, "pretrain", "memory_limit_mb")


def validate_transfer_config(config) -> None:
  validate_pretrain_config(config)
  _launch(config, sections=("transfer",))
  d = config.data
  require(0.0 < d.test_fraction < 1.0, "data.test_fraction", f"must be in (0, 1), got {d.test_fraction}")
  require(0.0 <= d.source_fraction < 1.0, "data.source_fraction",
          f"must be in [0, 1) (0: the source is the whole target pool), got {d.source_fraction}")
  require(d.source_fraction > 0 or d.source == d.target, "data.source_fraction",
          "0 (the source is the target pool) needs data.source == data.target")
  require(d.get("label_space", "auto") in LABEL_SPACES, "data.label_space",
          f"unknown value {d.get('label_space')!r}; valid: {', '.join(LABEL_SPACES)}")
  require(isinstance(d.split_seed, int) and d.split_seed >= 0, "data.split_seed",
          f"must be an integer >= 0, got {d.split_seed!r}")
  t = config.transfer
  _optim(t, "transfer")
  require(len(t.strategies) > 0, "transfer.strategies",
          f"must name at least one of: {', '.join(STRATEGIES.names())}")
  for s in t.strategies:
    STRATEGIES.get(s).check(t, "transfer")
  require(len(set(t.strategies)) == len(t.strategies), "transfer.strategies", "lists a strategy twice")
  require(len(t.budgets) > 0 and all(isinstance(b, int) and b >= 0 for b in t.budgets),
          "transfer.budgets", f"must be integers >= 0 (labels per class; 0: no target labels), "
          f"got {t.budgets!r}")
  unlabelled_ok = [s for s in STRATEGIES.names()
                   if not STRATEGIES.get(s).info.get("needs_target_labels", True)]
  require(0 not in t.budgets or any(s in unlabelled_ok for s in t.strategies), "transfer.budgets",
          f"budget 0 (no target labels) needs a strategy that trains without them: "
          f"{', '.join(unlabelled_ok)}")
  require(len(set(t.budgets)) == len(t.budgets), "transfer.budgets",
          f"lists a budget twice ({t.budgets!r}); each (budget, strategy, seed) cell runs once")
  require_positive(t, "transfer", "seeds", integer=True)
  check_chain(t.get("augment", ()), "transfer.augment")
  require(isinstance(t.label_seed, int) and t.label_seed >= 0, "transfer.label_seed",
          f"must be an integer >= 0, got {t.label_seed!r}")
  require(t.checkpoint_every >= 0, "transfer.checkpoint_every",
          "must be >= 0 epochs (0: cells are not checkpointed and a killed cell reruns)")
  require(isinstance(t.val_per_class, int) and t.val_per_class >= 0, "transfer.val_per_class",
          f"must be an integer >= 0, got {t.val_per_class!r}")
  _choice(t, "transfer", "validation", VALIDATION)
  if t.validation == "within":
    low = [b for b in t.budgets if 0 < b <= t.val_per_class]
    require(not low, "transfer.validation",
            f"'within' keeps {t.val_per_class} of each budget's labels per class for validation "
            f"(transfer.val_per_class), so every budget must exceed it; got {low}")
  for key in ("min_steps", "probe_steps"):
    require(isinstance(t[key], int) and not isinstance(t[key], bool) and t[key] >= 0,
            f"transfer.{key}", f"must be an integer >= 0 (0: epochs alone), got {t[key]!r}")
  require_positive(t, "transfer", "probe_c")
  if "wd_rules" in t:
    from aetl_jax.strategies.custom import check_rule_list
    check_rule_list(t.wd_rules, "transfer.wd_rules", frozen_ok=False)
  r = config.get("report")
  if r is not None:
    require_positive(r, "report", "num_figure_images", integer=True)
