"""Freed host memory reused (aetl_jax.core.heap): with the entry points' setting a call of an
XLA:CPU program faults in none of the temporary buffer the previous call freed (the median call:
now and then a small block takes part of the freed one and a call maps fresh pages)."""

import os
import subprocess
import sys
import textwrap

import pytest

from aetl_jax.core import heap, hugepages

PROBE = textwrap.dedent("""
    import resource
    from aetl_jax.core import heap
    heap.start()
    import jax, jax.numpy as jnp
    f = jax.jit(lambda x, w: jnp.sum(jnp.sin(x) @ w))  # sin(x): an 85 MB temporary
    x, w = jnp.ones((331776, 64)), jnp.ones((64, 64))
    temp = f.lower(x, w).compile().memory_analysis().temp_size_in_bytes
    for _ in range(3):
      f(x, w).block_until_ready()
    faults = []
    for _ in range(7):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      f(x, w).block_until_ready()
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(temp, sorted(faults)[3], jax.config.read("jax_cpu_enable_async_dispatch"))
    print(heap.state())
""")


def _probe(**env):
  environ = {k: v for k, v in os.environ.items() if k not in ("AETL_REUSE_HEAP", "AETL_HUGEPAGES")}
  out = subprocess.run([sys.executable, "-c", PROBE], env={**environ, **env}, check=True,
                       capture_output=True, text=True, timeout=120).stdout.splitlines()
  temp, faults, asynchronous = out[0].split()
  return int(temp), float(faults), asynchronous == "True", out[1]


def test_a_second_call_reuses_the_buffer_the_first_freed():
  if hugepages.glibc_version() is None:
    pytest.skip("the setting is glibc's; this C library is not glibc")
  temp, faults, asynchronous, state = _probe()
  pages = temp // 4096
  assert temp > 64 << 20  # larger than a worker thread's glibc heap: mapped afresh by default
  assert not asynchronous and state.startswith("freed memory reused")
  assert faults < 0.01 * pages, (faults, pages)
  temp, faults, asynchronous, state = _probe(AETL_REUSE_HEAP="0")
  assert asynchronous and state == "JAX's and glibc's defaults (AETL_REUSE_HEAP=0)"
  if hugepages.thp_mode() == "always":
    return  # the kernel backs the fresh mapping with huge pages: few faults either way
  assert faults > 0.5 * pages, (faults, pages)  # what the setting removes


def test_a_malformed_switch_is_one_line_before_anything_runs():
  assert heap.switch_error({}) is None and heap.switch_error({"AETL_REUSE_HEAP": "0"}) is None
  out = subprocess.run([sys.executable, "-m", "aetl_jax.bench.data", "--help"],
                       env={**os.environ, "AETL_REUSE_HEAP": "yes"}, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 2 and out.stdout == ""
  assert out.stderr == "error: AETL_REUSE_HEAP must be 0 or 1 (unset: 1); got 'yes'\n"


def test_too_late_once_the_backend_has_started():
  code = ("import jax, jax.numpy as jnp; jnp.ones(1).block_until_ready()\n"
          "from aetl_jax.core import heap\n"
          "print(heap.reuse()); print(jax.config.read('jax_cpu_enable_async_dispatch'))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       timeout=120).stdout.splitlines()
  assert out == ["JAX's and glibc's defaults (JAX's backend started before heap.reuse())", "True"]


def test_nothing_changes_off_glibc(monkeypatch):
  monkeypatch.setattr(heap, "_OUTCOME", [])
  monkeypatch.setattr(hugepages, "glibc_version", lambda: None)
  assert heap.reuse() == "JAX's and the C library's defaults (not glibc)"
  assert heap.state() == heap.reuse()  # once per process
