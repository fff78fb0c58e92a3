"""Top-k classes for image files with a run's saved prompts."""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Union

import torch

from ..data.loaders import open_image, transform_for
from .precision import resolve_device
from .prompts import load_prompts


@torch.no_grad()
def predict(run_dir: Union[str, Path], paths: Sequence[Union[str, Path]], topk: int = 5,
            device: str = "auto", batch_size: int = 32) -> List[dict]:
    """``[{"path", "top": [(classname, probability), ...]}]`` for each image, best first."""
    dev = resolve_device(device)
    model = load_prompts(run_dir, device=dev).eval()
    transform = transform_for(model.backbone, train=False)
    k = min(topk, len(model.classnames))
    fixed = None if model.image_conditioned else model.class_features()
    out = []
    for start in range(0, len(paths), batch_size):
        chunk = [str(p) for p in paths[start:start + batch_size]]
        images = torch.stack([transform(open_image(p)) for p in chunk]).to(dev)
        feats = model.image_features(images)
        probs = model.logits(feats, fixed if fixed is not None else model.class_features(feats)).softmax(-1)
        values, indices = probs.topk(k, dim=-1)
        for path, vals, idx in zip(chunk, values.tolist(), indices.tolist()):
            out.append({"path": path, "top": [(model.classnames[i], round(v, 4)) for i, v in zip(idx, vals)]})
    return out
