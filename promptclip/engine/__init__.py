"""Training, evaluation and saved prompts (run folders themselves belong to :mod:`promptclip.runs`).

The names below are imported on first use (PEP 562), so a command that needs only a torch-free part of the engine
(``promptclip cache``, ``promptclip export``'s parser) starts without importing torch."""
import importlib

_EXPORTS = {"evaluate": "evaluation", "metrics_from_predictions": "evaluation", "load_prompts": "prompts",
            "save_prompts": "prompts", "build_model": "runner", "evaluate_run": "runner", "prepare_data": "runner",
            "run": "runner"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
