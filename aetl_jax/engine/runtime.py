"""The backend policy, resolved once into an explicit value that is passed in.

Which epoch runner, which XLA compiler options and which launcher a program
uses depend on the backend and the model family (measured choices, see
BENCHMARKS.md). They are decided here, once per run, into a frozen
:class:`Runtime`; nothing below reads the backend or global state again, and
the value is hashable so compiled programs can be cached on it.
"""

from __future__ import annotations

import dataclasses

import jax

from aetl_jax.engine.compiler import per_batch_on_cpu, train_compiler_options
from aetl_jax.engine.launchers import Launcher, make_launcher

RUNNERS = ("scan", "per_batch", "auto")


def resolve_runner(runner: str, family: str | None, backend: str, input_shape=None) -> str:
  """'auto': one call per batch for conv families on XLA:CPU, where convolutions
  inside a scan lose their fast backward layouts (jax#12868) — for ResNet-18 from 64-px
  inputs on (:func:`aetl_jax.engine.compiler.per_batch_on_cpu`); scan otherwise."""
  if runner not in RUNNERS:
    raise ValueError(f"unknown runner {runner!r}; valid: {', '.join(RUNNERS)}")
  if runner != "auto":
    return runner
  return "per_batch" if backend == "cpu" and per_batch_on_cpu(family, input_shape) else "scan"


@dataclasses.dataclass(frozen=True)
class Runtime:
  """How programs of one model family run here: backend, launcher, runner, XLA options."""

  backend: str
  launcher: Launcher
  family: str | None = None
  runner: str = "scan"
  compiler_options: tuple = ()

  @property
  def options(self) -> dict | None:
    return dict(self.compiler_options) or None

  def replace(self, **kw) -> "Runtime":
    return dataclasses.replace(self, **kw)

  def single_device(self) -> "Runtime":
    """The same policy on one device (vmapped seeds use the seed axis instead)."""
    return self.replace(launcher=make_launcher("jit"))

  def for_features(self) -> "Runtime":
    """Programs over cached features (dense heads only): no family-specific options."""
    return self.replace(compiler_options=())


def make_runtime(*, family: str | None = None, runner: str = "auto", launcher: str = "jit",
                 num_devices: int | None = None, backend: str | None = None,
                 input_shape=None) -> Runtime:
  """``input_shape``: one example's shape (height, width, channels), when the runner
  depends on it (:func:`resolve_runner`)."""
  backend = backend or jax.default_backend()
  return Runtime(backend=backend, launcher=make_launcher(launcher, num_devices or None),
                 family=family, runner=resolve_runner(runner, family, backend, input_shape),
                 compiler_options=tuple(sorted(
                     train_compiler_options(family, backend, input_shape).items())))


def runtime_from_config(config, section: str, input_shape=None) -> Runtime:
  """The runtime of ``config[section]`` (its ``runner``) with ``config.launch`` and the model
  family, for examples of ``input_shape``."""
  launch = config.get("launch")
  if launch is not None and launch.get("distributed", False):
    from aetl_jax.engine.launchers import initialize_distributed
    initialize_distributed(launch.get("timeout_s"))
  return make_runtime(family=config.model.family, runner=config[section].runner,
                      launcher=launch.launcher if launch is not None else "jit",
                      num_devices=(launch.num_devices or None) if launch is not None else None,
                      input_shape=input_shape)
