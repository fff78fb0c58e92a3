"""Datasets: readers (registered by name), few-shot draws, base/new subsets, transforms and loaders."""
from . import benchmarks, custom, folder  # noqa: F401  (register the 15 benchmarks, "listfile", "imagefolder")
from .base import DATASETS, Dataset, Item, load_dataset, prompt_classname
from .fewshot import few_shot, subsample_classes

__all__ = ["DATASETS", "Dataset", "Item", "load_dataset", "prompt_classname", "few_shot", "subsample_classes"]
