"""Hyper-parameter sweeps: one run per point, each in its own sub-workdir.

Points come from the command line (``--sweep KEY=V1,V2`` flags, their product)
or from the config file (``get_sweep()`` returning a list of ``{key: value}``
dicts, as big_vision's ``get_hyper``). Every point is an ordinary run (same
checks, lock, resume) in ``DIR/<key=value,...>``; points whose pretraining keys
are equal share one pretraining (the first point trains it, the others link
to its checkpoints).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
from pathlib import Path

import ml_collections

from aetl_jax import api
from aetl_jax.core.config import ConfigError, apply_overrides
from aetl_jax.engine.launchers import is_main_process
from aetl_jax.workdir import MARKER

log = logging.getLogger(__name__)

# Config sections that decide the pretrained checkpoint.
PRETRAIN_SECTIONS = ("data", "model", "objective", "pretrain", "launch")


def parse_sweep_flags(flags) -> list[dict]:
  """``['a.b=1,2', 'c=x,y']`` → the product of the value lists as override dicts."""
  axes = []
  for flag in flags:
    if "=" not in flag:
      raise ConfigError(f"malformed --sweep {flag!r}; expected KEY=V1,V2,... e.g. "
                        f"--sweep pretrain.learning_rate=1e-3,3e-3")
    key, text = flag.split("=", 1)
    values = [v.strip() for v in _split_values(text)]
    if not values or any(not v for v in values):
      raise ConfigError(f"--sweep {key}: give at least one value, e.g. {key}=1,2")
    axes.append([(key.strip(), v) for v in values])
  return [dict(point) for point in itertools.product(*axes)] if axes else []


def _split_values(text: str) -> list[str]:
  """Commas split values, except inside brackets (tuples stay whole)."""
  out, depth, cur = [], 0, ""
  for ch in text:
    depth += ch in "([{"
    depth -= ch in ")]}"
    if ch == "," and depth == 0:
      out.append(cur)
      cur = ""
    else:
      cur += ch
  return out + [cur]


def _readable(value) -> str:
  """A value as a folder name's part: a path by its last part (``idx:../shared/datasets/mnist``
  → ``mnist``), any run of other characters than letters, digits and ``._+-`` as one ``-``."""
  text = str(value).strip().strip("'\"")
  if re.match(r"^([a-z]+:|\.{0,2}/|~)", text):  # a dataset or file path: its last part
    text = text.rstrip("/").rsplit("/", 1)[-1]
  return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-.") or "empty"


def point_name(point: dict) -> str:
  """A readable folder name of a sweep point: ``key=value`` with each key's last part
  (``learning_rate=1e-3``); the exact values are in ``DIR/sweep.json``."""
  text = ",".join(f"{k.rsplit('.', 1)[-1]}={_readable(v)}" for k, v in point.items())
  return text[:120] or "default"


def point_configs(config, points: list[dict]) -> list[tuple[str, ml_collections.ConfigDict]]:
  """(name, completed and validated config) of every point, before anything runs. Two points
  that resolve to one config (``1e-3`` and ``0.001``, a value given twice) are refused: one
  run would be listed twice."""
  out, seen = [], {}
  for point in points:
    try:
      c = apply_overrides(config, [f"{k}={v if isinstance(v, str) else repr(v)}"
                                   for k, v in point.items()], complete=api.complete)
      api.validate(c)
    except ConfigError as e:
      raise ConfigError(f"sweep point {point_name(point)}: {e}") from None
    key = json.dumps(c.to_dict(), sort_keys=True, default=str)
    if key in seen:
      raise ConfigError(f"sweep points {seen[key]} and {point_name(point)} are the same config; "
                        f"give each value once")
    name = point_name(point)
    if name in {n for n, _ in out}:  # readable names that collide: the exact values decide
      name += "-" + hashlib.sha1(json.dumps(point, sort_keys=True, default=str).encode()
                                 ).hexdigest()[:6]
    seen[key] = name
    out.append((name, c))
  return out


def _pretrain_key(config) -> str:
  return json.dumps({s: config[s].to_dict() for s in PRETRAIN_SECTIONS if s in config},
                    sort_keys=True, default=str)


def run_sweep(config, workdir, points: list[dict], *, overwrite: bool = False,
              progress: bool = True) -> list[dict]:
  """Runs every point into ``workdir/<point>``; returns one summary per point."""
  workdir = Path(workdir)
  named = point_configs(config, points)
  main = is_main_process()  # a multi-process sweep: process 0 writes, api.run syncs
  if main:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "sweep.json").write_text(json.dumps(
        [{"name": n, "point": p} for (n, _), p in zip(named, points)], indent=2, default=str))
  first_by_key = {}
  results = []
  for (name, c), point in zip(named, points):
    sub = workdir / name
    key = _pretrain_key(c)
    if main and key in first_by_key and first_by_key[key] != sub:
      _share_pretraining(first_by_key[key], sub)
    first_by_key.setdefault(key, sub)
    log.info("sweep point %s -> %s", point, sub)
    out = api.run(c, sub, overwrite=overwrite, progress=progress)
    results.append({"name": name, "point": point, "workdir": str(sub), "table": out["table"]})
  return results


def _share_pretraining(source: Path, target: Path) -> None:
  """Links ``target/pretrain`` to ``source/pretrain`` (same pretraining keys)."""
  link = target / "pretrain"
  if link.is_symlink() or link.exists():
    return
  target.mkdir(parents=True, exist_ok=True)
  (target / MARKER).write_text("aetl_jax workdir\n")
  os.symlink(os.path.relpath(source / "pretrain", target), link, target_is_directory=True)
  log.info("sweep: %s shares the pretraining of %s", target.name, source.name)


def sweep_from_file(path) -> list[dict]:
  """The points of a config file's ``get_sweep()``, or [] when it has none."""
  module = api.load_config_module(path)
  if not hasattr(module, "get_sweep"):
    return []
  points = module.get_sweep()
  if not isinstance(points, (list, tuple)) or not all(isinstance(p, dict) for p in points):
    raise ConfigError(f"{path}: get_sweep() must return a list of {{key: value}} dicts")
  return [dict(p) for p in points]

