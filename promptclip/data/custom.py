"""Custom datasets without code: list files of ``path,label`` rows, and YAML descriptions naming a reader.

A YAML description is loaded by giving its path as the dataset name: ``load_dataset("birds.yaml", root)``.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import yaml

from ..errors import DataError
from ..registry import DATASETS, reader_options, refuse_unknown_options
from .base import Dataset, Item, not_a_folder, split_dir_option
from .splits import Splits, check_labels, require_files

GUIDE = "datasets/DATASETS.md"
Label = Union[int, str]
Row = Tuple[str, Label]


def _resolve(base: Path, path: Union[str, Path]) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else base / path


def _not_a_file(path: Path) -> str:
    return "is a folder, but a file is expected" if path.is_dir() else "does not exist"


def _label(value) -> Label:
    """An int label from an int or a string of digits; any other string is a class name."""
    if isinstance(value, int):
        return value
    text = str(value).strip()
    return int(text) if re.fullmatch(r"-?\d+", text) else text


def read_list_file(path: Path) -> List[Row]:
    """(path, label) rows of a CSV/TSV file (optional ``path,label`` header, ``#`` comments) or of a JSON list
    of ``[path, label]`` pairs or ``{"path": …, "label": …}`` objects. Labels are class indices or names."""
    if not path.is_file():
        raise DataError(f"List file {path} {_not_a_file(path)}.")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except ValueError as e:
            raise DataError(f"List file {path} is not valid JSON: {e}") from e
        if not isinstance(data, list):
            raise DataError(f"List file {path} must hold a JSON list of [path, label] pairs.")
        rows = []
        for entry in data:
            pair = (entry.get("path"), entry.get("label")) if isinstance(entry, dict) else entry
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], str)
                    and pair[1] is not None):
                raise DataError(f"List file {path}: the entry {entry!r} is not [path, label] or "
                                f"{{\"path\": …, \"label\": …}}.")
            rows.append((pair[0], _label(pair[1])))
        return rows
    rows = []
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="") as f:
        for number, fields in enumerate(csv.reader(f, delimiter=delimiter), start=1):
            if not fields or not "".join(fields).strip() or fields[0].lstrip().startswith("#"):
                continue
            if number == 1 and [x.strip().lower() for x in fields[:2]] == ["path", "label"]:
                continue
            if len(fields) != 2:
                raise DataError(f"{path}, line {number}: expected 'path{delimiter}label', got {fields!r} "
                                f"(quote paths that contain the delimiter).")
            rows.append((fields[0].strip(), _label(fields[1])))
    return rows


def read_classnames(spec: Union[str, Path, Sequence[str]], base: Path) -> List[str]:
    """Class names in label order given as a list, a JSON or YAML list file, or a text file with one name per line
    (line i = class i)."""
    if isinstance(spec, (list, tuple)):
        return [str(n) for n in spec]
    if not isinstance(spec, (str, Path)):
        raise DataError(f"A list-file dataset's classnames must be a list of names in label order or a file of "
                        f"them, not {type(spec).__name__} (a mapping {{folder: name}} renames imagefolder's "
                        f"classes; here write the names as labels, or list them in label order).")
    path = _resolve(base, spec)
    if not path.is_file():
        raise DataError(f"Class-name file {path} {_not_a_file(path)}.")
    if path.suffix.lower() in (".json", ".yaml", ".yml"):
        try:
            names = json.loads(path.read_text()) if path.suffix.lower() == ".json" else yaml.safe_load(path.read_text())
        except (ValueError, yaml.YAMLError) as e:
            raise DataError(f"Class-name file {path} cannot be read: {e}") from None
        if not isinstance(names, list):
            raise DataError(f"Class-name file {path} must hold a list of names in label order.")
        return [str(n) for n in names]
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def label_rows(rows: Dict[str, List[Row]], classnames: Optional[List[str]], base: Path,
               source: str) -> Tuple[List[str], Splits]:
    """Items with integer labels. Without ``classnames`` the labels must be names, sorted to give the class list."""
    labels = [label for split_rows in rows.values() for _, label in split_rows]
    if classnames is None:
        if any(isinstance(label, int) for label in labels):
            raise DataError(f"{source}: the labels are class indices but no class names were given. Add "
                            f"classnames: (a text file with one name per line, or a list), or write class "
                            f"names as labels.")
        classnames = sorted(set(labels))
    index = {name: i for i, name in enumerate(classnames)}
    unknown = sorted({label for label in labels if isinstance(label, str) and label not in index})
    if unknown:
        raise DataError(f"{source}: the labels {unknown[:5]} ({len(unknown)} in all) are outside the class list "
                        f"of {len(classnames)} classes. Fix the labels or the class names.")
    splits = {split: [Item(str(_resolve(base, p)), label if isinstance(label, int) else index[label])
                      for p, label in split_rows] for split, split_rows in rows.items()}
    return classnames, splits


@DATASETS.register("listfile")
def list_file_dataset(root: Path, train: Optional[str] = None, val: Optional[str] = None, test: Optional[str] = None,
                      classnames: Union[None, str, Sequence[str]] = None, template: str = "a photo of a {}.",
                      name: Optional[str] = None, check_files: bool = True) -> Dataset:
    """Splits from list files (``train``, ``val``, ``test``); list files, class-name file and image paths are
    relative to ``root``, the dataset folder. Without a test list the val list is used for testing."""
    root = Path(root).expanduser()
    problem = not_a_folder(root)
    if problem:
        raise DataError(f"Dataset folder {root} {problem} (list-file paths are relative to it; see {GUIDE}).")
    if not train and not test:
        raise DataError(f"A list-file dataset needs a train or a test list: give train=FILE and/or test=FILE "
                        f"(CSV or JSON of path,label rows; see {GUIDE}).")
    files = {"train": train, "val": val, "test": test}
    rows = {split: read_list_file(_resolve(root, f)) if f else [] for split, f in files.items()}
    source = ", ".join(str(_resolve(root, f)) for f in files.values() if f)
    names = read_classnames(classnames, root) if classnames is not None else None
    names, splits = label_rows(rows, names, root, source)
    notes = []
    if not splits["test"] and splits["val"]:
        splits["test"] = splits["val"]
        notes.append(f"{root} has no test list: evaluating on the val list.")
    check_labels(names, splits, source)
    if check_files:
        require_files(splits, source, root, names)
    return Dataset(name=name or root.name, classnames=names, train=splits["train"], val=splits["val"],
                   test=splits["test"], root=root, template=template, notes=notes)


def load_yaml_dataset(path: Path, root, split_dir: Optional[Path] = None, **options) -> Dataset:
    """The dataset a YAML file describes.

    Keys: ``reader`` (a registered reader, default ``listfile``), ``name`` (default: the file's stem), ``root``
    (the folder given to the reader: relative to the data root, or to the YAML file's folder when no data root
    is set; default: the data root), ``template``/``templates``, and any option of the reader (``train``,
    ``classnames`` …). Options passed here override the file's; unknown keys, in the file or here, are errors.
    ``split_dir`` reaches a reader that takes it.
    """
    if not path.is_file():
        raise DataError(f"Dataset description {path} {_not_a_file(path)}.")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise DataError(f"Dataset description {path} is not valid YAML: {e}") from e
    if not isinstance(spec, dict):
        raise DataError(f"Dataset description {path} must be a mapping with keys such as reader, train, test "
                        f"(see {GUIDE}).")
    reader = DATASETS.get({**spec, **options}.get("reader", "listfile"))
    known = reader_options(reader)
    if known is not None:
        known = list(dict.fromkeys(["reader", "name", "root", "template", "templates", *known]))
        refuse_unknown_options(spec, known, f"the dataset description {path}", DataError)
        refuse_unknown_options(options, known, f"data.options of the dataset described in {path}")
    spec = {**spec, **options}
    spec.pop("reader", None)
    name = spec.pop("name", path.stem)
    looks = {k: spec.pop(k) for k in ("template", "templates") if k in spec}
    base = Path(root).expanduser() if root is not None else path.parent
    folder = _resolve(base, spec.pop("root", "."))
    return reader(folder, **split_dir_option(reader, split_dir), **spec).replace(name=name, **looks)
