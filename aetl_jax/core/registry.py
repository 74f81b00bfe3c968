"""Open registries: things picked by name register next to their code.

A registry maps a name to an :class:`Entry`: the function that builds the
thing, the config keys it owns (with defaults) and a check of those keys.
Strategies, objectives, model families, probes and dataset kinds each have
one; adding a new one is writing a function anywhere and decorating it::

    from aetl_jax.strategies import STRATEGIES

    @STRATEGIES.register("bitfit", defaults={})
    def bitfit(ctx):
      ...

Nothing central is edited: the config gets the entry's default keys when the
entry is named, and validation runs the entry's own check.
"""

from __future__ import annotations

import dataclasses
import difflib
from types import MappingProxyType
from typing import Any, Callable, Mapping

from aetl_jax.core.config import ConfigError, is_number


@dataclasses.dataclass(frozen=True)
class Check:
  """What a key's value must be: ``test(value)`` (a value of a type it cannot compare fails),
  else the one-line ``says(value)``."""

  test: Callable[[Any], bool]
  says: Callable[[Any], str]

  def passes(self, value) -> bool:
    try:
      return bool(self.test(value))
    except (TypeError, ValueError):
      return False


def at_least(low) -> Check:
  return Check(lambda v: is_number(v) and v >= low, lambda v: f"must be >= {low}, got {v!r}")


def positive(*, integer: bool = False) -> Check:
  what = "integer" if integer else "number"
  return Check(lambda v: is_number(v, integer) and v > 0,
               lambda v: f"must be a finite positive {what}, got {v!r}")


def count(low: int = 0, why: str = "") -> Check:
  """An integer >= ``low`` (``why``: what it counts, said in the message)."""
  return Check(lambda v: is_number(v, integer=True) and v >= low,
               lambda v: f"must be an integer >= {low}{why}, got {v!r}")


def within(low, high, *, closed: str = "[]") -> Check:
  """``low``..``high``, each end open or closed as ``closed`` writes it: '[]', '[)', '(]', '()'."""
  left = (lambda v: v >= low) if closed[0] == "[" else (lambda v: v > low)
  right = (lambda v: v <= high) if closed[1] == "]" else (lambda v: v < high)
  return Check(lambda v: is_number(v) and left(v) and right(v),
               lambda v: f"must be in {closed[0]}{low}, {high}{closed[1]}, got {v!r}")


def one_of(*choices) -> Check:
  return Check(lambda v: v in choices,
               lambda v: f"unknown value {v!r}; valid: {', '.join(map(str, choices))}")


def each(check: Check, what: str) -> Check:
  """A non-empty tuple (or list) whose every item passes ``check``; ``what`` says it."""
  return Check(lambda v: isinstance(v, (tuple, list)) and len(v) > 0
               and all(check.passes(x) for x in v),
               lambda v: f"must be a non-empty list of {what}, got {v!r}")


# The type a key's default implies, checked when the key declares no check of its own.
_TYPES = ((bool, lambda v: isinstance(v, bool), "true or false"),
          (int, lambda v: is_number(v, integer=True), "an integer"),
          (float, is_number, "a finite number"),
          (str, lambda v: isinstance(v, str), "a string"))


@dataclasses.dataclass(frozen=True)
class Key:
  """A config key an entry owns: its default, a one-line description (what ``aetl list``
  and ``--print-config`` show) and its check: ``check``, or else the default's type (bool,
  int, float — an int is a float too —, str; ``typed=False``: any value).
  ``defaults={'k': Key(0.1, "what k does", at_least(0))}``; a bare value is a key without
  a description or check. ``value=True`` (an objective's weights): a number the compiled
  step takes as an argument, not a constant, so configs that differ only in it share their
  compiled programs; the code reading it must use it in arithmetic only (no Python ``if``)."""

  default: Any
  doc: str = ""
  check: Check | None = None
  typed: bool = True
  value: bool = False

  def problem(self, value) -> str | None:
    """What is wrong with ``value`` for this key (None: nothing)."""
    if self.check is not None:
      return None if self.check.passes(value) else self.check.says(value)
    if self.typed:
      for kind, test, name in _TYPES:
        if isinstance(self.default, kind):
          return None if test(value) else f"must be {name}, got {value!r}"
    return None


def check_keys(config, keys: Mapping[str, Key]) -> None:
  """ConfigError for the first of ``keys`` ('section.key' names) that ``config`` holds and
  gets wrong."""
  for name, key in keys.items():
    section, k = name.split(".", 1)
    if section in config and k in config[section]:
      problem = key.problem(config[section][k])
      if problem is not None:
        raise ConfigError(f"config key '{name}': {problem}")


@dataclasses.dataclass(frozen=True)
class Entry:
  name: str
  fn: Callable
  defaults: Mapping[str, Any]  # config keys this entry owns, in the registry's section
  validate: Callable | None  # (section config) -> None, raises ConfigError
  info: Mapping[str, Any]  # anything else the owner of the registry reads (roles, model kind ...)
  doc: str
  key_docs: Mapping[str, str] = dataclasses.field(default_factory=dict)  # key -> description
  keys: Mapping[str, Key] = dataclasses.field(default_factory=dict)  # key -> its declaration

  def check(self, section, prefix: str) -> None:
    """ConfigError naming ``prefix.key`` for the first owned key ``section`` gets wrong,
    then the entry's own ``validate`` (checks that span its keys)."""
    for name, key in self.keys.items():
      if name in section and (problem := key.problem(section[name])) is not None:
        raise ConfigError(f"config key '{prefix}.{name}': {problem}")
    if self.validate is not None:
      self.validate(section)


class Registry:
  """Named entries of one kind, e.g. ``Registry('strategy', 'transfer.strategies')``.

  ``key`` is the config key that names entries; errors quote it.
  """

  def __init__(self, kind: str, key: str):
    self.kind = kind
    self.key = key
    self._entries: dict[str, Entry] = {}

  def register(self, name: str | None = None, *, defaults: Mapping | None = None,
               validate: Callable | None = None, **info):
    """Decorator: registers ``fn`` under ``name`` (default: the function's name)."""

    def add(fn):
      entry_name = name or fn.__name__
      if entry_name in self._entries and self._entries[entry_name].fn is not fn:
        raise ValueError(f"{self.kind} {entry_name!r} is registered twice "
                         f"({self._entries[entry_name].fn.__module__} and {fn.__module__})")
      doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
      keys = {k: v if isinstance(v, Key) else Key(v, typed=False)
              for k, v in dict(defaults or {}).items()}
      values = {k: v.default for k, v in keys.items()}
      docs = {k: v.doc for k, v in keys.items() if v.doc}
      self._entries[entry_name] = Entry(entry_name, fn, MappingProxyType(values), validate,
                                        MappingProxyType(info), doc, MappingProxyType(docs),
                                        MappingProxyType(keys))
      return fn

    return add

  def names(self) -> tuple[str, ...]:
    return tuple(self._entries)

  def __contains__(self, name) -> bool:
    return name in self._entries

  def get(self, name: str) -> Entry:
    """The entry called ``name``; a ConfigError listing registered names otherwise."""
    if name not in self._entries:
      raise ConfigError(self.unknown(name))
    return self._entries[name]

  def unknown(self, name) -> str:
    close = difflib.get_close_matches(str(name), self._entries, n=3, cutoff=0.5)
    return (f"config key '{self.key}': unknown {self.kind} {name!r}"
            + (f" (did you mean {', '.join(close)}?)" if close else "")
            + f"; registered: {', '.join(self._entries)}")

  def key_docs(self) -> dict:
    """Every entry's key descriptions: {key: description} (the first entry that has one)."""
    out = {}
    for entry in self._entries.values():
      for k, v in entry.key_docs.items():
        out.setdefault(k, v)
    return out

  def defaults(self, names) -> dict:
    """The merged default keys of the named entries (first one wins on a shared key)."""
    out = {}
    for n in names:
      for k, v in self.get(n).defaults.items():
        out.setdefault(k, v)
    return out
