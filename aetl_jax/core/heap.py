"""Reuse the host memory XLA:CPU frees: synchronous CPU dispatch and two glibc malloc settings.

Every call of an XLA:CPU program allocates one temporary buffer for all its intermediate values
(36 MB for the transposed-conv AE's step at batch 64, 145 MB at 256) and frees it when the call
ends. With JAX's defaults the call runs on one of XLA's worker threads, whose glibc arena
cannot hold a block that large for long (its heaps are 64 MB and unmapped when they empty;
larger blocks are mapped afresh), so every call faults its whole buffer in again, 4 KiB at a
time: 9,700 page faults per step at batch 64, about a third of the step's time.
:func:`reuse` makes the freed buffer the next call's:

* JAX's CPU client dispatches synchronously (``jax_cpu_enable_async_dispatch=False``; a
  program on one device runs on the thread that calls it), so the buffer comes from the main
  arena, the one heap that grows without limit;
* glibc serves blocks below 2 GiB from that heap instead of mapping them, and keeps up to
  2 GiB freed at its top instead of handing it back (``mallopt``'s mmap and trim thresholds).

The same step then faults nothing. What it costs: the process keeps what it freed, up to
2 GiB (its resident size stays near its peak, as with PyTorch's caching GPU allocator), and
Python waits for each single-device call to finish instead of queueing the next one (measured:
no loss on the small steps, the dense AE per batch and the Ladder step; Python's other threads
run meanwhile, the GIL is released). Data-parallel programs still dispatch asynchronously and
are not helped. BENCHMARKS.md ("Host memory") has the measurements.

On by default in the command-line entry points (``aetl``, ``python -m aetl_jax.bench...``):
they call :func:`start` first, before JAX starts its CPU client. ``AETL_REUSE_HEAP=0`` leaves
JAX's and glibc's defaults. From Python (a notebook), call :func:`reuse` before the first JAX
computation. Nothing changes on a C library other than glibc.
"""

from __future__ import annotations

import ctypes
import os
import sys

from aetl_jax.core import hugepages

SWITCH = "AETL_REUSE_HEAP"
# mallopt takes an int: both as large as it goes, 2 GiB (ResNet-18's step at 224 px and batch
# 32 frees 1.6 GB a call).
MMAP_THRESHOLD = TRIM_THRESHOLD = 2 ** 31 - 1
# mallopt's parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3

_OUTCOME: list[str] = []  # what reuse() did in this process, in words


def switch_error(environ) -> str | None:
  """The one-line complaint about a malformed ``AETL_REUSE_HEAP``, or None."""
  return hugepages.flag_error(environ, SWITCH, "1")


def _backend_started() -> bool:
  try:
    from jax._src import xla_bridge
    return xla_bridge.backends_are_initialized()
  except (ImportError, AttributeError):  # a JAX without the query: assume the worst
    return True


def reuse() -> str:
  """Make freed host memory the next XLA:CPU call's (above), once per process; what this
  process got, in words. Call it before the first JAX computation: JAX reads the dispatch
  option when it starts its CPU client."""
  if not _OUTCOME:
    _OUTCOME.append(_apply())
  return _OUTCOME[0]


def _apply() -> str:
  if hugepages.glibc_version() is None:
    return "JAX's and the C library's defaults (not glibc)"
  if _backend_started():
    return "JAX's and glibc's defaults (JAX's backend started before heap.reuse())"
  mallopt = ctypes.CDLL(None).mallopt
  if not (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
    return "JAX's and glibc's defaults (glibc refused the malloc settings)"
  import jax
  jax.config.update("jax_cpu_enable_async_dispatch", False)
  return (f"freed memory reused (synchronous CPU dispatch; malloc's mmap and trim thresholds "
          f"{(MMAP_THRESHOLD + 1) >> 20} MiB)")


def state() -> str:
  """This process's heap setting in words, for benchmark headers and logs."""
  if _OUTCOME:
    return _OUTCOME[0]
  if os.environ.get(SWITCH, "1") == "0":
    return f"JAX's and glibc's defaults ({SWITCH}=0)"
  return "JAX's and glibc's defaults (heap.reuse() was not called)"


def start() -> None:
  """What every command-line entry point does first: with ``AETL_HUGEPAGES=1`` run again with
  huge pages (:func:`hugepages.reexec`), then :func:`reuse` unless ``AETL_REUSE_HEAP=0``. A
  malformed switch ends the process with one line and exit code 2, before anything runs."""
  if (error := switch_error(os.environ)) is not None:
    print(f"error: {error}", file=sys.stderr)
    raise SystemExit(2)
  hugepages.reexec()
  if os.environ.get(SWITCH, "1") == "1":
    reuse()
