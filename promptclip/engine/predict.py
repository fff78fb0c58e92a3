"""Top-k classes for image files with a run's saved prompts."""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Union

import torch
from PIL import Image

from ..data.loaders import open_image, transform_for
from ..errors import DataError
from .precision import resolve_device
from .prompts import load_prompts, read_meta


def check_images(paths: Sequence[Union[str, Path]]) -> None:
    """Raise a DataError naming the first path that is not an image file (checks its header only)."""
    for path in map(Path, paths):
        if not path.exists():
            raise DataError(f"Image {path} does not exist: check the path.")
        if path.is_dir():
            raise DataError(f"Image {path} is a folder: pass image files (e.g. {path / '*.jpg'}).")
        try:
            with Image.open(path):
                pass
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            reason = "not an image" if isinstance(err, Image.UnidentifiedImageError) else str(err)
            raise DataError(f"Image {path} cannot be read ({reason}): pass a JPEG, PNG or other image file.") from None


@torch.no_grad()
def predict(run_dir: Union[str, Path], paths: Sequence[Union[str, Path]], topk: int = 5,
            device: str = "auto", batch_size: int = 32) -> List[dict]:
    """``[{"path", "top": [(classname, probability), ...]}]`` for each image, best first."""
    read_meta(run_dir)  # the run first, then the images: both before any model loads
    check_images(paths)
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
