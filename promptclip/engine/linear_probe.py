"""Linear probe: logistic regression on frozen CLIP image features (the CoOp paper's few-shot baseline).

Use it like any method: ``text.name=linear_probe`` (preset ``linear_probe``, options in
:mod:`promptclip.options.learners`, the registered learner in :mod:`promptclip.methods.linear_probe`). Its fit lives
in the engine, which runs it instead of training prompts for options that are ``fits_in_closed_form``.

Features come from the test transform (deterministic, through the feature cache) for train, val and test. With ``C``
null the inverse regularisation is searched on the validation split as CoOp does: a coarse grid ``1e-6 … 1e6``, then
``search_steps`` halvings of the step in log space around the best value (within the grid). A dataset without its
own validation split (ImageNet, whose val is its test) uses ``default_C`` rather than tune on test images.
"""
from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import torch
from safetensors.torch import save as save_safetensors

from ..backbone import FrozenCLIP
from ..config import Config
from ..data.base import Dataset
from ..errors import ConfigError
from ..options.learners import LinearProbeConfig
from ..runs import CLASSIFIER
from ..utils import atomic_write_bytes
from .cache import frozen_features
from .evaluation import metrics_from_predictions

log = logging.getLogger("promptclip")
COARSE_LOG10_C = (-6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0)


def _fit(features: np.ndarray, labels: np.ndarray, c: float, max_iter: int):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=c, max_iter=max_iter, random_state=0).fit(features, labels)


def _accuracy(clf, features: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float((clf.predict(features) == labels).mean())


def search_c(train: Tuple[np.ndarray, np.ndarray], val: Tuple[np.ndarray, np.ndarray], steps: int,
             max_iter: int) -> Tuple[float, float]:
    """The C with the best validation accuracy (coarse grid, then local refinement in log10 C, within the grid's
    range); and that accuracy. Ties keep the smaller C (stronger regularisation)."""
    scores: Dict[float, float] = {}

    def score(log_c: float) -> float:
        if log_c not in scores:
            scores[log_c] = _accuracy(_fit(*train, 10.0 ** log_c, max_iter), *val)
        return scores[log_c]

    low, high = COARSE_LOG10_C[0], COARSE_LOG10_C[-1]
    best = max(COARSE_LOG10_C, key=lambda x: (score(x), -x))
    step = (COARSE_LOG10_C[1] - COARSE_LOG10_C[0]) / 2
    for _ in range(steps):
        candidates = [x for x in (best - step, best, best + step) if low <= x <= high]
        best = max(candidates, key=lambda x: (score(x), -x))
        step /= 2
    return 10.0 ** best, scores[best]


def fit_linear_probe(cfg: Config, backbone: FrozenCLIP, dataset: Dataset, device: torch.device, precision: str,
                     run_dir: Path, progress: bool = True) -> dict:
    """Fit on the (few-shot) training split, choose C, evaluate on test; saves the classifier in ``run_dir``.
    Returns the result fields particular to the probe (``test`` included when ``train.evaluate``)."""
    opts: LinearProbeConfig = cfg.text

    def features(split: str) -> Tuple[np.ndarray, np.ndarray]:
        feats, labels = frozen_features(backbone, dataset.split(split), cfg.output.cache_dir,
                                        cfg.train.eval_batch_size, cfg.data.num_workers, device, precision,
                                        f"{split} features", progress, max_gb=cfg.output.cache_max_gb)
        return feats.numpy(), labels.numpy()

    if not dataset.train:
        raise ConfigError(f"linear_probe needs training images; {dataset.name} has none.")
    train = features("train")
    if len(np.unique(train[1])) < 2:
        raise ConfigError(f"linear_probe needs at least two classes in the training split of {dataset.name}.")
    fields: dict = {}
    if opts.C is not None:
        c = opts.C
    elif dataset.val and not dataset.val_is_test:
        c, fields["val_accuracy"] = search_c(train, features("val"), opts.search_steps, opts.max_iter)
    else:
        c = opts.default_C
        log.info("%s has no validation split of its own: linear probe uses C=%g (text.default_C).", dataset.name, c)
    clf = _fit(*train, c, opts.max_iter)
    coef, intercept = clf.coef_, clf.intercept_
    if len(clf.classes_) == 2:  # sklearn keeps one row for two classes: the second's score minus the first's
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    weight = torch.zeros(dataset.num_classes, train[0].shape[1])
    bias = torch.full((dataset.num_classes,), -math.inf)  # a class absent from training is never predicted
    weight[clf.classes_] = torch.from_numpy(coef).float()
    bias[clf.classes_] = torch.from_numpy(intercept).float()
    metadata = {"C": repr(c), "classnames": "\n".join(dataset.classnames)}
    atomic_write_bytes(Path(run_dir) / CLASSIFIER,
                       save_safetensors({"weight": weight.contiguous(), "bias": bias}, metadata=metadata))
    fields.update({"C": c, "num_parameters": int(clf.coef_.size + clf.intercept_.size),
                   "train_accuracy": _accuracy(clf, *train)})
    if cfg.train.evaluate:
        test_x, test_y = features("test")
        preds = torch.from_numpy(test_x) @ weight.t() + bias
        fields["test"] = metrics_from_predictions(preds.argmax(-1), torch.from_numpy(test_y), dataset.num_classes)
    return fields
