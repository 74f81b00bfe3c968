"""Two processes on this machine joined by jax.distributed (gloo), as a multi-host run:
the engine's shard_map path over the global mesh and a whole ``aetl run`` sweep equal a
single-process run, process 0 alone writes, and a process that dies makes the other fail
instead of hanging (a rerun resumes)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import DIGITS_CONFIG, ROOT, TINY, xla_flags

pytestmark = pytest.mark.slow  # python -m pytest -m "not slow": the fast tier

WORKER = ROOT / "tests" / "multihost_worker.py"


def _port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# The run's compilation cache (tests/conftest.py) is kept: a resumed run loads what the
# killed one compiled (this file: 97 -> 93 s, user CPU 125 -> 113 s); so are the run's XLA flags,
# which every process compared here must share.
KEEP = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "XLA_FLAGS")


def _env(**extra):
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("JAX_", "XLA_")) or k in KEEP}
  return {**env, "JAX_PLATFORMS": "cpu", "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
          "PYTHONPATH": str(ROOT), **extra}


def _two(workdir, port, kill_one=False):
  procs = [subprocess.Popen([sys.executable, str(WORKER), str(workdir)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=_env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                     JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i),
                                     AETL_DISTRIBUTED_TIMEOUT="4"))
           for i in range(2)]
  if kill_one:
    procs[1].kill()
  outs = [p.communicate(timeout=240) for p in procs]
  return procs, outs


def test_a_dead_process_makes_the_other_fail_not_hang(tmp_path):
  procs, outs = _two(tmp_path / "dead", _port(), kill_one=True)
  assert procs[1].returncode != 0
  assert procs[0].returncode != 0  # it did not hang (communicate has a timeout)
  # The survivor waits the 4 s timeout, then ends with one line naming the coordinator.
  err = outs[0][1].strip()
  assert procs[0].returncode == 3, err[-2000:]
  assert err.splitlines()[-1].startswith("error: process 0 waited 4 s at the coordinator "
                                         "127.0.0.1"), err[-2000:]
  assert "Traceback" not in err and "fatal" not in err, err[-2000:]


# A whole run: pretraining + a 2-point sweep sharing it, shard_map over 2 devices.
RUN = ["run", "--no-progress", "--config", str(DIGITS_CONFIG), "--sweep",
       "transfer.learning_rate=1e-3,1e-2", "--config.launch.launcher=shard_map",
       *[f"--config.{o}" for o in TINY], "--config.pretrain.epochs=3",
       "--config.transfer.strategies=('scratch','finetune')", "--config.transfer.epochs=3"]


def _aetl(workdir, env, *extra):
  return subprocess.Popen([sys.executable, "-m", "aetl_jax.cli", *RUN, "--workdir", str(workdir),
                           *extra], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)


def _aetl_two(workdir):
  port = _port()
  return [_aetl(workdir, _env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                              JAX_PROCESS_ID=str(i), AETL_DISTRIBUTED_TIMEOUT="20"),
                "--config.launch.distributed=True")
          for i in range(2)]


def _cells(workdir):
  """Every point's cells without their timings, by point."""
  out = {}
  for point in json.loads((workdir / "sweep.json").read_text()):
    rows = [json.loads(line) for line in
            (workdir / point["name"] / "results" / "cells.jsonl").read_text().splitlines()]
    out[point["name"]] = [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
  return out


def _files(workdir):
  """Relative paths of everything written: an Orbax step counts as its folder (its layout
  differs between one and several processes), TensorBoard event files per folder (their
  names hold a time stamp)."""
  out = set()
  for p in workdir.rglob("*"):
    rel = p.relative_to(workdir).parts
    step = next((i for i, part in enumerate(rel) if part.isdigit()), None)
    if step is not None:
      out.add("/".join(rel[:step + 1]))
    elif p.is_file() and p.name != ".lock":
      out.add("/".join(rel[:-1] + ("events",)) if p.name.startswith("events.out") else "/".join(rel))
  return sorted(out)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("one") / "w"
  p = _aetl(workdir, _env(XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=2")))
  out, err = p.communicate(timeout=300)
  assert p.returncode == 0, err[-3000:]
  return workdir


def test_a_killed_process_stops_the_other_and_the_rerun_equals_one_process(tmp_path, one_process):
  """Process 1 is killed after the first sweep cell: process 0 stops with one line instead
  of hanging; the same command on both resumes, and the finished two-process sweep equals
  the one-process one, written by process 0 alone."""
  workdir = tmp_path / "w"
  procs = _aetl_two(workdir)
  first_cells = workdir / "learning_rate=1e-3" / "results" / "cells.jsonl"
  deadline = time.monotonic() + 240
  while not (first_cells.exists() and first_cells.read_text()) and time.monotonic() < deadline:
    assert procs[0].poll() is None and procs[1].poll() is None, procs[0].stderr.read()[-3000:]
    time.sleep(0.2)
  assert first_cells.exists(), "the first sweep cell never finished"
  procs[1].send_signal(signal.SIGKILL)  # process 1 dies mid-sweep
  out, err = procs[0].communicate(timeout=180)  # the survivor must not hang
  procs[1].communicate()
  assert procs[0].returncode == 3, err[-3000:]  # a training failure, not an abort
  assert ("error: another process of this 2-process run stopped" in err
          and "rerun the same command on every process to resume" in err), err[-3000:]
  procs = _aetl_two(workdir)  # the same command resumes
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert _cells(workdir) == _cells(one_process)
  # Process 0 wrote each file once (a second writer would leave doubled JSON lines, a
  # second event file or a .tmp); process 1 printed no report.
  assert _files(workdir) == _files(one_process)
  assert not [p for p in workdir.rglob("*") if ".tmp" in p.name]
  assert "## comparison (2 points)" in outs[0][0] and "|" not in outs[1][0]
  assert (workdir / "compare.md").read_text() == (one_process / "compare.md").read_text()
