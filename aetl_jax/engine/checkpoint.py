"""Orbax I/O for training states and encoder transplants.

Checkpoints are written one array per directory (``use_ocdbt=False``) so a
partial restore of ``params/encoder`` reads the encoder's files and nothing
else. Orbax writes each step into a temporary directory and renames it when
finished, so a step killed mid-write is never listed as finished.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import signal
import threading
import zlib
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from aetl_jax.core.errors import first_line
from aetl_jax.core.files import atomic_write_text
from aetl_jax.core.rules import path_str
from aetl_jax.engine.launchers import is_main_process

logging.getLogger("absl").setLevel(logging.ERROR)
log = logging.getLogger(__name__)

SIDECAR = "model.json"
MANIFEST_KEY = "aetl_jax_manifest"


class CheckpointError(ValueError):
  """A checkpoint is missing, unfinished, or does not fit the target tree."""


class CheckpointSaveError(RuntimeError):
  """A checkpoint could not be written (disk full, permissions ...); earlier steps are intact."""


def make_manager(directory, *, max_to_keep: int | None = 3) -> ocp.CheckpointManager:
  directory = Path(directory).absolute()
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(directory, options=options,
                               item_handlers=ocp.PyTreeCheckpointHandler(use_ocdbt=False))


def save(manager: ocp.CheckpointManager, step: int, tree) -> None:
  """Saves ``tree`` at ``step`` and blocks until it is committed on disk.

  A manifest of every leaf's shape and CRC32 goes into the step's metadata, so
  a transplant can validate structure without opening any array file and
  every restore can verify what it read.
  """
  manifest = _manifest(tree)
  try:
    # Its threads log a traceback each when a write fails: we say it once. A Ctrl-C waits
    # until the step is written (see interrupts_held).
    with _quiet_orbax(), interrupts_held():
      manager.save(int(step), args=ocp.args.PyTreeSave(tree), force=True,
                   custom_metadata={MANIFEST_KEY: manifest})
      manager.wait_until_finished()
  except Exception as e:  # noqa: BLE001 - Orbax raises many types; the cause is in the text
    cause = first_line(e)
    if is_main_process():  # the unfinished step is ours: it must not keep the disk full
      for partial in Path(manager.directory).glob(f"{int(step)}.orbax-checkpoint-tmp*"):
        shutil.rmtree(partial, ignore_errors=True)
    raise CheckpointSaveError(f"cannot save checkpoint step {step} in {manager.directory}: {cause}; "
                              f"the previous steps are intact and a rerun resumes from them") from None


@contextlib.contextmanager
def interrupts_held():
  """Ctrl-C (SIGINT) inside the block waits for its end, then raises KeyboardInterrupt: a
  checkpoint being written is written whole, and Orbax's threads are not left waiting on a
  save that the interrupt cut in the middle (a process that then never exits). Outside the
  main thread, or under another SIGINT handler than Python's, the block runs as it is."""
  if (threading.current_thread() is not threading.main_thread()
      or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
    yield
    return
  caught = []
  signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, signal.default_int_handler)
  if caught:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _quiet_orbax():
  """Orbax's (absl's) log records below CRITICAL are dropped while it saves."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    logger.setLevel(level)


def _crc(x) -> int:
  return zlib.crc32(np.ascontiguousarray(np.asarray(x)).tobytes())


def _manifest(tree) -> dict:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {path_str(p): {"shape": list(np.shape(x)), "crc32": _crc(x)} for p, x in flat}


def _read_manifest(directory, step) -> dict | None:
  # Read the step's own metadata file: Orbax's metadata() API would also open
  # every array's header, including arrays a partial restore must not depend on.
  meta_file = Path(directory) / str(step) / "_CHECKPOINT_METADATA"
  if not meta_file.exists():
    return None
  try:
    custom = json.loads(meta_file.read_text()).get("custom_metadata") or {}
  except (ValueError, OSError, AttributeError):  # undecodable bytes, bad JSON, unreadable
    return None
  return custom.get(MANIFEST_KEY)


def _verify(tree, manifest: dict | None, prefix: str, where: str) -> None:
  """Raises CheckpointError when a restored leaf's CRC32 differs from the saved one,
  or when the step's manifest is gone (every step this project writes has one)."""
  if manifest is None:
    raise CheckpointError(f"checkpoint {where} is damaged: its manifest (_CHECKPOINT_METADATA) "
                          f"is missing or unreadable, so its contents cannot be verified")
  bad = []
  for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    entry = manifest.get(prefix + path_str(p))
    if entry is not None and entry.get("crc32") is not None and _crc(x) != entry["crc32"]:
      bad.append(prefix + path_str(p))
  if bad:
    raise CheckpointError(f"checkpoint {where} is damaged: checksum mismatch in {', '.join(bad)}")


def finished_steps(directory) -> list[int]:
  """The committed steps in ``directory`` (read from the folder names, no collective: the
  processes of a multi-process run may ask at different moments)."""
  directory = Path(directory).absolute()
  if not directory.is_dir():
    return []
  return sorted(ocp.path.step.checkpoint_steps(directory))


def _unfinished(directory) -> list[str]:
  directory = Path(directory)
  if not directory.is_dir():
    return []
  return sorted(p.name for p in directory.iterdir() if "tmp" in p.name)


def _abstract(shape, dtype):
  """A restore target placed on the first local device."""
  return jax.ShapeDtypeStruct(shape, dtype,
                              sharding=jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))


def abstract_like(tree):
  """Shape/dtype skeleton of ``tree`` (what Orbax restores into)."""
  return jax.tree.map(lambda x: _abstract(np.shape(x), np.result_type(x)), tree)


def restore_step(directory, step: int, target):
  """Restores step ``step`` into ``target``'s structure and verifies every leaf.

  Raises CheckpointError when it cannot be read or does not verify.
  """
  item = abstract_like(target)
  try:
    tree = make_manager(directory).restore(step, args=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item)))
  except Exception as e:  # noqa: BLE001 - any read failure means "damaged"
    raise CheckpointError(f"checkpoint {directory}/{step} is unreadable: "
                          f"{first_line(e)}") from None
  _verify(tree, _read_manifest(directory, step), "", f"{directory}/{step}")
  return tree


def _leaf_shapes(tree) -> dict[str, tuple]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {path_str(p): tuple(getattr(x, "shape", np.shape(x))) for p, x in flat}


def _saved_subtree_shapes(manager, step, subtree, directory) -> dict[str, tuple]:
  """Leaf shapes under ``subtree`` as saved, from the manifest (no array I/O)."""
  manifest = _read_manifest(directory, step)
  if manifest is None:
    raise CheckpointError(f"checkpoint {directory}/{step} is damaged: its manifest "
                          f"(_CHECKPOINT_METADATA) is missing or unreadable")
  prefix = "/".join(subtree) + "/"
  shapes = {p[len(prefix):]: tuple(e["shape"]) for p, e in manifest.items()
            if p.startswith(prefix)}
  if not shapes:
    raise CheckpointError(f"checkpoint {directory}/{step} has no '{'/'.join(subtree)}' subtree")
  return shapes


def saved_shapes(directory, subtree: tuple[str, ...] = ("params", "encoder")) -> dict[str, tuple]:
  """Leaf path (inside ``subtree``) → shape in the newest finished step of ``directory``."""
  steps = finished_steps(directory)
  if not steps:
    raise CheckpointError(f"no finished checkpoint in {directory}")
  return _saved_subtree_shapes(None, steps[-1], subtree, directory)


def _finished_step(directory: Path, step: int | None) -> int:
  """``step`` (the last finished one when None), or a CheckpointError saying what is there."""
  steps = finished_steps(directory)
  if not steps:
    unfinished = _unfinished(directory)
    raise CheckpointError(
        f"no finished checkpoint in {directory}"
        + (f" (unfinished writes present: {', '.join(unfinished)})" if unfinished else
           " (the directory is empty or missing)"))
  if step is None:
    return steps[-1]
  if step not in steps:
    raise CheckpointError(f"checkpoint step {step} not found in {directory}; finished steps: {steps}")
  return step


def _misfits(saved_shapes: dict, target_shapes: dict, reinit: set) -> list[str]:
  """Every leaf path that keeps a target from taking a checkpoint's subtree: missing or of
  another shape (unless re-initialised), or saved but absent from the target."""
  problems = []
  for path, shape in target_shapes.items():
    if path in reinit:
      continue
    if path not in saved_shapes:
      problems.append(f"{path}: missing in checkpoint (target shape {shape})")
    elif saved_shapes[path] != shape:
      problems.append(f"{path}: checkpoint shape {saved_shapes[path]} != target shape {shape}")
  for path in sorted(set(saved_shapes) - set(target_shapes)):
    problems.append(f"{path}: in checkpoint (shape {saved_shapes[path]}) but not in target")
  return problems


def restore_subtree(directory, target, *, subtree: tuple[str, ...] = ("params", "encoder"),
                    step: int | None = None, reinit: tuple[str, ...] = ()):
  """Reads only ``subtree`` of a saved state into the structure of ``target``.

  ``target`` is the subtree as initialised on the target side. Every leaf must
  exist in the checkpoint with the same shape, except leaves whose path (inside
  the subtree) is listed in ``reinit``: those keep ``target``'s values. Any
  mismatch raises one CheckpointError listing every offending path.
  """
  directory = Path(directory)
  step = _finished_step(directory, step)
  reinit = set(reinit)
  if set(_leaf_shapes(target)) <= reinit:  # nothing to read: the whole subtree is re-initialised
    return step, target
  manager = make_manager(directory)
  problems = _misfits(_saved_subtree_shapes(manager, step, subtree, directory),
                      _leaf_shapes(target), reinit)
  if problems:
    raise CheckpointError(
        f"{subtree[-1]} in {directory}/{step} does not fit the target model ({len(problems)} problem(s)): "
        + "; ".join(problems))

  target_flat = traverse_util.flatten_dict(target, sep="/")
  item = traverse_util.unflatten_dict(
      {k: _abstract(np.shape(v), v.dtype) for k, v in target_flat.items()
       if k not in reinit}, sep="/")
  for key in reversed(subtree):
    item = {key: item}
  try:
    restored = manager.restore(step, args=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True))
  except Exception as e:  # noqa: BLE001 - any read failure means "damaged"
    raise CheckpointError(f"checkpoint {directory}/{step} is unreadable: "
                          f"{first_line(e)}") from None
  for key in subtree:
    restored = restored[key]
  _verify(restored, _read_manifest(directory, step), "/".join(subtree) + "/", f"{directory}/{step}")
  restored_flat = traverse_util.flatten_dict(restored, sep="/")
  merged = traverse_util.unflatten_dict(
      {k: restored_flat.get(k, v) for k, v in target_flat.items()}, sep="/")
  return step, merged


def write_sidecar(directory, payload: dict) -> None:
  """Atomically writes model metadata (family, config) next to the checkpoints (process 0
  of a multi-process run)."""
  if not is_main_process():
    return
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  atomic_write_text(directory / SIDECAR, json.dumps(payload, indent=2, sort_keys=True))


def read_sidecar(directory) -> dict | None:
  path = Path(directory) / SIDECAR
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except (ValueError, OSError) as e:
    raise CheckpointError(f"{path} is damaged ({type(e).__name__}); it records which model the "
                          f"checkpoints hold. Rerun with --overwrite to pretrain again") from None
