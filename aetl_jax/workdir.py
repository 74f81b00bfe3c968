"""Workdir safety: a workdir belongs to one config and one process; reruns resume.

The first run writes ``config.json`` (and ``environment.json`` with library
versions) and a marker file that says the folder is an aetl_jax workdir. A
rerun with the same config resumes; a rerun with a different config refuses
and lists the differing keys, unless ``overwrite`` is given, or unless the
run never produced anything (a config fixed after an early error). Only a
folder with the marker is ever cleared, and only of what the project writes.

A running process holds an exclusive lock on ``<workdir>/.lock`` (``flock``,
released by the kernel when the process ends, so a killed run leaves no stale
lock); a second process on the same workdir is refused with the holder's PID.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import platform
import re
import sys
from importlib import metadata
from pathlib import Path

from aetl_jax.core.config import ConfigError, diff, flatten
from aetl_jax.core.files import atomic_write_text

CONFIG_FILE = "config.json"
FINGERPRINT_FILE = "data_fingerprint.json"
MARKER = ".aetl_workdir"
LOCK = ".lock"
# The top-level entries a run writes into its workdir.
OWNED = (CONFIG_FILE, "environment.json", "data.json", FINGERPRINT_FILE, "pretrain", "metrics",
         "results", "transfer", "tensorboard", "classifiers", "one_class", MARKER)
# Every file a run writes, by name, relative to the workdir: the only files --overwrite
# removes. A file anywhere else in the folder (a user's notes beside the metrics) is named and
# nothing is deleted. Orbax steps are the checkpoint folders ``<step>`` (and Orbax's temporary
# ``<step>.orbax-checkpoint-tmp-*``) under a ``checkpoints`` folder of the run's.
_STEP = r"\d+(\.orbax-checkpoint-tmp[^/]*)?/.+"
_CKPT = rf"(model\.json|{_STEP})"
WRITTEN = re.compile("|".join(rf"(?:{p})" for p in (
    r"config\.json", r"environment\.json", r"data\.json", re.escape(FINGERPRINT_FILE),
    re.escape(MARKER),
    r"metrics/(pretrain|finetune)\.jsonl", r"metrics/one_class/seed\d+\.jsonl",
    r"results/(cells\.jsonl|results\.(md|csv|json)|summary\.png|timing\.json|vae\.json|"
    r"roc\.png|histograms\.png|strangest\.png|confusion\.png|codes_map\.png)",
    r"results/scores/(autoencoder|baselines)_seed\d+\.npz",
    rf"pretrain/checkpoints/{_CKPT}", rf"pretrain/backbone/{_CKPT}",
    r"pretrain/(tokenizer\.json|embeddings\.npy|vocab\.txt)",
    r"pretrain/quarantine/[^/]+-\d+-\d+/.+",
    r"tensorboard/.*events\.out\.tfevents\.[^/]+",
    rf"classifiers/[^/]+/(description\.json|{_STEP})",
    rf"transfer/[^/]+/(history\.jsonl|checkpoints/{_CKPT})", rf"one_class/checkpoints/seed\d+/{_CKPT}",
    r".*\.\d+\.tmp",  # an atomic write a kill interrupted (core.files)
)))


class WorkdirError(ConfigError):
  pass


def _versions() -> dict:
  out = {"python": sys.version.split()[0], "platform": platform.platform()}
  for pkg in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scikit-learn",
              "tensorflow-datasets"):
    try:
      out[pkg] = metadata.version(pkg)
    except metadata.PackageNotFoundError:
      out[pkg] = None
  return out


def produced_anything(workdir: Path) -> bool:
  """Whether a run in ``workdir`` finished any epoch, checkpoint or result."""
  for sub in ("pretrain", "metrics", "results", "transfer", "one_class"):
    d = workdir / sub
    if d.is_dir() and any(p.is_file() and p.stat().st_size > 0 for p in d.rglob("*")
                          if p.name != "model.json"):
      return True
  return False


def _read_record(config_path: Path) -> dict:
  try:
    return json.loads(config_path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise WorkdirError(f"{config_path} is damaged ({e.msg if hasattr(e, 'msg') else e}); it records "
                       f"which config this workdir belongs to. Restore it, or pass --overwrite to "
                       f"start the workdir over") from None


def is_own(workdir: Path) -> bool:
  """Whether ``workdir`` was written by aetl_jax: it carries the marker (a ``config.json``
  alone proves nothing: a user's file may have that name)."""
  return (workdir / MARKER).is_file()


def _listing(names, limit: int = 8) -> str:
  return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _clear(workdir: Path) -> None:
  """Removes the files a run wrote (:data:`WRITTEN`), then the folders left empty. A folder
  without the marker, or anything in the workdir that a run does not write, is named and
  nothing is deleted."""
  if not (workdir / MARKER).is_file():
    theirs = sorted(p.name for p in workdir.iterdir() if p.name != LOCK)
    raise WorkdirError(f"refusing --overwrite: {workdir} is not an aetl_jax workdir (no {MARKER}); "
                       f"it holds {_listing(theirs)}, which would be lost. Choose a new --workdir")
  ours, theirs, links = [], [], []
  for path in sorted(workdir.rglob("*")):
    rel = path.relative_to(workdir).as_posix()
    if path.is_symlink() and rel in OWNED:  # a pretraining shared with another sweep point:
      links.append(path)                    # the link goes (rglob does not enter it)
    elif (path.is_dir() and not path.is_symlink()) or rel == LOCK:
      continue
    elif WRITTEN.fullmatch(rel):
      ours.append(path)
    else:
      theirs.append(rel)
  if theirs:
    raise WorkdirError(f"refusing --overwrite: {workdir} also holds {_listing(theirs)}, which "
                       f"aetl_jax did not write and would be lost. Move them out, or choose a "
                       f"new --workdir")
  for path in ours + links:
    path.unlink()
  for d in sorted((p for p in workdir.rglob("*") if p.is_dir() and not p.is_symlink()),
                  key=lambda p: len(p.parts), reverse=True):
    if not any(d.iterdir()):
      d.rmdir()


def _check_data(workdir: Path, fingerprint: str | None) -> None:
  """A run that produced anything resumes only on data of the same content."""
  saved = workdir / FINGERPRINT_FILE
  if fingerprint is None or not saved.exists() or not produced_anything(workdir):
    return
  try:
    old = json.loads(saved.read_text()).get("fingerprint")
  except (OSError, ValueError, AttributeError):
    old = None
  if old != fingerprint:
    raise WorkdirError(f"workdir {workdir} holds results of other data (fingerprint {old}; the "
                       f"data named now has {fingerprint}): a dataset's content changed. Restore "
                       f"it, pass --overwrite to start over on the new data, or choose a new "
                       f"--workdir")


def prepare_workdir(workdir, config, *, experiment: str, overwrite: bool = False,
                    defaults: dict | None = None,
                    fingerprint: str | None = None) -> tuple[Path, bool]:
  """Creates or validates ``workdir``. Returns (path, resuming).

  ``defaults`` (flattened) are the values keys take when a config does not set them: a key
  the saved config lacks (written by a version without it) matches its default, so a run
  resumes across versions that add defaulted keys. ``fingerprint`` (of the loaded data,
  :func:`aetl_jax.data.fingerprint.data_fingerprint`) must equal the one a run that produced
  anything recorded.
  """
  workdir = Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise WorkdirError(f"--workdir {workdir} is a file, not a folder")
  record = {"experiment": experiment, "config": config.to_dict()}
  config_path = workdir / CONFIG_FILE
  resuming = False
  entries = [p for p in workdir.iterdir() if p.name != LOCK] if workdir.exists() else []
  if entries:
    if overwrite:
      _clear(workdir)
    elif not config_path.exists() and is_own(workdir):
      pass  # prepared by aetl_jax (a sweep point sharing a pretraining), no run yet
    elif not config_path.exists():
      raise WorkdirError(f"workdir {workdir} is not empty and holds no {CONFIG_FILE}; choose a new "
                         f"--workdir (an aetl_jax run only writes into an empty or its own folder)")
    else:
      old = _read_record(config_path)
      before = flatten({"experiment": old.get("experiment"), **old.get("config", {})})
      after = flatten({"experiment": experiment, **record["config"]})
      for key, value in (defaults or {}).items():
        if key not in before and key in after and not diff({key: value}, {key: after[key]}):
          before[key] = value  # a key added since that run, at its default
      changes = diff(before, after)
      if changes and produced_anything(workdir):
        raise WorkdirError(f"workdir {workdir} holds a run with a different config ("
                           + "; ".join(changes)
                           + "); rerun with the same config to resume, pass --overwrite to "
                             "discard it, or choose a new --workdir")
      resuming = not changes
      if resuming:
        _check_data(workdir, fingerprint)
  for name in OWNED:
    if name not in (CONFIG_FILE, "environment.json", "data.json", FINGERPRINT_FILE, MARKER) and \
        (workdir / name).exists() and not (workdir / name).is_dir():
      raise WorkdirError(f"{workdir / name} is a file, but a run writes a folder there; move it "
                         f"out of the workdir, or choose a new --workdir")
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("aetl_jax workdir\n")
    if not resuming:
      atomic_write_text(config_path, json.dumps(record, indent=2, sort_keys=True))
    if fingerprint is not None:
      atomic_write_text(workdir / FINGERPRINT_FILE, json.dumps({"fingerprint": fingerprint}))
    atomic_write_text(workdir / "environment.json", json.dumps(_versions(), indent=2, sort_keys=True))
  except OSError as e:
    raise WorkdirError(f"cannot write to workdir {workdir}: {e.strerror or e}") from None
  return workdir, resuming


class WorkdirLock:
  """An exclusive lock on ``<workdir>/.lock`` for the life of this object (or process)."""

  def __init__(self, workdir):
    self.path = Path(workdir) / LOCK
    self._fd = None

  def acquire(self) -> "WorkdirLock":
    """Takes the lock; refuses a folder that holds files and is not an aetl_jax workdir
    (nothing is written into it)."""
    workdir = self.path.parent
    if workdir.exists() and not workdir.is_dir():
      raise WorkdirError(f"--workdir {workdir} is a file, not a folder")
    if workdir.is_dir() and any(p.name != LOCK for p in workdir.iterdir()) and not is_own(workdir):
      raise WorkdirError(f"workdir {workdir} is not empty and is not an aetl_jax workdir (no "
                         f"{MARKER}); choose a new --workdir")
    try:
      workdir.mkdir(parents=True, exist_ok=True)
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise WorkdirError(f"cannot write to workdir {workdir}: {e.strerror or e}") from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
      os.close(fd)
      if e.errno in (errno.EAGAIN, errno.EACCES):
        raise WorkdirError(f"workdir {self.path.parent} is in use by another run (PID {holder}); "
                           f"wait for it to finish or choose another --workdir") from None
      raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
