"""``Registry[T]``: one name → object table for every pluggable kind.

Corpus sources, model adapters, offline GGUF packages, recorded statistics and key-neuron
criteria all register here. An unknown name is an error that lists the valid names and the
closest match, so a typo in a config says what was meant.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """An unknown or doubly registered name. ``str()`` is the plain message (not KeyError's repr)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Name → object. ``kind`` names what is registered in messages ("corpus source").

    ``error`` is the exception class raised for unknown names; it must accept one message
    argument. Domain modules pass their own (e.g. CorpusError) so callers catch one type.
    """

    def __init__(self, kind: str, error: type[Exception] = RegistryError, hint: str = ""):
        self.kind = kind
        self.error = error
        self.hint = hint  # appended to the unknown-name message, e.g. where to add an entry
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T, *, replace: bool = False) -> T:
        if not isinstance(name, str) or not name:
            raise self.error(f"{self.kind} name must be a non-empty str, got {name!r}")
        if name in self._items and not replace and self._items[name] is not obj:
            raise self.error(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        return obj

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@registry.decorator("name")`` registers the decorated object under ``name``."""

        def deco(obj: T) -> T:
            return self.register(name, obj)

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise self.error(self.unknown_message(name)) from None

    def unknown_message(self, name: object) -> str:
        known = sorted(self._items)
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        extra = f" {self.hint}" if self.hint else ""
        return f"unknown {self.kind} {name!r}; valid: {', '.join(known)}.{hint}{extra}"

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self):
        return self._items.items()

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, name: str) -> T:
        return self.get(name)
