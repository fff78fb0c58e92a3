"""Decorator registries: learners, datasets and losses register by name; plugins add entries without editing promptclip."""
from __future__ import annotations

import difflib
from typing import Callable, Dict, Generic, Iterable, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")


def suggest(name: str, choices: Iterable[str]) -> str:
    """A ' Did you mean ...?' hint for a misspelt name, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


class Registry(Generic[T]):
    """A name → object table filled by the ``@registry.register("name")`` decorator."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            key = name.lower()
            if key in self._entries and self._entries[key] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered by {self._entries[key]!r}.")
            self._entries[key] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        key = str(name).lower()
        if key not in self._entries:
            raise UnknownNameError(
                f"Unknown {self.kind} {name!r}.{suggest(key, self._entries)} "
                f"Known {self.kind}s: {', '.join(sorted(self._entries))}."
            )
        return self._entries[key]

    def names(self) -> list:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return str(name).lower() in self._entries
