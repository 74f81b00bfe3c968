"""Workdir safety: a workdir belongs to one config; reruns resume.

The first run writes ``config.json`` (and ``environment.json`` with library
versions). A rerun with the same config resumes; a rerun with a different
config refuses and lists the differing keys, unless ``overwrite`` is given.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from importlib import metadata
from pathlib import Path

from aetl_jax.core.config import ConfigError, diff, flatten

CONFIG_FILE = "config.json"


class WorkdirError(ConfigError):
  pass


def _atomic_write(path: Path, text: str) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def _versions() -> dict:
  out = {"python": sys.version.split()[0], "platform": platform.platform()}
  for pkg in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scikit-learn",
              "tensorflow-datasets"):
    try:
      out[pkg] = metadata.version(pkg)
    except metadata.PackageNotFoundError:
      out[pkg] = None
  return out


def prepare_workdir(workdir, config, *, experiment: str, overwrite: bool = False) -> tuple[Path, bool]:
  """Creates or validates ``workdir``. Returns (path, resuming)."""
  workdir = Path(workdir)
  record = {"experiment": experiment, "config": config.to_dict()}
  config_path = workdir / CONFIG_FILE
  resuming = False
  if workdir.exists() and any(workdir.iterdir()):
    if overwrite:
      shutil.rmtree(workdir)
    elif not config_path.exists():
      raise WorkdirError(f"workdir {workdir} is not empty and holds no {CONFIG_FILE}; choose a new "
                         f"--workdir or pass --overwrite to delete its contents")
    else:
      old = json.loads(config_path.read_text())
      changes = diff(flatten({"experiment": old.get("experiment"), **old.get("config", {})}),
                     flatten({"experiment": experiment, **record["config"]}))
      if changes:
        raise WorkdirError(f"workdir {workdir} holds a run with a different config ("
                           + "; ".join(changes)
                           + "); rerun with the same config to resume, pass --overwrite to "
                             "discard it, or choose a new --workdir")
      resuming = True
  workdir.mkdir(parents=True, exist_ok=True)
  if not resuming:
    _atomic_write(config_path, json.dumps(record, indent=2, sort_keys=True))
  _atomic_write(workdir / "environment.json", json.dumps(_versions(), indent=2, sort_keys=True))
  return workdir, resuming
