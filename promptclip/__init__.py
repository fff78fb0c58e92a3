"""promptclip: prompt learning on frozen CLIP models.

``from promptclip import load_run`` loads a finished run for classification; everything else lives in the
submodules (``config``, ``engine``, ``bench``, ``runs``), so importing the package stays light.
"""
__version__ = "0.1.0"


def load_run(run_dir, device: str = "auto"):
    """A finished run ready to classify image files: ``.predict(paths)``, ``.logits(images)``, ``.transform``."""
    from .engine.predict import load_run as _load_run

    return _load_run(run_dir, device)
