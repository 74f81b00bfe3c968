"""Opt-in transparent huge pages for the host's large blocks: a glibc tunable set at start-up.

Every call of an XLA:CPU program allocates one temporary buffer for all its intermediate
values (36 MB for the transposed-conv AE's step at batch 64, 145 MB at 256). glibc maps a
block that large afresh on each call and the kernel faults it in 4 KiB at a time: ~9,700
page faults per step. With glibc's ``glibc.malloc.hugetlb=1`` (glibc >= 2.35) malloc asks the
kernel for 2 MiB pages on its large blocks (``madvise``) and the same step faults ~400 times:
the conv AEs per batch and ResNet-18 train 1.1-1.4× faster (BENCHMARKS.md, "Host memory").

It is off unless asked for, because on the development VM it also cost some programs up to
2.4×: a VM with free page reporting (virtio-balloon, ``page_reporting_order`` 9) hands every
free 2 MiB block back to its host, so a huge page taken right after another program freed a
lot of memory faults in the host too while the kernel clears it (4 ms instead of 0.25 ms per
2 MiB); with the order raised to 10 some rows still lost (fine-tuning up to 0.7×). :func:`state`
says when this machine reports free pages at that size.

glibc reads its tunables only when a process starts, so with ``AETL_HUGEPAGES=1`` the
command-line entry points (``aetl``, ``python -m aetl_jax.bench...``) call :func:`reexec`
first (in :func:`aetl_jax.core.heap.start`) and the process runs itself again, once, in
place, with the tunable added to ``GLIBC_TUNABLES``. Nothing happens where the kernel's THP
mode is not ``madvise`` (``always``: huge pages already; ``never``), on other systems, or when
``GLIBC_TUNABLES`` already names the tunable. From Python (a notebook), start the interpreter with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` in its environment.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb"
SWITCH = "AETL_HUGEPAGES"
THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
REPORTING_ORDER_FILE = Path("/sys/module/page_reporting/parameters/page_reporting_order")
HUGE_PAGE_ORDER = 9  # 2 MiB in 4 KiB pages
LEAST_GLIBC = (2, 35)


def glibc_version() -> tuple[int, int] | None:
  """(major, minor) of the C library this process runs on, or None when it is not glibc."""
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    major, minor = version.split(".")[:2]
    return (int(major), int(minor)) if name == "glibc" else None
  except (AttributeError, OSError, ValueError):
    return None


def thp_mode(path: Path = THP_MODE_FILE) -> str | None:
  """The kernel's transparent-huge-page mode ('always', 'madvise', 'never'), or None."""
  try:
    found = re.search(r"\[(\w+)\]", path.read_text())
  except OSError:
    return None
  return found.group(1) if found else None


def page_reporting_order(path: Path = REPORTING_ORDER_FILE) -> int | None:
  """The order (log2 pages) from which a VM reports free memory to its host, or None."""
  try:
    return int(path.read_text())
  except (OSError, ValueError):
    return None


def flag_error(environ, name: str, unset: str) -> str | None:
  """The one-line complaint about an environment switch ``name`` that is not 0 or 1, or None."""
  value = environ.get(name, unset)
  return None if value in ("0", "1") else f"{name} must be 0 or 1 (unset: {unset}); got {value!r}"


def switch_error(environ) -> str | None:
  """The one-line complaint about a malformed ``AETL_HUGEPAGES``, or None."""
  return flag_error(environ, SWITCH, "0")


def why_not(environ, glibc: tuple[int, int] | None, mode: str | None) -> str | None:
  """Why :func:`reexec` leaves this process as it is, or None when it would add the tunable."""
  if environ.get(SWITCH, "0") != "1":
    return f"off ({SWITCH}=1 turns it on)"
  if TUNABLE in environ.get("GLIBC_TUNABLES", ""):
    return f"GLIBC_TUNABLES already sets {TUNABLE}"
  if glibc is None or glibc < LEAST_GLIBC:
    return f"needs glibc >= {'.'.join(map(str, LEAST_GLIBC))} (this C library: " \
           f"{'.'.join(map(str, glibc)) if glibc else 'not glibc'})"
  if mode != "madvise":
    return f"the kernel's THP mode is {mode or 'unknown'}, not madvise"
  return None


def environment(environ, glibc: tuple[int, int] | None, mode: str | None) -> dict | None:
  """``environ`` with the tunable added to ``GLIBC_TUNABLES``, or None when nothing changes."""
  if why_not(environ, glibc, mode) is not None:
    return None
  tunables = [t for t in environ.get("GLIBC_TUNABLES", "").split(":") if t]
  return {**environ, "GLIBC_TUNABLES": ":".join([*tunables, f"{TUNABLE}=1"])}


def state() -> str:
  """This process's setting in words, for benchmark headers and logs."""
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  if TUNABLE in tunables:
    order = page_reporting_order()
    slow = (f"; free page reporting from order {order}: a huge page reused soon after a "
            f"large free is slow to clear" if order is not None and order <= HUGE_PAGE_ORDER
            else "")
    return f"GLIBC_TUNABLES={tunables} (THP mode {thp_mode()}{slow})"
  why = why_not(os.environ, glibc_version(), thp_mode())
  return f"glibc's defaults: {why or 'this process did not start through an entry point'}"


def reexec() -> None:
  """With ``AETL_HUGEPAGES=1``, run this process again with huge pages for large blocks, where
  that changes something; call it first thing in a command-line entry point (it returns in
  the process that runs on). A malformed ``AETL_HUGEPAGES`` ends the process with one line
  and exit code 2, before anything runs."""
  if (error := switch_error(os.environ)) is not None:
    print(f"error: {error}", file=sys.stderr)
    raise SystemExit(2)
  env = environment(os.environ, glibc_version(), thp_mode())
  argv = getattr(sys, "orig_argv", None)
  if env is None or not argv or not sys.executable:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, [sys.executable, *argv[1:]], env)
  except OSError:
    return
