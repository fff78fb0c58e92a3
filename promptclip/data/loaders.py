"""CLIP's transforms and the loaders that read items, naming any image that cannot be read."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T

from ..errors import DataError
from .base import Item


def build_transform(image_size: int, mean, std, train: bool) -> Callable:
    """Train: RandomResizedCrop(scale 0.08–1, bicubic) + flip; test: Resize + CenterCrop. Both normalise."""
    bicubic = T.InterpolationMode.BICUBIC
    if train:
        head = [T.RandomResizedCrop(image_size, scale=(0.08, 1.0), interpolation=bicubic), T.RandomHorizontalFlip()]
    else:
        head = [T.Resize(image_size, interpolation=bicubic), T.CenterCrop(image_size)]
    return T.Compose([*head, T.ToTensor(), T.Normalize(mean, std)])


def transform_for(backbone, train: bool) -> Callable:
    """The transform with the backbone's own image size, mean and std."""
    return build_transform(backbone.image_size, backbone.image_mean, backbone.image_std, train)


def transform_signature(backbone, train: bool) -> str:
    """A string that changes whenever the transform would (for caches keyed by it)."""
    return f"{'train' if train else 'test'}-{backbone.image_size}-{backbone.image_mean}-{backbone.image_std}"


def open_image(path: str) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"Cannot read image {path}: {err}. Replace or remove it; "
                        f"`promptclip data check ROOT --verify` lists every unreadable image.") from None


class ImageItems(torch.utils.data.Dataset):
    """Items → (image tensor, label)."""

    def __init__(self, items: Sequence[Item], transform: Callable):
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        return self.transform(open_image(item.path)), item.label


def train_loader(items: Sequence[Item], transform: Callable, batch_size: int, generator: torch.Generator,
                 num_workers: int = 0, sampler=None) -> DataLoader:
    """Shuffled batches; the last partial batch is dropped only when at least one full batch exists (so a
    1-shot split still trains)."""
    if not items:
        raise DataError("The training split is empty: check data.root and data.shots.")
    return DataLoader(ImageItems(items, transform), batch_size=batch_size, shuffle=sampler is None,
                      sampler=sampler, generator=generator if sampler is None else None, num_workers=num_workers,
                      drop_last=len(items) >= batch_size, persistent_workers=False)


def eval_loader(items: Sequence[Item], transform: Callable, batch_size: int, num_workers: int = 0,
                sampler: Optional[torch.utils.data.Sampler] = None) -> DataLoader:
    return DataLoader(ImageItems(items, transform), batch_size=batch_size, shuffle=False, sampler=sampler,
                      num_workers=num_workers)
