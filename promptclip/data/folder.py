"""Any folder of images with one sub-folder per class (images at any depth below it, as torchvision reads them)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Union

import yaml

from ..errors import DataError
from ..registry import DATASETS, suggest
from .base import IMAGE_EXTENSIONS, Dataset, Item, not_a_folder, split_per_class, walk_images

DATASETS_GUIDE = "datasets/DATASETS.md"


ADD_OR_REMOVE = "Add images to these folders, or remove the folders of classes you do not want."


class ClassFolders(NamedTuple):
    """What :func:`read_class_folders` read: folder names in label order, the items, and notes for the user."""

    names: List[str]
    items: List[Item]
    notes: List[str]


def _count(things: Sequence, word: str) -> str:
    return f"{len(things)} {word}{'' if len(things) == 1 else 's'}"


def _examples(paths: Sequence[Path], folder: Path) -> str:
    return ", ".join(os.path.relpath(p, folder) for p in paths[:3]) + (", …" if len(paths) > 3 else "")


def read_class_folders(folder: Path, classnames: Optional[List[str]] = None, ignore: Sequence[str] = (),
                       way_out: str = ADD_OR_REMOVE, describe: Callable[[str], str] = repr) -> ClassFolders:
    """Items from ``folder/<class>/…/<image>``; labels follow sorted folder names (or the given ``classnames``).

    Each class folder is read at any depth (:func:`~promptclip.data.base.walk_images`); the notes say how many images
    came from sub-folders, which linked folders were skipped as already read, and which files are not images.
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
    nested, repeated, others, dangling = 0, [], [], []
    for label, name in enumerate(names):
        if not (folder / name).is_dir():
            bad.append(f"class {describe(name)}: the folder {folder / name} does not exist")
            continue
        walk = walk_images(folder / name)
        if not walk.paths:
            bad.append(f"class {describe(name)}: the folder {folder / name} holds no images at any depth "
                       f"({', '.join(IMAGE_EXTENSIONS)})")
        items += [Item(str(p), label) for p in walk.paths]
        nested, repeated, others = nested + walk.nested, repeated + walk.repeated, others + walk.others
        dangling += walk.dangling
    if bad:
        more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DataError(f"{len(bad)} of the {len(names)} classes in {folder} {'has' if len(bad) == 1 else 'have'} "
                        f"no images: {'; '.join(bad[:5])}{more}. {way_out}")
    notes = []
    if nested:
        notes.append(f"{nested} of the {len(items)} images in {folder} lie in sub-folders of their class folders "
                     f"(class folders are read at any depth, as torchvision's ImageFolder reads them).")
    if repeated:
        notes.append(f"{folder}: skipped {_count(repeated, 'linked folder')} whose target was already read (a "
                     f"symbolic link loop, or two links to one folder): {_examples(repeated, folder)}.")
    if dangling:
        notes.append(f"{folder}: skipped {_count(dangling, 'symbolic link')} that lead to no file (broken, or a "
                     f"loop of links): {_examples(dangling, folder)}.")
    if others:
        notes.append(f"{folder}: skipped {_count(others, 'file')} that are not images by their extension "
                     f"({', '.join(IMAGE_EXTENSIONS)}, any case): {_examples(others, folder)}.")
    return ClassFolders(names, items, notes)


ClassNames = Union[None, str, Path, Mapping[str, str]]


def read_renames(spec: ClassNames, root: Path) -> Dict[str, str]:
    """The ``classnames`` option of ``imagefolder``: ``{folder: class name}`` given as a mapping, or as a YAML or
    JSON file holding one, or a text file of ``<folder> <class name>`` lines; a relative path is relative to
    ``root``."""
    if spec is None:
        return {}
    if not isinstance(spec, Mapping):
        path = Path(spec).expanduser()
        path = path if path.is_absolute() else Path(root) / path
        if not path.is_file():
            raise DataError(f"Class-name file {path} {'is a folder' if path.is_dir() else 'does not exist'}: "
                            f"classnames must be a mapping {{folder: class name}} or a YAML, JSON or text file of "
                            f"one (a relative path is relative to {root}).")
        text = path.read_text()
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                spec = yaml.safe_load(text)
            elif path.suffix.lower() == ".json":
                spec = json.loads(text)
            else:
                spec = dict(line.split(None, 1) for line in text.splitlines() if line.strip())
        except (yaml.YAMLError, ValueError) as e:
            raise DataError(f"Class-name file {path} cannot be read as a mapping {{folder: class name}}; a text "
                            f"file needs '<folder> <class name>' on each line ({e}).") from None
        if not isinstance(spec, Mapping):
            raise DataError(f"Class-name file {path} must hold a mapping {{folder: class name}}, not "
                            f"{type(spec).__name__}.")
    bad = [f"{k!r}: {v!r}" for k, v in spec.items() if not isinstance(v, str) or not v.strip()]
    if bad:
        raise DataError(f"classnames must map folder names to non-empty class names: {', '.join(bad[:3])}.")
    return {str(k): v.strip() for k, v in spec.items()}


def prompt_names(folders: List[str], renames: Mapping[str, str], root: Path) -> List[str]:
    """Class names for ``folders``: the ``renames`` entry, else the folder name with ``_`` read as a space.

    A rename of a folder that does not exist, and two folders that get one name, are errors.
    """
    unknown = [k for k in renames if k not in folders]
    if unknown:
        raise DataError(f"classnames renames the folder {unknown[0]!r}, which is not a class folder of {root}."
                        f"{suggest(unknown[0], folders)} Class folders: {', '.join(folders[:10])}"
                        f"{' …' if len(folders) > 10 else ''}.")
    names = [renames.get(f, f.replace("_", " ")) for f in folders]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        clash = [f for f, n in zip(folders, names) if n == twice[0]]
        raise DataError(f"The class folders {clash} of {root} all get the class name {twice[0]!r}: give them "
                        f"different names with classnames: {{folder: class name}}.")
    return names


@DATASETS.register("imagefolder")
def image_folder(root: Path, template: str = "a photo of a {}.", seed: int = 1,
                 classnames: ClassNames = None) -> Dataset:
    """``root/{train,val,test}/<class>/`` if a ``train`` folder exists; else ``root/<class>/`` split 50/20/30.

    Class names are the folder names with ``_`` read as a space (``green_pear`` → ``green pear``), or as
    ``classnames`` renames them (see :func:`read_renames`); item paths keep the folder names.
    """
    root = Path(root)
    problem = not_a_folder(root)
    if problem:
        raise DataError(f"Data folder {root} {problem}: give the folder that holds train/, val/, test/ or one "
                        f"sub-folder per class (see {DATASETS_GUIDE}).")
    renames = read_renames(classnames, root)
    if (root / "train").is_dir():
        folders, train, notes = read_class_folders(root / "train")
        splits = {}
        for split in ("val", "test"):
            if (root / split).is_dir():
                _, splits[split], more = read_class_folders(root / split, folders)
                notes += more
            else:
                splits[split] = []
        if not splits["test"]:
            splits["test"] = splits["val"]
            notes.append(f"{root} has no test folder: evaluating on val.")
        val, test = splits["val"], splits["test"]
    else:
        folders, items, notes = read_class_folders(root)
        train, val, test = split_per_class(items, 0.5, 0.2, seed)
        notes.append(f"{root} has no train/val/test folders: split each class 50/20/30 with seed {seed}.")
    return Dataset(name=root.name, classnames=prompt_names(folders, renames, root), train=train, val=val, test=test,
                   root=root, template=template, notes=notes)
