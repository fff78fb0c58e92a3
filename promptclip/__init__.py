"""promptclip: prompt learning on frozen CLIP models.

``from promptclip import load_run`` loads a finished run for classification; everything else lives in the
submodules (``config``, ``engine``, ``bench``, ``runs``). Importing the package declares the built-in registrants
that need no torch (the dataset readers, every method's options), as timm's package imports its models, so a config
is checked without torch; :mod:`promptclip.model` imports the implementations.
"""
__version__ = "0.1.0"

from . import data, options  # noqa: E402,F401  (the built-in registrants: dataset readers and every method's options)


def load_run(run_dir, device: str = "auto"):
    """A finished run ready to classify image files: ``.predict(paths)``, ``.logits(images)``, ``.transform``."""
    from .engine.predict import load_run as _load_run

    return _load_run(run_dir, device)
