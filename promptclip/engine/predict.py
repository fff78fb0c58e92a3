"""Top-k classes for image files with a run's saved prompts (its run folder, or its ``promptclip export``)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Union

import torch
from PIL import Image

from ..data.loaders import open_image, transform_for
from ..errors import DataError
from ..devices import resolve_device
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


class LoadedRun:
    """A finished run ready to classify: its model (frozen CLIP + learned prompts), the backbone's test
    preprocessing (``transform``: PIL image → tensor) and its class names. ``run_dir`` is a run folder or an
    exported adapter folder (told apart by its ``adapter_config.json``), checked the same way."""

    def __init__(self, run_dir: Union[str, Path], device: str = "auto"):
        read_meta(run_dir)
        self.run_dir = Path(run_dir)
        self.device = resolve_device(device)
        self.model = load_prompts(run_dir, device=self.device).eval()
        self.transform = transform_for(self.model.backbone, train=False)
        self.classnames: List[str] = self.model.classnames
        self._class_features: Optional[torch.Tensor] = None  # computed once unless they depend on the image

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch of preprocessed images ``[B, 3, H, W]``."""
        model = self.model
        feats = model.image_features(images.to(self.device))
        if not model.image_conditioned and self._class_features is None:
            self._class_features = model.class_features()
        return model.head(feats, self._class_features).logits

    def predict(self, paths: Sequence[Union[str, Path]], topk: int = 5, batch_size: int = 32) -> List[dict]:
        """``[{"path", "top": [(classname, probability), ...]}]`` for each image file, best first."""
        check_images(paths)
        return self._classify(paths, topk, batch_size)

    def _classify(self, paths: Sequence[Union[str, Path]], topk: int, batch_size: int) -> List[dict]:
        """:meth:`predict` for images already checked."""
        k = min(topk, len(self.classnames))
        out = []
        for start in range(0, len(paths), batch_size):
            chunk = [str(p) for p in paths[start:start + batch_size]]
            probs = self.logits(torch.stack([self.transform(open_image(p)) for p in chunk])).softmax(-1)
            values, indices = probs.topk(k, dim=-1)
            for path, vals, idx in zip(chunk, values.tolist(), indices.tolist()):
                out.append({"path": path, "top": [(self.classnames[i], round(v, 4)) for i, v in zip(idx, vals)]})
        return out


def load_run(run_dir: Union[str, Path], device: str = "auto") -> LoadedRun:
    """Load a finished run (its folder, or its export) for classification (``.predict(paths)``, ``.logits(images)``,
    ``.transform``)."""
    return LoadedRun(run_dir, device)


def predict(run_dir: Union[str, Path], paths: Sequence[Union[str, Path]], topk: int = 5,
            device: str = "auto", batch_size: int = 32) -> List[dict]:
    """``[{"path", "top": [(classname, probability), ...]}]`` for each image, best first."""
    read_meta(run_dir)  # the run (or export) first, then the images: both before any model loads
    check_images(paths)
    return load_run(run_dir, device)._classify(paths, topk, batch_size)
