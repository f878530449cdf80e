"""Name -> object registries (methods, protocols, backbones, datasets, suites, grids).

An entry is either the object or a ``"module:attribute"`` string, imported the first time the entry is
asked for: listing names imports nothing, and a run imports only the method and dataset it uses. The
tables of entries are written out where each registry is defined, so what is registered is read in
one place, with no import side effects.

A registry is also the list that drives the parametrized tests (as timm's does).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from bench.core import plugins
from bench.core.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, entries: Mapping[str, T | str] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T | str] = dict(entries or {})

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise UsageError(f"{self.kind} {name!r} is already registered (by {self.module_of(name)}); register "
                                 "yours under another name")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        if name not in self._entries:
            plugins.load()  # a worker process loads its parent's plugins at its first miss
        if name not in self._entries:
            raise UsageError(self.unknown_message(name))
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = self._entries[name] = vars(importlib.import_module(module))[attr]
        return entry

    def module_of(self, name: str) -> str:
        """The module that defines an entry (without importing it)."""
        entry = self._entries[name]
        return entry.partition(":")[0] if isinstance(entry, str) else entry.__module__

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self.names(), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Choose one of: {', '.join(self.names())}."

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """Every entry, imported."""
        return [(name, self.get(name)) for name in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
