"""One data-parallel path: jit on one device, or jit(shard_map) over a data mesh.

The step is written once with a named data axis (``lax.pmean`` over
``DATA_AXIS``); a :class:`Launcher` says how many devices run it and how state
and batches are laid out:

* ``jit``: one device, no named axis;
* ``shard_map``: ``jax.jit(jax.shard_map(...))`` over a ``Mesh`` with a
  ``data`` axis; state replicated (``P()``), batch sharded (``P('data')``).
  This is the current JAX recommendation (since JAX 0.8 ``jax.pmap`` is itself
  built on jit + shard_map and is in maintenance mode) and the path to multi-host.
* ``pmap`` is kept as a name (``launch.launcher='pmap'``): it runs the shard_map path.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from aetl_jax.core.errors import first_line

DATA_AXIS = "data"
LAUNCHERS = ("jit", "pmap", "shard_map")

log = logging.getLogger(__name__)


class DistributedError(RuntimeError):
  """A multi-process run could not be formed (a process missing, the coordinator unreachable)."""


@dataclasses.dataclass(frozen=True)
class Launcher:
  kind: str
  devices: tuple

  @property
  def num_devices(self) -> int:
    return len(self.devices)

  @property
  def axis_name(self) -> str | None:
    """The name the step must pmean over (None for plain jit)."""
    return None if self.kind == "jit" else DATA_AXIS

  @property
  def mesh(self) -> Mesh:
    return Mesh(np.asarray(self.devices), (DATA_AXIS,))

  def replicate(self, tree):
    """Places a (host or single-device) tree where the launched step wants it."""
    if self.kind == "shard_map":
      return jax.device_put(tree, NamedSharding(self.mesh, P()))
    return jax.device_put(tree, self.devices[0])

  def unreplicate(self, tree):
    """The inverse of :meth:`replicate`: one copy on the first device, ready for
    evaluation and checkpoints."""
    if self.kind == "shard_map":  # replicated: this process's first copy (multi-host safe)
      local = jax.local_devices()[0]
      return jax.tree.map(
          lambda x: (x.addressable_data(0) if isinstance(x, jax.Array) and not x.is_fully_addressable
                     else jax.device_put(x, local)), tree)
    return tree

  def check_batch_size(self, batch_size: int) -> None:
    n = self.num_devices
    if batch_size % n:
      lower = (batch_size // n) * n
      options = [b for b in (lower, lower + n) if b > 0]
      raise ValueError(f"global batch size {batch_size} is not divisible by the {n} devices of "
                       f"launcher '{self.kind}'; nearest valid sizes: "
                       + ", ".join(map(str, options)))


def make_launcher(kind: str = "jit", num_devices: int | None = None) -> Launcher:
  """Builds a launcher over the first ``num_devices`` devices (all if None); ``'pmap'`` is
  the shard_map launcher under its older name."""
  if kind not in LAUNCHERS:
    raise ValueError(f"unknown launcher {kind!r}; valid: {', '.join(LAUNCHERS)}")
  asked, kind = kind, "shard_map" if kind == "pmap" else kind
  # A mesh spans every process's devices (multi-host); jit runs on this process's first.
  available = jax.devices() if kind == "shard_map" else jax.local_devices()
  if kind == "jit":
    if num_devices not in (None, 1):
      raise ValueError(f"launcher 'jit' runs on one device, got num_devices={num_devices}; "
                       f"use 'pmap' or 'shard_map' for several")
    return Launcher("jit", (available[0],))
  if num_devices is None:
    num_devices = len(available)
  if num_devices < 1 or num_devices > len(available):
    raise ValueError(f"launcher '{kind}' asked for {num_devices} devices but "
                     f"{len(available)} are present: "
                     + ", ".join(str(d) for d in available))
  if num_devices == 1:
    log.debug("launcher '%s' on a single device: runs as a one-device %s (same results as jit)",
              asked, kind)
  return Launcher(kind, tuple(available[:num_devices]))


# How long processes wait for each other to form a run (launch.timeout_s; the environment
# variable AETL_DISTRIBUTED_TIMEOUT overrides it).
DEFAULT_TIMEOUT_S = 300


def distributed_settings(timeout_s: int | None = None) -> dict:
  """The keywords of ``jax.distributed.initialize`` from the environment, checked: a value
  that cannot be right is a ConfigError naming the variable (exit 2), before anything joins."""
  from aetl_jax.core.config import ConfigError
  kw = {}
  address = os.environ.get("JAX_COORDINATOR_ADDRESS")
  if address:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
      raise ConfigError(f"JAX_COORDINATOR_ADDRESS={address[:100]!r} must be HOST:PORT, e.g. "
                        f"host0:1234")
    kw["coordinator_address"] = address
  for env, key in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id"),
                   ("AETL_DISTRIBUTED_TIMEOUT", "heartbeat_timeout_seconds")):
    text = os.environ.get(env)
    if text:
      if not text.strip().isdigit():
        raise ConfigError(f"{env}={text[:100]!r} must be a non-negative integer")
      kw[key] = int(text)
  if kw.get("num_processes") == 0:
    raise ConfigError("JAX_NUM_PROCESSES=0: a run has at least one process")
  if "process_id" in kw and "num_processes" in kw and kw["process_id"] >= kw["num_processes"]:
    raise ConfigError(f"JAX_PROCESS_ID={kw['process_id']} must be below JAX_NUM_PROCESSES="
                      f"{kw['num_processes']} (processes are numbered 0..{kw['num_processes'] - 1})")
  # AETL_DISTRIBUTED_TIMEOUT sets both waits (joining, and a silent peer's heartbeat).
  timeout = kw.get("heartbeat_timeout_seconds") or timeout_s or DEFAULT_TIMEOUT_S
  return {**kw, "timeout": timeout}


def _watchdog(kw: dict, timeout: int):
  """Ends this process with one line and exit code 3 when the run has not formed after
  ``timeout`` seconds (XLA's own wait, set longer, would abort natively, or hang)."""
  import sys
  import threading
  n, me = kw.get("num_processes", "?"), kw.get("process_id", "?")
  where = kw.get("coordinator_address", "the discovered coordinator")

  def fire():
    if me == 0:
      text = (f"process 0 waited {timeout} s at the coordinator {where} for the other "
              f"{n - 1 if isinstance(n, int) else '?'} process(es) of the {n}-process run; at "
              f"least one did not start or cannot reach {where}")
    else:
      text = (f"process {me} of the {n}-process run could not join the coordinator at {where} "
              f"within {timeout} s: it is unreachable, or process 0 did not start")
    print(f"error: {text} (launch.timeout_s); start the same command on every process",
          file=sys.stderr, flush=True)
    os._exit(3)

  timer = threading.Timer(timeout, fire)
  timer.daemon = True
  return timer


def initialize_distributed(timeout_s: int | None = None) -> None:
  """``jax.distributed.initialize()`` once per process (multi-host), within ``timeout_s``.

  On Cloud TPU and under SLURM/Open MPI the coordinator address, process count
  and id are discovered from the environment; elsewhere set
  JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (JAX itself
  reads only the first; the other two are passed on here). A run that has not formed after
  ``timeout_s`` ends this process with one line and exit code 3.
  """
  if jax.distributed.is_initialized():
    return
  kw = distributed_settings(timeout_s)
  timeout = kw.pop("timeout")
  watchdog = _watchdog(kw, timeout)
  watchdog.start()
  try:
    jax.distributed.initialize(**kw, initialization_timeout=timeout + 30)
  except Exception as e:  # noqa: BLE001 - XLA raises its own runtime errors here
    where = kw.get("coordinator_address", "the discovered coordinator")
    raise DistributedError(
        f"could not join the multi-process run at {where} (process {kw.get('process_id', '?')} "
        f"of {kw.get('num_processes', '?')}): {first_line(e, 200)}; "
        f"check that every process started and can reach the coordinator") from None
  finally:
    watchdog.cancel()


def is_main_process() -> bool:
  """Only process 0 writes logs, tables and figures; every process saves checkpoints."""
  return jax.process_index() == 0


# How a collective fails when another process of the run has died (gloo on CPU; the
# coordination service's heartbeat elsewhere).
_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "heartbeat timeout",
              "tasks are unhealthy", "Gloo")


class PeerLostError(DistributedError):
  """A collective failed because another process of this multi-process run stopped."""


def peer_lost(error: BaseException) -> DistributedError | None:
  """The DistributedError to report when ``error`` is a collective that failed because
  another process of this multi-process run stopped; None for any other error. One already
  made by this function (e.g. by the checkpoint store, which re-raises a read that failed in
  a collective) is returned as it is, not wrapped again."""
  if isinstance(error, PeerLostError):
    return error
  text = str(error)
  if jax.process_count() == 1 or not any(s in text for s in _PEER_LOST):
    return None
  return PeerLostError(f"another process of this {jax.process_count()}-process run stopped "
                       f"({first_line(error, 200)})")


def from_main(values: tuple[int, ...]) -> tuple[int, ...]:
  """Process 0's ``values`` (small integers) on every process: one collective, which also
  waits for process 0 to reach it. Unchanged in a single-process run."""
  if jax.process_count() == 1:
    return tuple(values)
  from jax.experimental import multihost_utils
  return tuple(int(v) for v in
               multihost_utils.broadcast_one_to_all(np.asarray(values, np.int32)))
