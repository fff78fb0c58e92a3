"""Evaluation: top-1 accuracy, macro-F1 and per-class accuracy over a loader."""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch
from tqdm.auto import tqdm

from .precision import autocast


def metrics_from_predictions(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> Dict:
    """Accuracy, macro-F1 (mean over classes present in labels or predictions) and per-class accuracy (%)."""
    preds, labels = preds.long().cpu(), labels.long().cpu()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((labels, preds), torch.ones_like(labels), accumulate=True)
    tp = confusion.diag().double()
    support = confusion.sum(1).double()
    predicted = confusion.sum(0).double()
    per_class = torch.where(support > 0, tp / support.clamp(min=1), torch.full_like(tp, float("nan")))
    f1 = 2 * tp / (support + predicted).clamp(min=1)
    present = (support + predicted) > 0
    return {
        "accuracy": 100.0 * float(tp.sum() / max(len(labels), 1)),
        "macro_f1": 100.0 * float(f1[present].mean()) if present.any() else 0.0,
        "per_class_accuracy": [None if torch.isnan(v) else round(100.0 * float(v), 4) for v in per_class],
        "num_images": int(len(labels)),
    }


@torch.no_grad()
def predict_loader(model, loader, device: torch.device, precision: str = "fp32", desc: str = "eval",
                   encode: Optional[Callable] = None, progress: bool = True):
    """Logits and labels over ``loader`` through the model's ``head``. Class features are computed once unless they
    depend on the image. ``encode(inputs) -> normalised features`` replaces the image tower (a feature cache)."""
    model.eval()
    encode = encode if encode is not None else model.image_features
    logits: List[torch.Tensor] = []
    labels: List[torch.Tensor] = []
    with autocast(device, precision):
        fixed = None if model.image_conditioned else model.class_features()
        for inputs, targets in tqdm(loader, desc=desc, leave=False, disable=not progress):
            logits.append(model.head(encode(inputs.to(device, non_blocking=True)), fixed).logits.float().cpu())
            labels.append(targets)
    return torch.cat(logits), torch.cat(labels)


def evaluate(model, loader, device: torch.device, precision: str = "fp32", desc: str = "eval",
             progress: bool = True) -> Dict:
    logits, labels = predict_loader(model, loader, device, precision, desc, progress=progress)
    return metrics_from_predictions(logits.argmax(-1), labels, len(model.classnames))
