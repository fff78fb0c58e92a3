"""Datasets: readers (registered by name), few-shot draws, base/new subsets, transforms and loaders."""
from ..registry import DATASETS
from . import benchmarks, custom, folder  # noqa: F401  (register the 15 benchmarks, "listfile", "imagefolder")
from ..templates import prompt_classname
from .base import Dataset, Item
from .fewshot import few_shot, subsample_classes
from .reading import load_dataset

__all__ = ["DATASETS", "Dataset", "Item", "load_dataset", "prompt_classname", "few_shot", "subsample_classes"]
