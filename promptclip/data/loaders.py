"""CLIP's transforms, the training views, and the loaders that read items, naming any image that cannot be read.

A *view* is one augmentation of every training image. Each item's augmentation in a view is seeded by (run seed,
view, image path) alone, never by a shared random stream, so any loader order, a resumed run and a feature cache
all see the same crops and flips.
"""
from __future__ import annotations

import hashlib
from typing import Callable, List, Optional, Sequence

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


def view_index(epoch: int, views: int) -> int:
    """The view an epoch trains on: its own (``views`` 0, a fresh view every epoch) or ``epoch mod views``."""
    return epoch % views if views else epoch


def view_seeds(items: Sequence[Item], seed: int, view: int) -> List[int]:
    """Each item's augmentation seed in ``view``: a function of (run seed, view, image path) only."""
    return [int.from_bytes(hashlib.sha256(f"{seed}\t{view}\t{item.path}".encode()).digest()[:8], "little")
            for item in items]


class ImageItems(torch.utils.data.Dataset):
    """Items → (image tensor, label); with ``seeds``, item ``i``'s random transform draws from ``seeds[i]`` (the
    global random stream is left as it was)."""

    def __init__(self, items: Sequence[Item], transform: Callable, seeds: Optional[Sequence[int]] = None):
        self.items = list(items)
        self.transform = transform
        self.seeds = seeds

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        image = open_image(item.path)
        if self.seeds is None:
            return self.transform(image), item.label
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(self.seeds[index])
            return self.transform(image), item.label


def train_batches(num_items: int, batch_size: int, generator: torch.Generator, sampler=None) -> List[List[int]]:
    """An epoch's shuffled batches of item indices (``sampler``: this process's share under DDP); the last partial
    batch is dropped only when at least one full batch exists (so a 1-shot split still trains)."""
    if not num_items:
        raise DataError("The training split is empty: check data.root and data.shots.")
    order = list(sampler) if sampler is not None else torch.randperm(num_items, generator=generator).tolist()
    stop = len(order) - len(order) % batch_size if num_items >= batch_size else len(order)
    return [order[i:i + batch_size] for i in range(0, stop, batch_size)]


def image_loader(items: Sequence[Item], transform: Callable, batches: Sequence[Sequence[int]], num_workers: int = 0,
                 seeds: Optional[Sequence[int]] = None) -> DataLoader:
    """The images of ``items`` in the given batches of indices (``seeds``: see :class:`ImageItems`)."""
    return DataLoader(ImageItems(items, transform, seeds), batch_sampler=batches, num_workers=num_workers)


def eval_loader(items: Sequence[Item], transform: Callable, batch_size: int, num_workers: int = 0,
                sampler: Optional[torch.utils.data.Sampler] = None) -> DataLoader:
    return DataLoader(ImageItems(items, transform), batch_size=batch_size, shuffle=False, sampler=sampler,
                      num_workers=num_workers)
