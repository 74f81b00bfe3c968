"""The transfer task's own keys, declared once: default, one-line description, check.

``default_config`` is built from them, ``aetl list`` / ``--print-config`` show their lines,
and ``validation.py`` runs their checks before the checks that span keys (warm-up below the
epochs, budgets against strategies, devices against batch sizes ...). The one-class and
clustering tasks take the ``pretrain`` section from here too.
"""

from __future__ import annotations

from aetl_jax.core.registry import Check, Key, at_least, count, one_of, positive, within
from aetl_jax.data.streaming import DATA_PATHS
from aetl_jax.engine.launchers import LAUNCHERS
from aetl_jax.engine.runtime import RUNNERS

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine", "linear_tail", "inverse_power")
LABEL_SPACES = ("auto", "shared", "different")
VALIDATION = ("extra", "within", "none")

_BUDGETS = Check(lambda v: isinstance(v, (tuple, list)) and len(v) > 0
                 and all(count(0).passes(b) for b in v),
                 lambda v: f"must be integers >= 0 (labels per class; 0: no target labels), got {v!r}")


def _optimiser_keys(section: str, *, epochs: int, batch_size: int, learning_rate: float,
                    epochs_check: Check, batch_doc: str) -> dict:
  return {
      f"{section}.epochs": Key(epochs, "passes over the source (0: a backbone's weights as they are)"
                               if section == "pretrain" else
                               "epochs of a phase (raised to reach min_steps)", epochs_check),
      f"{section}.batch_size": Key(batch_size, batch_doc, positive(integer=True)),
      f"{section}.learning_rate": Key(learning_rate, "peak learning rate", positive()),
      f"{section}.optimizer": Key("adam", "adam or sgd", one_of(*OPTIMIZERS)),
      f"{section}.weight_decay": Key(0.0, "decoupled weight decay", at_least(0)),
      f"{section}.schedule": Key("cosine", "constant, cosine, linear_tail or inverse_power",
                                 one_of(*SCHEDULES)),
      f"{section}.warmup_epochs": Key(0, "linear warm-up epochs", count(0)),
      f"{section}.runner": Key("auto", "auto, scan (an epoch per call) or per_batch",
                               one_of(*RUNNERS)),
  }


KEYS = {
    "data.source": Key("digits", "the source dataset: a name (digits, mnist, ...) or "
                       "idx:/npz:/folder:/olivetti:/tsv:PATH"),
    "data.target": Key("digits", "the target dataset (labelled; its test split scores)"),
    "data.data_dir": Key("", "where TFDS keeps prepared datasets ('' : its default)"),
    "data.manual_dir": Key("", "folder of the official raw files to prepare a TFDS dataset offline"),
    "data.common_shape": Key((), "(H, W, C) both domains are brought to (() : their own shape)"),
    "data.resize": Key("pad", "how: pad (centred), resize (stretched) or bbox (ink box centred "
                       "by mass, as MNIST)"),
    "data.test_fraction": Key(0.3, "share of the target carved as test set when it has no test "
                              "split", within(0, 1, closed="()")),
    "data.source_fraction": Key(0.5, "same dataset: share of its train split that is the "
                                "unlabelled source (0: the whole pool)",
                                Check(lambda v: 0 <= v < 1, lambda v: f"must be in [0, 1) (0: the "
                                      f"source is the whole target pool), got {v}")),
    "data.split_seed": Key(0, "seed of every data split", count(0)),
    "data.max_source": Key(0, "at most this many source images (0: all)", count(0)),
    "data.max_pool": Key(0, "at most this many target-pool images (0: all)", count(0)),
    "data.max_test": Key(0, "at most this many test images (0: all)", count(0)),
    "data.stream_source": Key(False, "stream the source from disk instead of memory"),
    "data.label_space": Key("auto", "auto, shared (source and target name the same classes) or "
                            "different", one_of(*LABEL_SPACES)),
    "data.max_len": Key(64, "text: tokens per sentence (longer ones are cut and counted)",
                        positive(integer=True)),
    **_optimiser_keys("pretrain", epochs=200, batch_size=64, learning_rate=3e-3,
                      epochs_check=count(0), batch_doc="global batch size"),
    "pretrain.l1_decay": Key(0.0, "decoupled L1 decay", at_least(0)),
    "pretrain.seed": Key(0, "initialisation and data-order seed", count(0)),
    "pretrain.eval_every": Key(25, "held-out evaluation every this many epochs",
                               positive(integer=True)),
    "pretrain.checkpoint_every": Key(25, "Orbax checkpoint every this many epochs",
                                     positive(integer=True)),
    "pretrain.keep_checkpoints": Key(2, "checkpoints kept", positive(integer=True)),
    "pretrain.grad_clip_norm": Key(0.0, "clip the gradients' global norm (0: off)",
                                   Check(lambda v: v >= 0, lambda v: "must be >= 0 (0 disables "
                                         f"clipping), got {v!r}")),
    "pretrain.data_path": Key("auto", "auto, memory or stream", one_of(*DATA_PATHS)),
    "pretrain.memory_limit_mb": Key(1024.0, "above this the source streams from disk "
                                    "(data_path auto)", positive()),
    "pretrain.include_target_pool": Key(False, "pretrain on the target pool's images too "
                                        "(unsupervised objectives)"),
    "pretrain.holdout_fraction": Key(0.1, "share of the source held out to evaluate pretraining",
                                     Check(lambda v: 0 <= v < 1, lambda v: "must be in [0, 1) "
                                           "(the source's share pretraining is evaluated on), "
                                           f"got {v!r}")),
    "transfer.strategies": Key(("scratch", "linear_probe", "finetune", "lp_ft", "ridge_probe",
                                "knn_probe"), "strategies to compare (aetl list strategies)"),
    "transfer.budgets": Key((10, 25, 50), "labelled target images per class (0: none)", _BUDGETS),
    "transfer.seeds": Key(5, "seeds per (budget, strategy): the labelled draw and the "
                          "initialisation", positive(integer=True)),
    "transfer.val_per_class": Key(5, "validation labels per class", count(0)),
    "transfer.validation": Key("extra", "extra (beside the budget), within (out of it) or none",
                               one_of(*VALIDATION)),
    "transfer.label_seed": Key(0, "seed of the label draws", count(0)),
    "transfer.seed_offset": Key(0, "added to each cell's seed", count(0)),
    **_optimiser_keys("transfer", epochs=100, batch_size=32, learning_rate=3e-3,
                      epochs_check=positive(integer=True), batch_doc="labelled batch size"),
    "transfer.min_steps": Key(1000, "every phase runs at least this many optimiser steps",
                              count(0, " (0: epochs alone)")),
    "transfer.val_points": Key(50, "points of each phase's validation curve (val_loss, "
                               "val_accuracy): epochs spread evenly, the last always",
                               count(0, " (0: after every epoch)")),
    "transfer.probe_steps": Key(10000, "a linear probe's optimiser steps (logistic regression to "
                                "convergence)", count(0, " (0: epochs alone)")),
    "transfer.probe_c": Key(1.0, "the linear probe's inverse L2 strength (scikit-learn's C)",
                            positive()),
    "transfer.checkpoint_every": Key(0, "checkpoint each cell every this many epochs (0: off)",
                                     count(0, " epochs (0: cells are not checkpointed and a "
                                           "killed cell reruns)")),
    "transfer.vmap_seeds": Key(True, "train the seeds of a cell as one vmapped program"),
    "transfer.reinit": Key((), "regexes of encoder parameters re-initialised instead of loaded"),
    "transfer.wd_rules": Key((), "(regex, multiplier) rules of per-parameter weight decay"),
    "transfer.save_classifiers": Key(True, "save every trained cell's classifier (aetl predict)"),
    "transfer.augment": Key((), "augmentation chain of the labelled images, e.g. "
                            "(('translate', 0.1),)"),
    "launch.launcher": Key("jit", "jit, pmap or shard_map", one_of(*LAUNCHERS)),
    "launch.num_devices": Key(0, "devices to use (0: all)",
                              count(0, " (0: every device)")),
    "launch.distributed": Key(False, "join a multi-process run (jax.distributed)"),
    "launch.timeout_s": Key(300, "seconds the processes of a multi-process run wait for each "
                            "other", Check(lambda v: isinstance(v, int) and not isinstance(v, bool)
                                           and v > 0, lambda v: "must be a positive integer "
                                           "(seconds the processes of a multi-process run wait "
                                           f"for each other), got {v!r}")),
    "report.num_figure_images": Key(10, "images shown in the summary figure", positive(integer=True)),
}
# The pretrain section is the transfer task's; the one-class and clustering tasks take it
# without this key (their one dataset has no target pool).
TARGET_POOL_KEYS = ("pretrain.include_target_pool",)


def sections(keys: dict, *, without=()) -> dict:
  """{section: {key: default}} of ``keys`` (flat 'section.key' names), less ``without``."""
  out = {}
  for name, key in keys.items():
    if name not in without:
      section, k = name.split(".", 1)
      out.setdefault(section, {})[k] = key.default
  return out


def docs(keys: dict) -> dict:
  return {name: key.doc for name, key in keys.items()}
