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

from aetl_jax.core.config import ConfigError


@dataclasses.dataclass(frozen=True)
class Key:
  """A config key an entry owns: its default and a one-line description (what ``aetl list``
  and ``--print-config`` show). ``defaults={'k': Key(0.1, "what k does")}``; a bare value
  is a key without a description."""

  default: Any
  doc: str = ""


@dataclasses.dataclass(frozen=True)
class Entry:
  name: str
  fn: Callable
  defaults: Mapping[str, Any]  # config keys this entry owns, in the registry's section
  validate: Callable | None  # (section config) -> None, raises ConfigError
  info: Mapping[str, Any]  # anything else the owner of the registry reads (roles, model kind ...)
  doc: str
  key_docs: Mapping[str, str] = dataclasses.field(default_factory=dict)  # key -> description


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
      keys = dict(defaults or {})
      values = {k: v.default if isinstance(v, Key) else v for k, v in keys.items()}
      docs = {k: v.doc for k, v in keys.items() if isinstance(v, Key) and v.doc}
      self._entries[entry_name] = Entry(entry_name, fn, MappingProxyType(values), validate,
                                        MappingProxyType(info), doc, MappingProxyType(docs))
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
