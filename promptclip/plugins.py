"""Outside plugins: packages that register learners, losses, callbacks or datasets without editing promptclip.

A plugin is a module to import, named in its package's metadata under the ``promptclip.plugins`` entry-point group
or in ``PROMPTCLIP_PLUGINS=module[,module...]``. The entry points (the CLI, ``build_config``, ``load_run`` and the
saved-config reader, ``bench``) call :func:`load_plugins` once; the built-in registrants need no loading (the package
imports their options and readers, :mod:`promptclip.model` their implementations).
"""
from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from .errors import PromptclipError

ENTRY_POINT_GROUP = "promptclip.plugins"
PLUGINS_ENV = "PROMPTCLIP_PLUGINS"
_loaded = False


def load_plugins() -> None:
    """Import every outside plugin, once per process; a plugin that fails to import is reported at every call
    until it imports (never half-loaded silently)."""
    global _loaded
    if _loaded:
        return
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        _load(entry.value, f"entry point {entry.name!r} ({ENTRY_POINT_GROUP})", entry.load)
    for name in filter(None, (n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(","))):
        _load(name, f"${PLUGINS_ENV}", lambda name=name: importlib.import_module(name))
    _loaded = True


def _load(target: str, source: str, load) -> None:
    try:
        load()
    except Exception as err:  # noqa: BLE001  (any failure of third-party code is reported the same way)
        raise PromptclipError(f"The promptclip plugin {target!r} from {source} failed to import ({type(err).__name__}: "
                              f"{err}). Fix or uninstall it, or remove it from {source}.") from err
