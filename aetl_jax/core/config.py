"""Config overrides and checks (ml_collections), with one-line errors.

Overrides are ``key.path=value`` strings (``--config.pretrain.epochs=5`` on the
command line). Values are parsed as Python literals and must keep the type of
the default they replace; unknown keys get close-match suggestions.
"""

from __future__ import annotations

import ast
import difflib

import ml_collections


class ConfigError(ValueError):
  """A bad config key or value; the message is one line and says what is valid."""


def flatten(config) -> dict:
  out = {}

  def walk(prefix, node):
    for key, value in node.items():
      name = f"{prefix}{key}"
      if isinstance(value, (ml_collections.ConfigDict, dict)):
        walk(name + ".", value)
      else:
        out[name] = value

  walk("", config)
  return out


def _parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _coerce(key: str, default, value):
  if default is None:
    return value
  if isinstance(default, bool):
    if isinstance(value, bool):
      return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
      return value.lower() == "true"
  elif isinstance(default, (int, float)) and isinstance(value, (int, float)) \
      and not isinstance(value, bool):
    if isinstance(default, int) and isinstance(value, float):
      if value.is_integer():
        return int(value)
    else:
      return type(default)(value)
  elif isinstance(default, (tuple, list)):
    if isinstance(value, (tuple, list)):
      return tuple(value)
    if isinstance(value, (int, float, str)):
      return (value,)
  elif isinstance(default, str):
    if isinstance(value, str):
      return value
    return str(value)
  raise ConfigError(f"config key '{key}' expects {type(default).__name__} (default {default!r}), "
                    f"got {value!r}")


def _split(item: str) -> tuple[str, str]:
  if "=" not in item or not item.split("=", 1)[0].strip():
    raise ConfigError(f"malformed override {item!r}; expected KEY=VALUE, e.g. pretrain.epochs=5")
  key, text = item.split("=", 1)
  key = key.strip()
  return key[len("--config."):] if key.startswith("--config.") else key, text


def _set(config, key: str, value) -> None:
  node = config
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  with node.ignore_type():
    node[leaf] = value


def apply_overrides(config: ml_collections.ConfigDict, overrides, *,
                    complete=None) -> ml_collections.ConfigDict:
  """Returns a copy of ``config`` with ``key=value`` overrides applied.

  ``complete(config)``, when given, runs after the overrides of keys the
  config already has (so a new ``model.family`` or strategy brings its own
  keys), then the remaining overrides apply to the completed config.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  pending = [_split(item) for item in overrides]
  for final in (complete is None, True):
    known = flatten(config)
    later = []
    for key, text in pending:
      if key not in known:
        if not final:
          later.append((key, text))
          continue
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else \
            f"valid keys: {', '.join(sorted(known))}"
        raise ConfigError(f"unknown config key '{key}'; {hint}")
      value = _coerce(key, known[key], _parse_value(text))
      _set(config, key, value)
      known[key] = value
    if final:
      break
    complete(config)
    pending = later
  return config


def require(condition: bool, key: str, message: str) -> None:
  """Raises ConfigError naming ``key`` when ``condition`` is false."""
  if not condition:
    raise ConfigError(f"config key '{key}': {message}")


def is_number(value, integer: bool = False) -> bool:
  """A finite int (or float unless ``integer``), not a bool."""
  import math
  kind = int if integer else (int, float)
  return isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)


def require_positive(section, prefix: str, *names: str, integer: bool = False) -> None:
  """ConfigError naming ``prefix.name`` for each of ``names`` that is not a finite positive
  number (an integer with ``integer``)."""
  for name in names:
    value = section[name]
    require(is_number(value, integer) and value > 0, f"{prefix}.{name}",
            f"must be a finite positive {'integer' if integer else 'number'}, got {value!r}")


def _as_tuples(value):
  """Lists (as JSON stores tuples) to tuples, at every depth: (('a', 1),) == [['a', 1]]."""
  return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def diff(old: dict, new: dict) -> list[str]:
  """Human-readable differences between two flattened configs."""
  lines = []
  for key in sorted(set(old) | set(new)):
    a, b = _as_tuples(old.get(key, "<absent>")), _as_tuples(new.get(key, "<absent>"))
    if a != b:
      lines.append(f"{key}: {a!r} -> {b!r}")
  return lines
