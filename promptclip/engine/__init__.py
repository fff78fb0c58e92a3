"""Training, evaluation, saved prompts and run folders."""
from .evaluate import evaluate, metrics_from_predictions
from .prompts import load_prompts, save_prompts
from .run import build_model, evaluate_run, prepare_data, read_result, run, run_dir_for

__all__ = ["evaluate", "metrics_from_predictions", "load_prompts", "save_prompts", "build_model", "evaluate_run",
           "prepare_data", "read_result", "run", "run_dir_for"]
