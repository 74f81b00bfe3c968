"""Opt-in huge pages for large host blocks (aetl_jax.core.hugepages): when the entry points re-run
themselves with glibc's tunable, and that the kernel then backs a large malloc with 2 MiB pages."""

import os
import subprocess
import sys
import textwrap

import pytest

from aetl_jax.core import hugepages

NEW_GLIBC, MADVISE = (2, 36), "madvise"


ON = {"AETL_HUGEPAGES": "1"}


def test_adds_the_tunable_after_the_users_own():
  env = hugepages.environment({**ON, "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
                              NEW_GLIBC, MADVISE)
  assert env == {**ON, "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}
  assert hugepages.environment(ON, NEW_GLIBC, MADVISE) == {**ON,
                                                           "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


@pytest.mark.parametrize("environ, glibc, mode, why", [
    ({}, NEW_GLIBC, MADVISE, "off (AETL_HUGEPAGES=1 turns it on)"),
    ({"AETL_HUGEPAGES": "0"}, NEW_GLIBC, MADVISE, "off"),
    ({**ON, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, NEW_GLIBC, MADVISE, "already sets"),
    (ON, (2, 31), MADVISE, "needs glibc >= 2.35 (this C library: 2.31)"),
    (ON, None, MADVISE, "not glibc"),
    (ON, NEW_GLIBC, "always", "THP mode is always"),
    (ON, NEW_GLIBC, "never", "THP mode is never"),
    (ON, NEW_GLIBC, None, "THP mode is unknown"),
])
def test_leaves_the_process_alone_where_nothing_would_change(environ, glibc, mode, why):
  assert hugepages.environment(environ, glibc, mode) is None
  assert why in hugepages.why_not(environ, glibc, mode)


def test_a_malformed_switch_is_one_line_before_anything_runs():
  assert hugepages.switch_error({}) is None and hugepages.switch_error(ON) is None
  out = subprocess.run([sys.executable, "-m", "aetl_jax.bench.data", "--help"],
                       env={**os.environ, "AETL_HUGEPAGES": "yes"}, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 2 and out.stdout == ""
  assert out.stderr == "error: AETL_HUGEPAGES must be 0 or 1 (unset: 0); got 'yes'\n"


def test_reads_the_kernels_mode(tmp_path):
  (tmp_path / "enabled").write_text("always [madvise] never\n")
  assert hugepages.thp_mode(tmp_path / "enabled") == "madvise"
  assert hugepages.thp_mode(tmp_path / "missing") is None


PROBE = textwrap.dedent("""
    import ctypes, os, sys
    from aetl_jax.core import hugepages
    print("started", os.getpid(), os.environ.get("GLIBC_TUNABLES"), flush=True)
    hugepages.reexec()
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    block = libc.malloc(64 << 20)
    lines = open("/proc/self/smaps").read().splitlines()
    for i, line in enumerate(lines):
      span = line.split(" ")[0].split("-")
      if len(span) == 2 and all(len(s) > 1 for s in span):
        try:
          lo, hi = (int(s, 16) for s in span)
        except ValueError:
          continue
        if lo <= block < hi:
          eligible = next(l for l in lines[i + 1:] if l.startswith("THPeligible:"))
          print("THPeligible", eligible.split()[1])
""")


def _clean_environ() -> dict:
  """This process's environment without the switch or any glibc tunables."""
  return {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "AETL_HUGEPAGES")}


def _probe(**env):
  out = subprocess.run([sys.executable, "-c", PROBE], env={**_clean_environ(), **env}, check=True,
                       capture_output=True, text=True, timeout=60).stdout
  lines = out.strip().splitlines()
  starts = {line.split()[1] for line in lines[:-1]}
  assert len(starts) == 1, out  # one process: run again in place (execve), not a child
  return [line.split(" ", 2)[2] for line in lines[:-1]] + [lines[-1]]


def test_the_rerun_process_gets_huge_pages_for_a_large_block():
  if (why := hugepages.why_not({**_clean_environ(), **ON}, hugepages.glibc_version(), hugepages.thp_mode())):
    pytest.skip(f"the re-run changes nothing on this machine: {why}")
  if not os.path.exists("/proc/self/smaps"):
    pytest.skip("no /proc/self/smaps to read the mapping's THP eligibility from")
  # Asked for: re-run once, with the tunable; the kernel may back the block with huge pages.
  assert _probe(**ON) == ["None", "glibc.malloc.hugetlb=1", "THPeligible 1"]
  # By default: the same process, glibc's defaults, a block the kernel will not promote.
  assert _probe() == ["None", "THPeligible 0"]
  assert _probe(AETL_HUGEPAGES="0") == ["None", "THPeligible 0"]


def test_reads_the_vms_free_page_reporting_order(tmp_path):
  (tmp_path / "order").write_text("9\n")
  assert hugepages.page_reporting_order(tmp_path / "order") == 9
  assert hugepages.page_reporting_order(tmp_path / "missing") is None
