"""One registry pattern for everything pluggable: datasets, classifiers and purifiers.

A :class:`Registry` maps names to objects (loaders, factories). Objects come from a decorator in code or
from an installed package's entry points (``[project.entry-points."benchbench.<kind>s"]``), which are
loaded only when their name is first asked for, so a broken or heavy plugin costs nothing until used.
An unknown name gets one line with the closest known name and the full list.
"""

from __future__ import annotations

import difflib
import fnmatch
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Callable, Generic, TypeVar

from benchbench.errors import BenchError, UnknownName

T = TypeVar("T")


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


class Registry(Generic[T]):
    """Names → objects of one ``kind`` (``dataset``, ``classifier``, ``purifier``), from decorators and from
    the entry-point ``group``."""

    def __init__(self, kind: str, group: str):
        self.kind = kind
        self.group = group
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering an object under ``name``; another object under a taken name is an error
        (registering the same object again is not)."""

        def decorate(obj: T) -> T:
            existing = self._items.get(name)
            if existing is not None and existing is not obj:
                raise BenchError(f"{self.kind} name {name!r} is already registered to {_qualname(existing)}")
            self._items[name] = obj
            return obj

        return decorate

    def entry_points(self) -> dict[str, EntryPoint]:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted names, registered or installed, matching a shell-style ``pattern``."""
        names = set(self._items) | set(self.entry_points())
        return sorted(n for n in names if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        return name in self._items or name in self.entry_points()

    def get(self, name: str) -> T:
        """The object registered under ``name``, loading its entry point on first use."""
        if name in self._items:
            return self._items[name]
        eps = self.entry_points()
        if name not in eps:
            known = self.names()
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownName(f"unknown {self.kind} {name!r}{hint} (available: {', '.join(known) or 'none'})")
        try:
            obj = eps[name].load()
        except Exception as exc:  # a broken plugin must not take the harness down with a traceback
            raise BenchError(f"{self.kind} plugin {name!r} ({eps[name].value}) failed to load: {exc}") from exc
        return self.register(name)(obj)
