"""Stops training at the first non-finite loss or gradient."""

from __future__ import annotations

import math


class NonFiniteError(FloatingPointError):
  """Training produced NaN/Inf; the message names the phase, epoch and step."""


def check_finite(metrics: dict, *, phase: str, epoch: int, first_step: int | None = None) -> None:
  """Raises NonFiniteError if the epoch saw a non-finite loss or gradient norm.

  ``metrics`` comes from an epoch runner (epoch means plus
  ``first_nonfinite_step``); ``first_step`` is the global step the epoch
  started at, so the error can name the exact step.
  """
  index = int(metrics.get("first_nonfinite_step", -1))
  bad = {k: v for k, v in metrics.items()
         if k in ("loss", "grad_norm") and not math.isfinite(v)}
  if index < 0 and not bad:
    return
  where = f"epoch {epoch}"
  if first_step is not None and index >= 0:
    where = f"step {first_step + index} ({where})"
  raise NonFiniteError(
      f"non-finite loss or gradient in phase '{phase}' at {where}; nothing after the last good "
      f"checkpoint is saved. Lower the learning rate or enable gradient clipping.")


def first_nonfinite(per_epoch_index) -> tuple[int, int] | None:
  """(epoch, step within it) of the first non-finite step, from per-epoch
  ``first_nonfinite_step`` values (-1 where the epoch was finite)."""
  import numpy as np
  bad = np.flatnonzero(np.asarray(per_epoch_index) >= 0)
  if not len(bad):
    return None
  return int(bad[0]), int(np.asarray(per_epoch_index)[bad[0]])
