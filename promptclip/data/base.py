"""What every dataset reader returns: items, class names and the zero-shot template."""
from __future__ import annotations

import dataclasses
import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ..errors import DataError

#: what counts as an image (by extension, any case): torchvision's ``IMG_EXTENSIONS``, so a folder gives the
#: images torchvision's ImageFolder finds
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


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


@dataclass
class FolderImages:
    """What :func:`walk_images` found under one folder."""

    paths: List[Path]  # the images, in torchvision's order: sorted folders, each folder's files sorted by name
    nested: int = 0  # how many of them lie in sub-folders
    repeated: List[Path] = field(default_factory=list)  # linked folders skipped: their target was already walked
    others: List[Path] = field(default_factory=list)  # files skipped because their extension is not an image's
    dangling: List[Path] = field(default_factory=list)  # image-named links that lead to no file (broken, or a loop)


def walk_images(folder: Path) -> FolderImages:
    """The images at any depth under ``folder``, as torchvision's ImageFolder finds them (``os.walk`` following
    symbolic links, :data:`IMAGE_EXTENSIONS` in any case); hidden files and folders are skipped.

    A linked folder whose target was already walked (a link back up the tree, or a second link to the same folder)
    is skipped and listed in ``repeated``, so a symlink loop ends instead of walking forever. ``os.walk`` reads the
    file types from the directory listings, so a folder of a million images costs no stat per file; only files that
    are links are followed, and one that leads to no file (broken, or a loop of links) is skipped into ``dangling``.
    """
    folder = Path(folder)
    seen = set()
    found = []
    result = FolderImages([])

    def unreadable(err: OSError) -> None:
        raise DataError(f"Cannot read the folder {err.filename}: {err.strerror}. Make it readable, or move it out "
                        f"of {folder}.")

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            result.repeated.append(Path(dirpath))
            dirnames.clear()
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        names = sorted(n for n in filenames if not n.startswith("."))
        is_image = {n: os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS for n in names}
        result.others += [Path(dirpath) / n for n in names if not is_image[n]]
        images = [n for n in names if is_image[n]]
        dangling = {n for n in images if os.path.islink(os.path.join(dirpath, n))
                    and not os.path.isfile(os.path.join(dirpath, n))}
        result.dangling += [Path(dirpath) / n for n in images if n in dangling]
        found.append((dirpath, [n for n in images if n not in dangling]))
    for dirpath, images in sorted(found):
        result.paths += [Path(dirpath) / n for n in images]
        if Path(dirpath) != folder:
            result.nested += len(images)
    return result


def split_dir_option(reader: Callable, split_dir: Optional[Path]) -> dict:
    """``{"split_dir": split_dir}`` for a reader that takes it (by name or in ``**options``), else ``{}``."""
    params = inspect.signature(reader).parameters
    takes = "split_dir" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    return {"split_dir": split_dir} if takes else {}


