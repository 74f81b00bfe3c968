"""Checks a transfer-experiment config before anything is compiled.

Each failure is a ConfigError naming the key and the valid values.
"""

from __future__ import annotations

from aetl_jax.config import ConfigError, require
from aetl_jax.data.streaming import DATA_PATHS
from aetl_jax.models.conv import NORMS, UPSAMPLING
from aetl_jax.models.registry import MODEL_FAMILIES, VARIANTS, check_model_config
from aetl_jax.objectives.corruption import CORRUPTIONS
from aetl_jax.objectives.registry import SPARSITY
from aetl_jax.objectives.reconstruction import RECONSTRUCTION_LOSSES
from aetl_jax.training.launchers import LAUNCHERS
from aetl_jax.training.loop import RUNNERS
from aetl_jax.transfer.strategies import STRATEGIES

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine")


def _positive(cfg, prefix, *names, integer=False):
  for name in names:
    value = cfg[name]
    kind = int if integer else (int, float)
    require(isinstance(value, kind) and not isinstance(value, bool) and value > 0,
            f"{prefix}.{name}", f"must be a positive {'integer' if integer else 'number'}, got {value!r}")


def _choice(cfg, prefix, name, choices):
  require(cfg[name] in choices, f"{prefix}.{name}",
          f"unknown value {cfg[name]!r}; valid: {', '.join(choices)}")


def _optim(cfg, prefix):
  _positive(cfg, prefix, "learning_rate")
  _positive(cfg, prefix, "epochs", "batch_size", integer=True)
  _choice(cfg, prefix, "optimizer", OPTIMIZERS)
  _choice(cfg, prefix, "schedule", SCHEDULES)
  _choice(cfg, prefix, "runner", RUNNERS)
  require(cfg.weight_decay >= 0, f"{prefix}.weight_decay", f"must be >= 0, got {cfg.weight_decay}")
  require(0 <= cfg.warmup_epochs < cfg.epochs, f"{prefix}.warmup_epochs",
          f"must be in [0, {prefix}.epochs), got {cfg.warmup_epochs}")


def _launch(config, sections=("pretrain", "transfer")):
  launch = config.get("launch")
  if launch is None:
    return
  _choice(launch, "launch", "launcher", LAUNCHERS)
  require(launch.num_devices >= 0, "launch.num_devices", "must be >= 0 (0: every device)")
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


def validate_pretrain_config(config) -> None:
  """Model, objective, pretraining and launch sections."""
  _launch(config, sections=("pretrain",))
  _model_and_objective(config)
  p = config.pretrain
  _optim(p, "pretrain")
  _positive(p, "pretrain", "eval_every", "checkpoint_every", "keep_checkpoints", integer=True)
  require(p.grad_clip_norm >= 0, "pretrain.grad_clip_norm", "must be >= 0 (0 disables clipping)")
  _choice(p, "pretrain", "data_path", DATA_PATHS)
  _positive(p, "pretrain", "memory_limit_mb")


def _model_and_objective(config) -> None:
  m = config.model
  require(all(isinstance(w, int) and w > 0 for w in m.widths), "model.widths",
          f"must be positive integers, got {m.widths!r}")
  require(all(isinstance(c, int) and c > 0 for c in m.channels), "model.channels",
          f"must be positive integers, got {m.channels!r}")
  _positive(m, "model", "code_dim", integer=True)
  require(0.0 <= m.dropout_rate < 1.0, "model.dropout_rate", f"must be in [0, 1), got {m.dropout_rate}")
  _choice(m, "model", "family", MODEL_FAMILIES)
  _choice(m, "model", "variant", VARIANTS)
  try:
    check_model_config(m)
  except ValueError as e:
    raise ConfigError(f"config key 'model.variant': {e}") from None
  _choice(m, "model", "upsampling", UPSAMPLING)
  _choice(m, "model", "norm", NORMS)
  require(0.0 < m.mask_ratio < 1.0, "model.mask_ratio", f"must be in (0, 1), got {m.mask_ratio}")
  _positive(m, "model", "latent_dim", "patch", "vit_dim", "vit_depth", "vit_heads", integer=True)
  require(m.vit_dim % m.vit_heads == 0, "model.vit_heads",
          f"must divide model.vit_dim={m.vit_dim}, got {m.vit_heads}")
  o = config.objective
  _choice(o, "objective", "loss", RECONSTRUCTION_LOSSES)
  _choice(o, "objective", "corruption", CORRUPTIONS)
  _choice(o, "objective", "sparsity", SPARSITY)
  require(o.beta >= 0, "objective.beta", f"must be >= 0, got {o.beta}")
  require(0 <= o.corruption_level <= 1 or o.corruption == "gaussian", "objective.corruption_level",
          f"is a fraction of pixels for {o.corruption!r}: must be in [0, 1]")
  require(0 < o.sparsity_target < 1, "objective.sparsity_target", "must be in (0, 1)")


def validate_transfer_config(config) -> None:
  validate_pretrain_config(config)
  _launch(config, sections=("transfer",))
  d = config.data
  for name in ("test_fraction", "source_fraction"):
    require(0.0 < d[name] < 1.0, f"data.{name}", f"must be in (0, 1), got {d[name]}")

  t = config.transfer
  _optim(t, "transfer")
  require(len(t.strategies) > 0, "transfer.strategies", f"must name at least one of: {', '.join(STRATEGIES)}")
  for s in t.strategies:
    require(s in STRATEGIES, "transfer.strategies", f"unknown strategy {s!r}; valid: {', '.join(STRATEGIES)}")
  require(len(set(t.strategies)) == len(t.strategies), "transfer.strategies", "lists a strategy twice")
  require(len(t.budgets) > 0 and all(isinstance(b, int) and b > 0 for b in t.budgets),
          "transfer.budgets", f"must be positive integers (labels per class), got {t.budgets!r}")
  _positive(t, "transfer", "seeds", integer=True)
  require(t.checkpoint_every >= 0, "transfer.checkpoint_every",
          "must be >= 0 epochs (0: cells are not checkpointed and a killed cell reruns)")
  require(t.val_per_class >= 0, "transfer.val_per_class", f"must be >= 0, got {t.val_per_class}")
  if "lp_ft" in t.strategies:
    require(t.lp_epochs >= 1, "transfer.lp_epochs", "lp_ft needs a probe phase: set it >= 1")
  if "gradual_unfreeze" in t.strategies:
    require(t.unfreeze_epochs >= 1, "transfer.unfreeze_epochs", "gradual_unfreeze needs it >= 1")
  if "discriminative" in t.strategies:
    require(t.encoder_lr_mult > 0, "transfer.encoder_lr_mult",
            "must be > 0; freezing is said with a strategy that freezes ('linear_probe', 'partial')")
  if "layerwise" in t.strategies:
    require(0 < t.layer_decay <= 1, "transfer.layer_decay", f"must be in (0, 1], got {t.layer_decay}")
  require(t.ft_lr_mult > 0, "transfer.ft_lr_mult", f"must be > 0, got {t.ft_lr_mult}")
  require(len(t.ridge_l2_grid) > 0 and all(v > 0 for v in t.ridge_l2_grid), "transfer.ridge_l2_grid",
          "must be a non-empty list of positive numbers")
  require(len(t.knn_k_grid) > 0 and all(isinstance(k, int) and k > 0 for k in t.knn_k_grid),
          "transfer.knn_k_grid", "must be a non-empty list of positive integers")
