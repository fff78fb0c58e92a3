"""Any folder of images with one sub-folder per class."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from ..errors import DataError
from .base import DATASETS, IMAGE_EXTENSIONS, Dataset, Item, list_images, split_per_class

DATASETS_GUIDE = "datasets/DATASETS.md"


def read_class_folders(folder: Path, classnames: Optional[List[str]] = None,
                       ignore: Sequence[str] = ()) -> Tuple[List[str], List[Item]]:
    """Items from ``folder/<class>/<image>``; labels follow sorted folder names (or the given ``classnames``).

    Hidden folders and the folder names in ``ignore`` are skipped; an empty class folder is an error because a
    class without images breaks few-shot draws and per-class accuracy.
    """
    if not folder.is_dir():
        raise DataError(f"Image folder {folder} does not exist. Expected one sub-folder per class "
                        f"(see {DATASETS_GUIDE}).")
    with os.scandir(folder) as entries:
        found = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith(".") and e.name not in ignore)
    if not found:
        raise DataError(f"Image folder {folder} has no class sub-folders: expected {folder}/<class>/<image>.")
    names = list(classnames) if classnames is not None else found
    present = set(found)
    missing = [n for n in names if n not in present]
    if missing:
        raise DataError(f"{folder} lacks the class folders {missing[:5]} ({len(missing)} in all).")
    items: List[Item] = []
    for label, name in enumerate(names):
        images = list_images(folder / name)
        if not images:
            raise DataError(f"Class folder {folder / name} holds no images (looked for "
                            f"{', '.join(IMAGE_EXTENSIONS)}): add images or remove the folder.")
        items += [Item(str(p), label) for p in images]
    return names, items


@DATASETS.register("imagefolder")
def image_folder(root: Path, template: str = "a photo of a {}.", seed: int = 1, **_) -> Dataset:
    """``root/{train,val,test}/<class>/`` if a ``train`` folder exists; else ``root/<class>/`` split 50/20/30."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Data folder {root} does not exist.")
    notes = []
    if (root / "train").is_dir():
        classnames, train = read_class_folders(root / "train")
        splits = {}
        for split in ("val", "test"):
            splits[split] = read_class_folders(root / split, classnames)[1] if (root / split).is_dir() else []
        if not splits["test"]:
            splits["test"] = splits["val"]
            notes.append(f"{root} has no test folder: evaluating on val.")
        val, test = splits["val"], splits["test"]
    else:
        classnames, items = read_class_folders(root)
        train, val, test = split_per_class(items, 0.5, 0.2, seed)
        notes.append(f"{root} has no train/val/test folders: split each class 50/20/30 with seed {seed}.")
    return Dataset(name=root.name, classnames=classnames, train=train, val=val, test=test, root=root,
                   template=template, notes=notes)
