"""Stops training at the first non-finite loss or gradient."""

from __future__ import annotations

import math


class NonFiniteError(FloatingPointError):
  """Training produced NaN/Inf; the message names the phase and epoch."""


def check_finite(metrics: dict, *, phase: str, epoch: int) -> None:
  bad = {k: v for k, v in metrics.items()
         if k in ("loss", "grad_norm") and not math.isfinite(v)}
  if bad:
    raise NonFiniteError(
        f"non-finite {', '.join(f'{k}={v}' for k, v in bad.items())} in phase '{phase}' at epoch "
        f"{epoch}; nothing after the last good checkpoint is saved. Lower the learning rate or enable "
        f"gradient clipping.")
