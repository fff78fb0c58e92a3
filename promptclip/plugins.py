"""Every registrant in one place: importing this module registers all learners, losses, callbacks and datasets.

Outside packages register too, without editing promptclip: through the ``promptclip.plugins`` entry-point group
(in their packaging metadata, each entry a module to import) or ``PROMPTCLIP_PLUGINS=module[,module...]``.
The registries call :func:`load_all` on their first lookup.
"""
from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from . import callbacks, data, learners, linear_probe, losses, methods  # noqa: F401  (the built-in registrants)
from .errors import PromptclipError

ENTRY_POINT_GROUP = "promptclip.plugins"
PLUGINS_ENV = "PROMPTCLIP_PLUGINS"


def load_all() -> None:
    """Import the outside plugins (the built-in registrants came with this module)."""
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        _load(entry.value, f"entry point {entry.name!r} ({ENTRY_POINT_GROUP})", entry.load)
    for name in filter(None, (n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(","))):
        _load(name, f"${PLUGINS_ENV}", lambda name=name: importlib.import_module(name))


def _load(target: str, source: str, load) -> None:
    try:
        load()
    except Exception as err:  # noqa: BLE001  (any failure of third-party code is reported the same way)
        raise PromptclipError(f"The promptclip plugin {target!r} from {source} failed to import ({type(err).__name__}: "
                              f"{err}). Fix or uninstall it, or remove it from {source}.") from err
