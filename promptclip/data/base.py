"""What every dataset reader returns: items, class names and the zero-shot template."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from ..errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass(frozen=True)
class Item:
    """One labelled image. ``path`` is absolute; few-shot draws store it relative to ``Dataset.root``."""

    path: str
    label: int


@dataclass
class Dataset:
    """A dataset with its splits. Labels index ``classnames``; ``template`` has one ``{}`` for the class name.

    ``val_is_test`` marks datasets whose validation split is their test split (ImageNet): a few-shot draw leaves
    such a val split whole instead of sampling from the test set.
    """

    name: str
    classnames: List[str]
    train: List[Item]
    val: List[Item]
    test: List[Item]
    root: Path
    template: str = "a photo of a {}."
    templates: Optional[List[str]] = None  # ensemble for zero-shot; defaults to [template]
    notes: List[str] = field(default_factory=list)  # things the reader did that a user should know
    val_is_test: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def split(self, name: str) -> List[Item]:
        if name not in ("train", "val", "test"):
            raise DataError(f"Unknown split {name!r}: use train, val or test.")
        return getattr(self, name)

    def replace(self, **changes) -> "Dataset":
        return dataclasses.replace(self, **changes)


def items_per_class(items: List[Item]) -> Dict[int, List[Item]]:
    """Items grouped by label, classes in order of first appearance (as Dassl's ``split_dataset_by_label``)."""
    groups: Dict[int, List[Item]] = {}
    for item in items:
        groups.setdefault(item.label, []).append(item)
    return groups


def split_per_class(items: List[Item], p_train: float = 0.5, p_val: float = 0.2, seed: int = 1):
    """Split items per class into train/val/test by fractions (the reference's rule for datasets without a split).

    Classes are shuffled in order of first appearance in ``items``, as CoOp's generators do, so the same seed
    gives the reference's split.
    """
    import random

    rng = random.Random(seed)
    train: List[Item] = []
    val: List[Item] = []
    test: List[Item] = []
    for group in items_per_class(items).values():
        group = list(group)
        rng.shuffle(group)
        n_train = round(len(group) * p_train)
        n_val = round(len(group) * p_val)
        train += group[:n_train]
        val += group[n_train:n_train + n_val]
        test += group[n_train + n_val:]
    return train, val, test


def not_a_folder(path: Path) -> Optional[str]:
    """Why ``path`` cannot be read as a folder, as the end of a sentence about it, or None when it is one."""
    if Path(path).is_dir():
        return None
    return "is a file, but a folder is expected" if Path(path).exists() else "does not exist"


def list_images(folder: Path) -> List[Path]:
    """Image files directly inside ``folder``, sorted by name; hidden files are skipped.

    ``os.scandir`` reads the file type from the directory listing, so a folder of a million images costs no stat
    per file (which matters on network file systems).
    """
    with os.scandir(folder) as entries:
        names = [e.name for e in entries if not e.name.startswith(".") and e.is_file()
                 and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS]
    return [Path(folder) / n for n in sorted(names)]
