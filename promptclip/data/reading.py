"""Reading a dataset by name: a registered reader, or a custom dataset described in a YAML file."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import DataError
from ..registry import DATASETS
from ..registry import reader_options, refuse_unknown_options
from .base import Dataset, split_dir_option
from .custom import load_yaml_dataset


def is_description(name: str) -> bool:
    """Whether a dataset name is the path of a YAML description of a custom dataset."""
    return str(name).lower().endswith((".yaml", ".yml"))


def check_reader_options(name: str, options: dict) -> None:
    """Refuse ``data.options`` keys that the reader of dataset ``name`` does not take (a ConfigError naming the
    nearest option). Readers that take any option, and YAML descriptions (checked when read), pass."""
    if not options or is_description(name):
        return
    reader = DATASETS.get(name)
    known = reader_options(reader)
    if known is not None:
        refuse_unknown_options(options, known, f"data.options of dataset {name!r}")


def load_dataset(name: str, root, split_dir: Optional[Path] = None, **options) -> Dataset:
    """Read dataset ``name`` from data root ``root`` with its registered reader; unknown options are refused.

    ``name`` may also be the path of a YAML description of a custom dataset (see ``custom.load_yaml_dataset``).
    ``split_dir`` (where a generated split is saved) reaches the readers that take it.
    """
    if is_description(name):
        return load_yaml_dataset(Path(name).expanduser(), root, split_dir, **options)
    check_reader_options(name, options)
    reader = DATASETS.get(name)
    if root is None:
        raise DataError(f"No data root given for dataset {name!r}: set data.root=/path/to/data.")
    return reader(Path(root).expanduser(), **split_dir_option(reader, split_dir), **options)
