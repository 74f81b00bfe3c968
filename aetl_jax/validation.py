"""Checks a config before anything is compiled.

Every key is declared once with its check: the transfer task's sections in
``tasks/keys.py``, each registered part's (model family, objective, strategies)
next to its code (``core.registry.Key``). This module runs those checks, then the
ones that span keys or sections (warm-up below the epochs, budgets against
strategies, devices against batch sizes, the objective against the family ...).
Each failure is a ConfigError naming the key and the valid values.
"""

from __future__ import annotations

from aetl_jax.core.config import require, require_positive
from aetl_jax.core.registry import check_keys
from aetl_jax.models.family import FAMILIES
from aetl_jax.objectives.augmentation import check_chain
from aetl_jax.objectives.registry import OBJECTIVES, batch_norm_objectives, model_kind, roles
from aetl_jax.strategies.registry import STRATEGIES
from aetl_jax.tasks.keys import KEYS


def _epochs(cfg, prefix, zero_epochs: str = ""):
  """``zero_epochs``: why 0 epochs is valid here too ('' : it is not); warm-up below them."""
  if zero_epochs and cfg.epochs == 0:
    return
  require_positive(cfg, prefix, "epochs", integer=True)
  require(cfg.warmup_epochs < cfg.epochs, f"{prefix}.warmup_epochs",
          f"must be in [0, {prefix}.epochs), got {cfg.warmup_epochs}")


def _launch(config, sections):
  launch = config.get("launch")
  if launch is None:
    return
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
  """Model, objective, pretraining and launch sections: every declared key (tasks/keys.py and
  the registered parts'), then what spans keys."""
  check_keys(config, KEYS)
  _launch(config, sections=("pretrain",))
  _model_and_objective(config)
  _epochs(config.pretrain, "pretrain", zero_epochs=config.model.get("weights", ""))


def validate_transfer_config(config) -> None:
  validate_pretrain_config(config)
  _launch(config, sections=("transfer",))
  d, t = config.data, config.transfer
  require(d.source_fraction > 0 or d.source == d.target, "data.source_fraction",
          "0 (the source is the target pool) needs data.source == data.target")
  _epochs(t, "transfer")
  require(len(t.strategies) > 0, "transfer.strategies",
          f"must name at least one of: {', '.join(STRATEGIES.names())}")
  for s in t.strategies:
    STRATEGIES.get(s).check(t, "transfer")
  require(len(set(t.strategies)) == len(t.strategies), "transfer.strategies", "lists a strategy twice")
  unlabelled_ok = [s for s in STRATEGIES.names()
                   if not STRATEGIES.get(s).info.get("needs_target_labels", True)]
  require(0 not in t.budgets or any(s in unlabelled_ok for s in t.strategies), "transfer.budgets",
          f"budget 0 (no target labels) needs a strategy that trains without them: "
          f"{', '.join(unlabelled_ok)}")
  require(len(set(t.budgets)) == len(t.budgets), "transfer.budgets",
          f"lists a budget twice ({t.budgets!r}); each (budget, strategy, seed) cell runs once")
  check_chain(t.get("augment", ()), "transfer.augment")
  if t.validation == "within":
    low = [b for b in t.budgets if 0 < b <= t.val_per_class]
    require(not low, "transfer.validation",
            f"'within' keeps {t.val_per_class} of each budget's labels per class for validation "
            f"(transfer.val_per_class), so every budget must exceed it; got {low}")
  if "wd_rules" in t:
    from aetl_jax.strategies.custom import check_rule_list
    check_rule_list(t.wd_rules, "transfer.wd_rules", frozen_ok=False)
