"""Where a run's checkpoints go: save every N epochs, resume from the newest intact one.

A step that fails to read or to verify is moved aside into
``<parent>/quarantine/`` (never deleted) and the previous one is tried, so a
damaged step never blocks a rerun and can be looked at afterwards.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable

from aetl_jax.engine import checkpoint
from aetl_jax.engine.compat import legacy_layouts
from aetl_jax.engine.launchers import is_main_process, peer_lost

log = logging.getLogger(__name__)


class CheckpointStore:
  """Orbax steps in ``directory``: one per ``every`` epochs and at each phase end."""

  def __init__(self, directory, *, every: int = 0, keep: int | None = 2):
    self.directory = Path(directory)
    self.every = every
    self.keep = keep
    self._manager = None

  @property
  def manager(self):
    if self._manager is None:
      self._manager = checkpoint.make_manager(self.directory, max_to_keep=self.keep)
    return self._manager

  def due(self, epoch: int, phase_end: bool) -> bool:
    return phase_end or bool(self.every and epoch % self.every == 0)

  def save(self, epoch: int, tree) -> None:
    checkpoint.save(self.manager, epoch, tree)

  def latest(self) -> int | None:
    steps = checkpoint.finished_steps(self.directory)
    return steps[-1] if steps else None

  def restore(self, template: Callable[[int], object]):
    """(epoch, tree) of the newest intact step, restored into ``template(epoch)``; None if none.

    A step in an earlier version's layout (:mod:`aetl_jax.engine.compat`) is read in that
    layout and converted. Damaged steps are quarantined and the next older one is tried.
    """
    for step in reversed(checkpoint.finished_steps(self.directory)):
      target = template(step)
      try:
        return step, checkpoint.restore_step(self.directory, step, target)
      except checkpoint.CheckpointError as e:
        lost = peer_lost(e)
        if lost is not None:  # the read failed in a collective, not on disk: nothing is damaged
          raise lost from None
        for layout, convert in legacy_layouts(target) if isinstance(target, dict) else ():
          try:
            tree = checkpoint.restore_step(self.directory, step, layout)
          except checkpoint.CheckpointError:
            continue
          log.info("checkpoint %s/%d is in an earlier version's layout; converted",
                   self.directory, step)
          return step, convert(tree)
        self.quarantine(step, str(e))
    return None

  def quarantine(self, step: int, reason: str) -> Path:
    """Moves step ``step`` out of the way (into ``<parent>/quarantine/``)."""
    if self._manager is not None:
      self._manager.close()
      self._manager = None
    target = self.directory.parent / "quarantine" / f"{self.directory.name}-{step}-{int(time.time())}"
    if not is_main_process():  # the others skip the same step without moving it
      return target
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(self.directory / str(step), target)
    log.warning("checkpoint %s/%d is damaged (%s); moved to %s and resuming from an older one",
                self.directory, step, reason.splitlines()[0][:300], target)
    return target

  def close(self) -> None:
    if self._manager is not None:
      self._manager.close()
      self._manager = None
