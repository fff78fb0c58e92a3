"""Split files (CoOp's ``split_zhou_<Name>.json``): reading, checking against the disk, generating and saving.

A split file is ``{"train": [[rel_path, label, classname], …], "val": […], "test": […]}`` with 0-based labels and
paths relative to the dataset's image folder. Generated splits use the same format, so a user can move one into the
data tree and every toolkit that reads CoOp's layout will use it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from ..errors import DataError
from ..utils import atomic_write_json
from .base import Item, split_per_class

GUIDE = "datasets/DATASETS.md"
SPLITS = ("train", "val", "test")

Splits = Dict[str, List[Item]]


def read_split_file(path: Path) -> dict:
    """The parsed split file at ``path``, checked for shape: three lists of ``[path, label, classname]``."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"Split file {path} cannot be read as JSON ({e}). Download it again (see {GUIDE}) "
                        f"or delete it so that a split is generated.") from e
    if not isinstance(data, dict) or any(not isinstance(data.get(s), list) for s in SPLITS):
        raise DataError(f"Split file {path} must hold the lists 'train', 'val' and 'test' of "
                        f"[path, label, classname] entries (CoOp's split_zhou format, see {GUIDE}).")
    for split in SPLITS:
        for entry in data[split]:
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
                    and isinstance(entry[1], int) and isinstance(entry[2], str)):
                raise DataError(f"Split file {path}: the {split} entry {entry!r} is not [path, label, classname].")
    return data


def parse_split(data: dict, base: Path, source: str,
                fix: Callable[[str], str] = str) -> Tuple[List[str], Splits]:
    """Class names (in label order, passed through ``fix``) and absolute items per split from a split dict."""
    names: Dict[int, str] = {}
    for split in SPLITS:
        for _, label, classname in data[split]:
            if names.setdefault(label, classname) != classname:
                raise DataError(f"{source}: label {label} is called both {names[label]!r} and {classname!r}; "
                                f"the split file is inconsistent, download it again (see {GUIDE}).")
    if not names:
        raise DataError(f"{source} lists no images.")
    if min(names) < 0:
        raise DataError(f"{source}: labels must be 0-based class indices, found {min(names)}.")
    gaps = sorted(set(range(max(names) + 1)) - set(names))
    if gaps:
        raise DataError(f"{source}: classes {gaps[:5]} ({len(gaps)} in all) have no images in any split: "
                        f"labels must run from 0 to the number of classes minus 1.")
    classnames = [fix(names[i]) for i in range(len(names))]
    splits = {s: [Item(str(base / rel), label) for rel, label, _ in data[s]] for s in SPLITS}
    return classnames, splits


def to_split_dict(splits: Splits, classnames: Mapping[int, str], base: Path) -> dict:
    """The split-file form of ``splits``: paths relative to ``base``, each entry with its class name."""
    def rel(path: str) -> str:
        return Path(os.path.relpath(path, base)).as_posix()

    return {s: [[rel(i.path), i.label, classnames[i.label]] for i in splits[s]] for s in SPLITS}


def split_trainval(items: List[Item], p_val: float = 0.2, seed: int = 1) -> Tuple[List[Item], List[Item]]:
    """The reference's rule for an official train+val set: per class, ``round(n * p_val)`` shuffled items go to
    val and the rest to train."""
    _, val, train = split_per_class(items, 0.0, p_val, seed)
    return train, val


ADD_OR_REMOVE = "Every class needs at least one image for few-shot training; add images or remove the class."


def check_labels(classnames: List[str], splits: Splits, source: str, way_out: str = ADD_OR_REMOVE) -> None:
    """Every label indexes ``classnames`` and every class has training images (when there is a training split).

    ``way_out`` ends the message about classes without training images (a benchmark must not suggest removing one).
    """
    n = len(classnames)
    for split in SPLITS:
        bad = [i for i in splits[split] if not 0 <= i.label < n]
        if bad:
            raise DataError(f"{source}: {len(bad)} {split} labels are outside the class list of {n} classes, "
                            f"e.g. {bad[0].label} for {bad[0].path}. Fix the labels or the class names.")
    if splits["train"]:
        present = {i.label for i in splits["train"]}
        empty = [f"{classnames[k]!r} ({k})" for k in range(n) if k not in present]
        if empty:
            raise DataError(f"{source}: {len(empty)} classes have no training images: {', '.join(empty[:5])}. "
                            f"{way_out}")


def missing_files(paths: Iterable[str]) -> List[str]:
    """The paths that do not exist, using one directory listing per folder rather than a stat per file."""
    listings: Dict[str, set] = {}
    missing = []
    for path in paths:
        folder, name = os.path.split(path)
        if folder not in listings:
            try:
                listings[folder] = set(os.listdir(folder))
            except OSError:
                listings[folder] = set()
        if name not in listings[folder]:
            missing.append(path)
    return missing


def require_files(splits: Splits, source: str, base: Path, classnames: Optional[List[str]] = None) -> None:
    """Raise when ``source`` names images that are not on disk (count and the first few, relative to ``base``),
    naming the classes (from ``classnames``) of which no image exists, with their folder where they have one."""
    labels = {i.path: i.label for s in SPLITS for i in splits[s]}
    missing = missing_files(labels)
    if missing:
        examples = ", ".join(os.path.relpath(p, base) for p in missing[:3])
        gone = ""
        lost = whole_classes_missing(labels, set(missing), base, classnames)
        if lost:
            gone = (f" No image of {len(lost)} class{'' if len(lost) == 1 else 'es'} exists: {'; '.join(lost[:5])}"
                    f"{f' and {len(lost) - 5} more' if len(lost) > 5 else ''}; restore them by re-extracting the "
                    f"dataset archive.")
        raise DataError(f"{source} names {len(missing)} of {len(labels)} images that do not exist under {base}, "
                        f"e.g. {examples}.{gone} The download is incomplete, arranged differently from {GUIDE}, "
                        f"or the split file belongs to another version of the dataset.")


def whole_classes_missing(labels: Dict[str, int], missing: set, base: Path,
                          classnames: Optional[List[str]]) -> List[str]:
    """Each class of which every image is missing, as its name with the folder where it has one of its own below
    ``base`` ("'airplane' (folder …/airplanes)")."""
    per_class: Dict[int, List[str]] = {}
    classes_in: Dict[str, set] = {}
    for path, label in labels.items():
        per_class.setdefault(label, []).append(path)
        classes_in.setdefault(os.path.dirname(path), set()).add(label)
    lost = []
    for label, paths in sorted(per_class.items()):
        if all(p in missing for p in paths):
            name = repr(classnames[label]) if classnames and 0 <= label < len(classnames) else f"label {label}"
            parents = {os.path.dirname(p) for p in paths}
            folder = parents.pop() if len(parents) == 1 else None
            own = folder is not None and classes_in[folder] == {label} and Path(folder) != Path(base)
            lost.append(name + (f" (folder {folder})" if own else ""))
    return lost


def load_or_generate(split_file: Path, split_dir: Optional[Path], generate: Callable[[], dict],
                     write_to_root: bool = False) -> Tuple[dict, str, List[str]]:
    """The split dict, where it came from (for messages), and notes for the user.

    Order: ``split_file`` in the data tree; a split generated earlier and saved under ``split_dir``; a new split
    from ``generate()``, saved under ``split_dir`` (or as ``split_file`` itself when ``write_to_root``).
    """
    if split_file.is_file():
        return read_split_file(split_file), str(split_file), []
    saved = Path(split_dir) / split_file.name if split_dir is not None else None
    if saved is not None and saved.is_file():
        return read_split_file(saved), str(saved), [
            f"{split_file} does not exist: using the split generated earlier and saved at {saved}."]
    data = generate()
    target = split_file if write_to_root else saved
    counts = "/".join(str(len(data[s])) for s in SPLITS)
    note = (f"{split_file} does not exist: generated a train/val/test split ({counts} images) by the reference "
            f"rule; results are not comparable with published numbers, which use CoOp's split files "
            f"(see {GUIDE}).")
    if target is None:
        note += " It was not saved: pass split_dir to keep it."
    else:
        atomic_write_json(target, data)
        note += f" Saved it at {target}."
    return data, f"the split generated in place of {split_file.name}", [note]
