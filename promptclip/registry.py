"""Decorator registries for learners, losses, callbacks and datasets.

Registrants register with ``@LEARNERS.register("name")`` and friends. The first lookup imports every registrant
(:mod:`promptclip.plugins`: the built-in ones, then outside plugins), so a lookup never depends on what happened to
be imported before, and this module, which the config layer uses, imports none of them.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Callable, Dict, Generic, Iterable, List, Optional, Sequence, Type, TypeVar

from .errors import ConfigError, UnknownNameError

T = TypeVar("T")


def suggest(name: str, choices: Iterable[str]) -> str:
    """A ' Did you mean ...?' hint for a misspelt name, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def reader_options(reader: Callable) -> Optional[List[str]]:
    """The options a dataset reader takes: its parameters after ``root``, but ``split_dir`` (which the engine sets,
    not the user); None when it takes any (``**options``, as a plugin's reader may)."""
    params = list(inspect.signature(reader).parameters.values())[1:]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.name != "split_dir"]


def refuse_unknown_options(options: Iterable[str], known: Sequence[str], where: str,
                           error: Type[Exception] = ConfigError) -> None:
    """Raise ``error`` for the first option not in ``known``, naming the nearest known one: a misspelt option would
    otherwise be dropped without a word (``templat`` leaving the default template)."""
    for key in options:
        if key not in known:
            raise error(f"Unknown option {key!r} in {where}.{suggest(str(key), known)} "
                        f"Valid options: {', '.join(known) or 'none'}.")


class Registry(Generic[T]):
    """A name → object table filled by the ``@registry.register("name")`` decorator."""

    _discovered = False  # shared: one import of promptclip.plugins fills every registry

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

    def _discover(self) -> None:
        if not Registry._discovered:
            Registry._discovered = True  # set first: the registrants' own imports look names up too
            try:
                importlib.import_module("promptclip.plugins").load_all()
            except BaseException:
                Registry._discovered = False  # a failed import is reported again, never half-filled registries
                raise

    def get(self, name: str) -> T:
        self._discover()
        key = str(name).lower()
        if key not in self._entries:
            plural = self.kind + ("es" if self.kind.endswith("s") else "s")
            raise UnknownNameError(
                f"Unknown {self.kind} {name!r}.{suggest(key, self._entries)} "
                f"Known {plural}: {', '.join(sorted(self._entries))}."
            )
        return self._entries[key]

    def names(self) -> list:
        self._discover()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._discover()
        return str(name).lower() in self._entries


#: name → Learner subclass (promptclip.learners)
LEARNERS: Registry = Registry("learner")
#: name → ExtraLoss subclass (promptclip.losses)
LOSSES: Registry = Registry("loss")
#: name → Callback subclass (promptclip.callbacks)
CALLBACKS: Registry = Registry("callback")
#: name → reader(root: Path, **options) -> Dataset (promptclip.data)
DATASETS: Registry = Registry("dataset")
