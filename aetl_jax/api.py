"""The Python API: load a config file, complete it from the registries, run it.

    from aetl_jax import api
    config = api.load_config("experiments/digits_transfer.py", ["transfer.seeds=2"])
    out = api.run(config, "runs/digits")

:func:`run` applies the same checks, workdir guard and resume as the command
line (``aetl run --config ... --workdir ...``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
from pathlib import Path

import ml_collections

from aetl_jax import objectives, strategies, tasks  # noqa: F401 - built-ins register
from aetl_jax.core.config import ConfigError, apply_overrides
from aetl_jax.core.errors import described
from aetl_jax.data.fingerprint import data_fingerprint
from aetl_jax.engine.launchers import from_main, initialize_distributed, is_main_process
from aetl_jax.models.family import FAMILIES
from aetl_jax.objectives.registry import OBJECTIVES
from aetl_jax.strategies.registry import STRATEGIES
from aetl_jax.tasks.registry import TASKS
from aetl_jax.validation import validate_pretrain_config, validate_transfer_config
from aetl_jax.workdir import WorkdirError, WorkdirLock, prepare_workdir

log = logging.getLogger(__name__)


def load_config_module(path):
  """The Python config file at ``path`` as a module (a config file anywhere)."""
  path = Path(path)
  if not path.is_file():
    raise ConfigError(f"config file {path} does not exist (give a path to a .py file that "
                      f"defines get_config(), e.g. experiments/digits_transfer.py)")
  name = f"aetl_config_{abs(hash(str(path.resolve())))}"
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.path.insert(0, str(path.resolve().parent))  # a config may import its neighbours
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise ConfigError(f"config file {path}, line {e.lineno}: {e.msg}") from None
  except Exception as e:  # noqa: BLE001 - the user's code: name where it failed, in one line
    raise ConfigError(f"config file {path} failed to load: {_where(e, path)}") from None
  finally:
    sys.path.pop(0)
  return module


def _where(error: BaseException, path) -> str:
  """``line N: Type: message`` of an exception raised by the code of the file at ``path``."""
  import traceback
  frames = [f for f in traceback.extract_tb(error.__traceback__)
            if Path(f.filename).resolve() == Path(path).resolve()]
  line = f"line {frames[-1].lineno}: " if frames else ""
  return f"{line}{described(error, 200)}"


def load_config_file(path) -> ml_collections.ConfigDict:
  """``get_config()`` of the Python file at ``path``; a ConfigError (one line naming the file
  and line) when it fails or returns anything but an ml_collections ConfigDict."""
  module = load_config_module(path)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path} defines no get_config()")
  try:
    config = module.get_config()
  except Exception as e:  # noqa: BLE001 - the user's code
    raise ConfigError(f"config file {path}: get_config() raised {_where(e, path)}") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"config file {path}: get_config() returned a {type(config).__name__}; it "
                      f"must return an ml_collections.ConfigDict (e.g. aetl_jax.tasks.transfer."
                      f"default_config() with your changes)")
  return config


def _add(section, defaults) -> None:
  with section.unlocked():
    for key, value in defaults.items():
      if key not in section:
        section[key] = value


def complete(config) -> None:
  """Adds the default keys of every registered part the config names (in place)."""
  if "model" in config and "family" in config.model:
    _add(config.model, FAMILIES.get(config.model.family).defaults)
  if "objective" in config and "name" in config.objective:
    entry = OBJECTIVES.get(config.objective.name)
    _add(config.objective, entry.defaults)
    _add(config.model, entry.info.get("model_defaults", {}))
  if "transfer" in config and "strategies" in config.transfer:
    _add(config.transfer, STRATEGIES.defaults(config.transfer.strategies))


def load_config(path_or_config, overrides=()) -> ml_collections.ConfigDict:
  """A completed config from a file path (or a ConfigDict) and ``key=value`` overrides."""
  config = (path_or_config if isinstance(path_or_config, ml_collections.ConfigDict)
            else load_config_file(path_or_config))
  config = apply_overrides(config, (), complete=complete)
  return apply_overrides(config, overrides, complete=complete)


def validate(config) -> None:
  """Every check that needs no data."""
  TASKS.get(config.get("task", "transfer"))
  if "transfer" in config:
    validate_transfer_config(config)
  else:
    validate_pretrain_config(config)


def load_and_check(config, *, progress: bool = True):
  """(task entry, data): validation and the task's data checks, before any workdir is touched."""
  validate(config)
  task = TASKS.get(config.task)
  data = task.info["load"](config, progress=progress)
  task.info["check"](config, data)
  return task, data


def key_docs(config) -> dict:
  """One-line descriptions of ``config``'s keys, flattened (``'transfer.min_steps'``): the
  task's and those of every registered part the config names."""
  docs = dict(TASKS.get(config.get("task", "transfer")).info.get("key_docs", {}))
  parts = (("model", FAMILIES, [config.model.get("family")] if "model" in config else []),
           ("objective", OBJECTIVES, [config.objective.get("name")] if "objective" in config else []),
           ("transfer", STRATEGIES, list(config.transfer.get("strategies", ()))
            if "transfer" in config else []))
  for section, registry, names in parts:
    for name in names:
      if name in registry:
        for k, v in registry.get(name).key_docs.items():
          docs.setdefault(f"{section}.{k}", v)
  if "objective" in config and config.objective.get("name") in OBJECTIVES:
    entry = OBJECTIVES.get(config.objective.name)
    for k in entry.info.get("model_defaults", {}):
      docs.setdefault(f"model.{k}", f"needed by objective {config.objective.name!r}")
  return docs


def describe_config(config) -> str:
  """The config as ``section:`` / ``  key: value  # description`` lines (--print-config)."""
  docs = key_docs(config)
  lines = []

  def walk(node, prefix, depth):
    for k in node:
      v = node[k]
      key = f"{prefix}{k}"
      if isinstance(v, ml_collections.ConfigDict):
        lines.append("  " * depth + f"{k}:")
        walk(v, key + ".", depth + 1)
      else:
        text = "  " * depth + f"{k}: {v!r}"
        lines.append(text + (f"  # {docs[key]}" if key in docs else ""))

  walk(config, "", 0)
  return "\n".join(lines)


def task_defaults(config) -> dict:
  """Flattened default values of every key ``config`` may hold: its task's defaults completed
  with the registered parts the config names, and every registered strategy's keys (a config
  file may set the keys of strategies an override then drops), to let older workdirs resume."""
  from aetl_jax.core.config import flatten
  make = TASKS.get(config.get("task", "transfer")).info.get("default_config")
  if make is None:
    return {}
  base = make()
  with base.unlocked():
    for section, key in (("model", "family"), ("objective", "name"), ("transfer", "strategies")):
      if section in config and key in config[section] and section in base:
        base[section][key] = config[section][key]
  complete(base)
  if "transfer" in base:
    _add(base.transfer, STRATEGIES.defaults(STRATEGIES.names()))
  return flatten(base.to_dict())


def join_processes(config) -> None:
  """``jax.distributed.initialize()`` when ``config.launch.distributed`` (before anything
  touches a JAX backend: data loading and validation do)."""
  launch = config.get("launch")
  if launch is None or not launch.get("distributed", False):
    return
  task = config.get("task", "transfer")
  if not TASKS.get(task).info.get("distributed", False):
    able = [n for n in TASKS.names() if TASKS.get(n).info.get("distributed", False)]
    raise ConfigError(f"config key 'launch.distributed': the {task} task runs in one process; "
                      f"multi-process runs are for the task(s) {', '.join(able)}")
  initialize_distributed(launch.get("timeout_s"))


@contextlib.contextmanager
def open_workdir(config, workdir, *, overwrite: bool = False, data=None):
  """Locks and prepares ``workdir`` for ``config`` (resume or refuse; a rerun on data whose
  content changed is refused); yields ``(workdir, resuming)``. In a multi-process run process
  0 alone locks and prepares it; the others wait for its answer, and its refusal stops them
  too."""
  lock = WorkdirLock(workdir) if is_main_process() else None
  try:
    if lock is not None:
      try:
        lock.acquire()
        workdir, resuming = prepare_workdir(
            workdir, config, experiment=config.task, overwrite=overwrite,
            defaults=task_defaults(config),
            fingerprint=None if data is None else data_fingerprint(data))
      except Exception:
        from_main((0, 0))  # the other processes stop instead of waiting
        raise
      from_main((1, int(resuming)))
    else:
      ok, resuming = from_main((0, 0))
      if not ok:
        raise WorkdirError(f"process 0 refused the workdir {workdir} (its error says why)")
      workdir, resuming = Path(workdir), bool(resuming)
    yield workdir, resuming
  finally:
    if lock is not None:
      lock.release()


@contextlib.contextmanager
def prepared_run(config, workdir, *, overwrite: bool = False, progress: bool = True):
  """Everything before a task trains, in order: processes joined, the config and the data
  checked, the workdir locked and guarded (resume or refuse). Yields ``(task entry, workdir,
  data, resuming)``; the ``aetl`` command and :func:`run` both start here."""
  join_processes(config)
  task, data = load_and_check(config, progress=progress)
  with open_workdir(config, workdir, overwrite=overwrite, data=data) as (workdir, resuming):
    yield task, workdir, data, resuming


def run(config, workdir, *, overwrite: bool = False, progress: bool = True) -> dict:
  """Runs ``config`` into ``workdir``: checks, workdir guard (resume or refuse), the task."""
  config = load_config(config)
  with prepared_run(config, workdir, overwrite=overwrite, progress=progress) as (
      task, workdir, data, resuming):
    if resuming:
      log.info("resuming the run in %s", workdir)
    return task.fn(config, workdir, data, progress=progress and is_main_process())
