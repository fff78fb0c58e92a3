"""Any folder of images with one sub-folder per class."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from ..errors import DataError
from ..registry import DATASETS
from .base import IMAGE_EXTENSIONS, Dataset, Item, list_images, not_a_folder, split_per_class

DATASETS_GUIDE = "datasets/DATASETS.md"


ADD_OR_REMOVE = "Add images to these folders, or remove the folders of classes you do not want."


def read_class_folders(folder: Path, classnames: Optional[List[str]] = None, ignore: Sequence[str] = (),
                       way_out: str = ADD_OR_REMOVE,
                       describe: Callable[[str], str] = repr) -> Tuple[List[str], List[Item]]:
    """Items from ``folder/<class>/<image>``; labels follow sorted folder names (or the given ``classnames``).

    Hidden folders and the folder names in ``ignore`` are skipped. A missing or empty class folder, or a folder
    that is not one of the given ``classnames``, is an error naming the class (by ``describe(folder name)``) and
    the folder, ending with ``way_out``: a class without images breaks few-shot draws and per-class accuracy, and
    a missing one shifts the labels of the classes after it.
    """
    problem = not_a_folder(folder)
    if problem:
        raise DataError(f"Image folder {folder} {problem}: expected one sub-folder per class, "
                        f"{folder}/<class>/<image> (see {DATASETS_GUIDE}).")
    with os.scandir(folder) as entries:
        found = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith(".") and e.name not in ignore)
    if not found:
        raise DataError(f"Image folder {folder} has no class sub-folders: expected {folder}/<class>/<image>.")
    names = list(classnames) if classnames is not None else found
    extra = sorted(set(found) - set(names))
    if extra:
        raise DataError(f"{folder} has the folders {extra[:5]} ({len(extra)} in all), which are not among its "
                        f"{len(names)} classes. Move them out of {folder}, or check that the right folder is read.")
    items: List[Item] = []
    bad = []
    for label, name in enumerate(names):
        images = list_images(folder / name) if (folder / name).is_dir() else None
        if images is None:
            bad.append(f"class {describe(name)}: the folder {folder / name} does not exist")
        elif not images:
            bad.append(f"class {describe(name)}: the folder {folder / name} holds no images "
                       f"({', '.join(IMAGE_EXTENSIONS)})")
        items += [Item(str(p), label) for p in images or ()]
    if bad:
        more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DataError(f"{len(bad)} of the {len(names)} classes in {folder} {'has' if len(bad) == 1 else 'have'} "
                        f"no images: {'; '.join(bad[:5])}{more}. {way_out}")
    return names, items


@DATASETS.register("imagefolder")
def image_folder(root: Path, template: str = "a photo of a {}.", seed: int = 1, **_) -> Dataset:
    """``root/{train,val,test}/<class>/`` if a ``train`` folder exists; else ``root/<class>/`` split 50/20/30."""
    root = Path(root)
    problem = not_a_folder(root)
    if problem:
        raise DataError(f"Data folder {root} {problem}: give the folder that holds train/, val/, test/ or one "
                        f"sub-folder per class (see {DATASETS_GUIDE}).")
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
