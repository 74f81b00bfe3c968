"""Two processes on this machine joined by jax.distributed (gloo): the engine's shard_map
path over the global mesh equals a single-process run, checkpoints are written together,
and a process that dies makes the other fail instead of hanging."""

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import ROOT

WORKER = ROOT / "tests" / "multihost_worker.py"


def _port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(**extra):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
  return {**env, "JAX_PLATFORMS": "cpu", "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
          "PYTHONPATH": str(ROOT), **extra}


def _two(workdir, port, kill_one=False):
  procs = [subprocess.Popen([sys.executable, str(WORKER), str(workdir)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=_env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                     JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i),
                                     AETL_DISTRIBUTED_TIMEOUT="20"))
           for i in range(2)]
  if kill_one:
    procs[1].kill()
  outs = [p.communicate(timeout=240) for p in procs]
  return procs, outs


def test_two_processes_equal_one_and_save_together(tmp_path):
  single = subprocess.run([sys.executable, str(WORKER), str(tmp_path / "one")], cwd=ROOT,
                          env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"),
                          capture_output=True, text=True, timeout=240)
  assert single.returncode == 0, single.stderr[-3000:]
  ref = json.loads(single.stdout.splitlines()[-1])
  assert ref["devices"] == 2 and ref["processes"] == 1
  procs, outs = _two(tmp_path / "two", _port())
  results = []
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
    results.append(json.loads(out.splitlines()[-1]))
  assert [r["process"] for r in results] == [0, 1] and all(r["processes"] == 2 for r in results)
  assert [r["main"] for r in results] == [True, False]
  for r in results:  # same math over 2 devices, in 1 or 2 processes
    assert r["sum"] == pytest.approx(ref["sum"], rel=1e-5)
    assert r["loss"] == pytest.approx(ref["loss"], rel=1e-5)
  assert sorted(p.name for p in (tmp_path / "two").iterdir() if p.name.isdigit()) == ["1", "2"]


def test_a_dead_process_makes_the_other_fail_not_hang(tmp_path):
  procs, outs = _two(tmp_path / "dead", _port(), kill_one=True)
  assert procs[1].returncode != 0
  assert procs[0].returncode != 0  # it did not hang (communicate has a timeout)
  # XLA's coordination service ends the survivor after the 20 s timeout, saying why.
  err = outs[0][1]
  assert ("could not join the multi-process run at 127.0.0.1" in err
          or "JAX distributed service detected fatal err" in err), err[-2000:]
