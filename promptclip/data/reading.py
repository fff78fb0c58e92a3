"""Reading a dataset by name: a registered reader, or a custom dataset described in a YAML file."""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from ..registry import DATASETS
from .base import Dataset
from .custom import load_yaml_dataset


def load_dataset(name: str, root, **options) -> Dataset:
    """Read dataset ``name`` from data root ``root`` with its registered reader.

    ``name`` may also be the path of a YAML description of a custom dataset (see ``custom.load_yaml_dataset``).
    """
    if str(name).lower().endswith((".yaml", ".yml")):
        return load_yaml_dataset(Path(name).expanduser(), root, **options)
    reader = DATASETS.get(name)
    if root is None:
        raise DataError(f"No data root given for dataset {name!r}: set data.root=/path/to/data.")
    return reader(Path(root).expanduser(), **options)
