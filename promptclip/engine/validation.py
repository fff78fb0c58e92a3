"""A finished run's accuracy on its validation split: what per-dataset tuning selects on, never the test split.

The val split is the run's own: for a few-shot run the ``min(shots, 4)`` images per class drawn with its training
images (CoOp's rule, :func:`promptclip.data.fewshot.few_shot`), else the dataset's whole val split, restricted to
the run's classes (base classes for base-to-new). A dataset whose val images are test images (ImageNet, whose val
serves as its test; an image folder without ``test/``) is refused: selecting on it would select on the test split.
The result goes to ``evals/validation-<subsample>-<fingerprint>.json`` beside the run's other evaluations.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

from .. import runs
from ..config import Config
from ..data.base import Dataset
from ..errors import ConfigError, PromptclipError
from .runner import evaluate_prompts, finished_key, finished_run, prepare_data, stored_evaluation

#: the "dataset" part of a validation file's name (``evals/validation-all-1a2b3c4d.json``)
LABEL = "validation"


def validation_identity(cfg: Config, run_fingerprint: str) -> runs.Identity:
    """What a run's validation accuracy depends on: the run, its evaluation settings and its draw (the shots)."""
    settings = {**runs.eval_identity(cfg, run_fingerprint).settings, "split": "val", "data.shots": cfg.data.shots}
    return runs.Identity(settings, runs.fingerprint(settings))


def validation_file(run_dir: Union[str, Path], cfg: Config, run_fingerprint: str) -> Path:
    """Where the validation accuracy of the run in ``run_dir`` (config ``cfg``, identity ``run_fingerprint``) is
    stored."""
    return runs.eval_file(run_dir, LABEL, cfg.data.subsample, validation_identity(cfg, run_fingerprint))


def check_validation_split(dataset: Dataset) -> None:
    """Refuse a val split that is empty or shares images with the test split."""
    test = {item.path for item in dataset.test}
    if dataset.val_is_test or any(item.path in test for item in dataset.val):
        raise ConfigError(
            f"{dataset.name} has no validation split of its own: its val images are test images, so choosing "
            f"settings on them would choose on the test split. Leave {dataset.name} out of the grid (a method entry "
            f"of its own with `grid: {{}}` and values set by hand), or give it a val split apart from its test split "
            f"(an image folder with train/, val/ and test/).")
    if not dataset.val:
        raise ConfigError(f"{dataset.name} has no val images to choose settings on. Give it a val split (an image "
                          f"folder with train/, val/ and test/), or leave it out of the grid.")


def require_validation_split(cfg: Config, run_dir: Union[str, Path]) -> None:
    """Check, before training, that the run's dataset has a val split to tune on (reads the file lists only)."""
    check_validation_split(prepare_data(cfg, shots=0, split_dir=Path(run_dir)))


def validate_run(run_dir: Union[str, Path], progress: bool = True, force: bool = False) -> dict:
    """Evaluate a finished run's prompts on its validation split and store the metrics under ``"val"``; an existing
    result for the same settings is returned (with ``"cached": true``) unless ``force``."""
    run_dir = Path(run_dir)
    cfg, stored = finished_run(run_dir)
    key = finished_key(run_dir)
    identity = validation_identity(cfg, stored.fingerprint)
    if not (run_dir / runs.PROMPTS).is_file():
        raise PromptclipError(f"{run_dir} has no {runs.PROMPTS}: only prompt runs can be validated (a linear probe "
                              f"chooses its C on the validation split itself).")

    def validate() -> dict:
        dataset = prepare_data(cfg, split_dir=run_dir)
        check_validation_split(dataset)
        metrics = evaluate_prompts(run_dir, cfg, dataset, "val", progress)
        return {"run": str(run_dir), "key": key.to_json(), "split": "val", "method": key.method,
                "dataset": dataset.name, "subsample": key.subsample, "shots": key.shots, "seed": key.seed,
                "num_images": len(dataset.val), "fingerprint": identity.fingerprint, "settings": identity.settings,
                "val": metrics, "finished_at": runs.now()}

    return stored_evaluation(run_dir, validation_file(run_dir, cfg, stored.fingerprint), "val", force, validate)
