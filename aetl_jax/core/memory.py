"""Will a model fit? An estimate from parameter shapes alone, before anything is allocated."""

from __future__ import annotations

import math
import os

import jax

from aetl_jax.core.config import ConfigError

# Parameters, gradients and Adam's two moments: the resident copies of every parameter.
COPIES = 4
USABLE = 0.8  # of the device's memory


def device_memory_bytes() -> int | None:
  """The first device's memory (an accelerator's limit, or the host's physical memory)."""
  try:
    stats = jax.devices()[0].memory_stats() or {}
    if stats.get("bytes_limit"):
      return int(stats["bytes_limit"])
  except Exception:  # noqa: BLE001 - CPU devices have no memory stats
    pass
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    return None


def check_fits(shapes, what: str, key: str) -> None:
  """ConfigError naming ``key`` when the parameters of ``shapes`` (a tree of
  ``ShapeDtypeStruct``, from ``jax.eval_shape``) cannot be trained in this device's memory."""
  leaves = jax.tree.leaves(shapes)
  count = sum(math.prod(x.shape) for x in leaves)
  need = COPIES * sum(math.prod(x.shape) * x.dtype.itemsize for x in leaves)
  total = device_memory_bytes()
  if total and need > USABLE * total:
    raise ConfigError(f"config key '{key}': the {what} has {count:,} parameters, about "
                      f"{need / 2**30:,.1f} GiB with gradients and optimiser state, more than "
                      f"{USABLE:.0%} of this device's {total / 2**30:,.1f} GiB; make it smaller")
