"""The ``data`` command of the CLI: ``data check`` and ``data stats``."""
from __future__ import annotations

import argparse

from ..config import merge, parse_override
from .check import check_datasets, dataset_stats, format_reports, format_stats

GUIDE = "datasets/DATASETS.md"


def run_check(args: argparse.Namespace) -> int:
    """Print the check table; 1 when a dataset is broken, or missing although named on the command line (a root
    that cannot be read is an error, reported by the CLI like every other: exit 2)."""
    reports = check_datasets(args.root, args.names or None, verify=args.verify)
    print(format_reports(reports))
    failed = [r for r in reports if r.status == "broken" or (args.names and r.status == "missing")]
    return 1 if failed else 0


def run_stats(args: argparse.Namespace) -> int:
    """Print classes and per-split counts of one dataset (one that cannot be read is a CLI error: exit 2)."""
    options = {}
    for text in args.overrides:
        options = merge(options, parse_override(text))
    stats = dataset_stats(args.name, args.root, **options)
    print(format_stats(stats, all_classes=args.classes))
    return 0


def add_data_commands(subparsers) -> argparse.ArgumentParser:
    """Add ``data check`` and ``data stats`` to an argparse subparsers object; handlers are in ``args.func``."""
    data = subparsers.add_parser(
        "data", help="check dataset folders and show dataset statistics",
        description=f"Check that datasets are arranged as promptclip (and CoOp) expect, and show their statistics. "
                    f"How to obtain and arrange each dataset: {GUIDE}.")
    commands = data.add_subparsers(dest="data_command", metavar="{check,stats}", required=True)

    check = commands.add_parser(
        "check", help="check dataset folders under a data root",
        description="For each dataset: is its folder there, are the split files and images where they should be, "
                    "and how many images per split were found against the published counts (marked ! where "
                    "they differ). Exits with 1 when a dataset is broken, or missing although named.")
    check.add_argument("root", help="the data root that holds the dataset folders (imagenet/, dtd/ …)")
    check.add_argument("names", nargs="*", metavar="NAME",
                       help="datasets to check (default: the 15 benchmarks; missing ones are then only listed)")
    check.add_argument("--verify", action="store_true",
                       help="also open and decode every image to find unreadable or truncated files (slow)")
    check.set_defaults(func=run_check)

    stats = commands.add_parser(
        "stats", help="show the classes and per-split image counts of a dataset",
        description="Load one dataset and print its class names, template and train/val/test counts.")
    stats.add_argument("name", help="dataset name (e.g. DescribableTextures, dtd) or a custom dataset's YAML file")
    stats.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="reader options, as in data.options (e.g. classnames=names.yaml for imagefolder)")
    stats.add_argument("--root", required=True, help="the data root that holds the dataset folders")
    stats.add_argument("--classes", action="store_true", help="list every class name, not just the first ten")
    stats.set_defaults(func=run_stats)
    return data
