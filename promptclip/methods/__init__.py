"""Method-specific code, one file per method (learners, losses, callbacks): every module of this package is
imported here, so a new method is one new file (plus its presets in configs/methods/) and registers itself."""
import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
