"""Decorator registries for learners, losses, callbacks and datasets.

Registrants register with ``@LEARNERS.register("name")`` and friends; their options dataclasses are declared
torch-free with ``@LEARNERS.options("name")`` (in :mod:`promptclip.options`). As in timm, the registry imports
nothing: the package imports its built-in registrants (``promptclip`` their options and the dataset readers,
:mod:`promptclip.model` the implementations) and the entry points load outside plugins
(:func:`promptclip.plugins.load_plugins`).
"""
from __future__ import annotations

import difflib
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
    """A name → object table filled by the ``@registry.register("name")`` decorator; a lookup is a dict read.

    A registrant's options dataclass (its ``Config``) is also declared on its own, torch-free, with
    ``@registry.options("name")``: the config layer checks a run's options through :meth:`config` without importing
    the registrant's implementation (and torch). ``register`` declares the ``Config`` of an implementation that has
    one, so an outside plugin registers in one place.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, T] = {}
        self._options: Dict[str, type] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            key = name.lower()
            if key in self._entries and self._entries[key] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered by {self._entries[key]!r}.")
            config = getattr(obj, "Config", None)
            if config is not None:
                self._declare(key, config)
            self._entries[key] = obj
            return obj

        return decorator

    def options(self, name: str) -> Callable[[type], type]:
        """Declare the options dataclass of the registrant ``name`` (torch-free, before its implementation)."""
        def decorator(config: type) -> type:
            self._declare(name.lower(), config)
            return config

        return decorator

    def _declare(self, key: str, config: type) -> None:
        known = self._options.get(key)
        if known is not None and known is not config:
            raise ValueError(f"{self.kind} {key!r} already has the options {known!r}, not {config!r}.")
        self._options[key] = config

    def _unknown(self, name: str) -> UnknownNameError:
        plural = self.kind + ("es" if self.kind.endswith("s") else "s")
        return UnknownNameError(f"Unknown {self.kind} {name!r}.{suggest(str(name).lower(), self.names())} "
                                f"Known {plural}: {', '.join(self.names())}.")

    def get(self, name: str) -> T:
        """The registered implementation ``name``."""
        key = str(name).lower()
        if key in self._entries:
            return self._entries[key]
        if key in self._options:
            raise UnknownNameError(f"The {self.kind} {name!r} has options but no implementation yet: import "
                                   f"promptclip.model (which imports every built-in one) or the plugin that "
                                   f"registers it.")
        raise self._unknown(name)

    def config(self, name: str) -> type:
        """The options dataclass of ``name``, without importing its implementation."""
        key = str(name).lower()
        if key not in self._options:
            raise self._unknown(name)
        return self._options[key]

    def names(self) -> list:
        return sorted({*self._entries, *self._options})

    def __contains__(self, name: str) -> bool:
        key = str(name).lower()
        return key in self._entries or key in self._options


#: name → Learner subclass (promptclip.learners)
LEARNERS: Registry = Registry("learner")
#: name → ExtraLoss subclass (promptclip.losses)
LOSSES: Registry = Registry("loss")
#: name → Callback subclass (promptclip.callbacks)
CALLBACKS: Registry = Registry("callback")
#: name → reader(root: Path, **options) -> Dataset (promptclip.data)
DATASETS: Registry = Registry("dataset")
