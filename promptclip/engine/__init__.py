"""Training, evaluation and saved prompts (run folders themselves belong to :mod:`promptclip.runs`)."""
from .evaluation import evaluate, metrics_from_predictions
from .prompts import load_prompts, save_prompts
from .runner import build_model, evaluate_run, prepare_data, run

__all__ = ["evaluate", "metrics_from_predictions", "load_prompts", "save_prompts", "build_model", "evaluate_run",
           "prepare_data", "run"]
