"""``promptclip data check``: is each dataset where it should be, complete and readable?"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

from ..errors import DataError, UnknownNameError
from .base import Dataset, Item, not_a_folder
from .reading import load_dataset
from .benchmarks import BENCHMARKS, Benchmark, dataset_folder, expect_dir, find_benchmark, missing_files_for
from .splits import SPLITS

GUIDE = "datasets/DATASETS.md"


def _readable(path: str) -> bool:
    """Whether PIL can parse and fully decode the image (``verify`` checks structure, ``load`` the pixel data)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            im.load()
        return True
    except Exception:  # PIL reports bad files with many exception types (OSError, SyntaxError, ValueError …)
        return False


def verify_images(items: Iterable, workers: int = 8) -> List[str]:
    """Paths of the images (Items or paths) that cannot be opened and decoded, in input order."""
    paths = list(dict.fromkeys(i.path if isinstance(i, Item) else str(i) for i in items))
    with ThreadPoolExecutor(workers) as pool:
        ok = list(pool.map(_readable, paths))
    return [p for p, good in zip(paths, ok) if not good]


@dataclass
class DatasetReport:
    """What ``check_dataset`` found. ``status``: ok, missing (no dataset folder) or broken (problems)."""

    name: str
    status: str = "ok"
    problems: List[str] = field(default_factory=list)   # what stops the dataset from loading or makes it wrong
    warnings: List[str] = field(default_factory=list)   # what differs from the published setup
    classes: Optional[int] = None
    expected_classes: Optional[int] = None
    counts: Dict[str, int] = field(default_factory=dict)
    expected: Dict[str, int] = field(default_factory=dict)
    unreadable: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _layout_problems(bench: Benchmark, folder: Path) -> List[str]:
    """What is wrong with a dataset folder that exists: required folders, split or list files. (A split file that
    can be generated is not a problem: loading says so in a note.)"""
    problems: List[str] = []
    for rel in bench.required_dirs:
        try:
            expect_dir(folder / rel, bench)
        except DataError as e:
            problems.append(str(e))
    missing = missing_files_for(bench, folder)
    if bench.split_file is None:
        problems += [f"missing file {folder / f}" for f in missing]
    elif missing and not (folder / bench.split_file).is_file():
        problems.append(f"missing {folder / bench.split_file} and the files to generate a split from "
                        f"({', '.join(missing)}): download the split file (see {GUIDE})")
    return problems


def _count(report: DatasetReport, ds: Dataset, bench: Optional[Benchmark]) -> None:
    report.classes = ds.num_classes
    report.counts = {s: len(ds.split(s)) for s in SPLITS}
    report.warnings += ds.notes
    if bench is None:
        return
    report.expected_classes = bench.classes
    report.expected = dict(zip(SPLITS, bench.counts))
    differ = [f"{s} {report.counts[s]} (expected {report.expected[s]})" for s in SPLITS
              if report.counts[s] != report.expected[s]]
    if report.classes != bench.classes:
        differ.insert(0, f"{report.classes} classes (expected {bench.classes})")
    if differ:
        report.warnings.append("counts differ from the published dataset: " + ", ".join(differ))


def check_dataset(name: str, root, verify: bool = False) -> DatasetReport:
    """Check one dataset under data root ``root``; never raises for a dataset's own faults."""
    bench = find_benchmark(name)
    report = DatasetReport(bench.name if bench else name)
    if bench is not None:
        folder = Path(root).expanduser() / bench.folder
        if not folder.is_dir():
            try:
                dataset_folder(bench, root)
            except DataError as e:
                report.status, report.problems = "missing", [str(e)]
                return report
        report.problems = _layout_problems(bench, folder)
    if not report.problems:
        try:
            ds = load_dataset(name, root)
        except (DataError, UnknownNameError) as e:
            report.problems.append(str(e))
        else:
            _count(report, ds, bench)
            if verify:
                report.unreadable = verify_images(ds.train + ds.val + ds.test)
                if report.unreadable:
                    report.problems.append(f"{len(report.unreadable)} images cannot be read, e.g. "
                                           f"{', '.join(report.unreadable[:3])}")
    if report.problems:
        report.status = "broken"
    return report


def check_datasets(root, names: Optional[Sequence[str]] = None, verify: bool = False) -> List[DatasetReport]:
    """One report per dataset (default: the 15 benchmarks) under data root ``root``."""
    root = Path(root).expanduser()
    problem = not_a_folder(root)
    if problem:
        raise DataError(f"Data root {root} {problem}: give the folder that holds the dataset folders "
                        f"(see {GUIDE}).")
    return [check_dataset(n, root, verify) for n in (names or list(BENCHMARKS))]


def _cell(found: Optional[int], expected: Optional[int]) -> str:
    if found is None:
        return "-"
    if expected is None:
        return str(found)
    return f"{found}/{expected}" + ("" if found == expected else " !")


def format_reports(reports: Sequence[DatasetReport]) -> str:
    """A table (found/expected, ``!`` where they differ) followed by each dataset's problems and warnings."""
    header = ["dataset", "status", "classes"] + list(SPLITS)
    rows = [[r.name, r.status, _cell(r.classes, r.expected_classes)]
            + [_cell(r.counts.get(s), r.expected.get(s)) for s in SPLITS] for r in reports]
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header] + rows]
    for r in reports:
        label = "missing" if r.status == "missing" else "ERROR"
        lines += [f"{r.name}: {label}: {p}" for p in r.problems] + [f"{r.name}: note: {w}" for w in r.warnings]
    return "\n".join(lines)


def dataset_stats(name: str, root, **options) -> dict:
    """Class names and per-split image counts of dataset ``name`` (expected counts too, for a benchmark)."""
    ds = load_dataset(name, root, **options)
    bench = find_benchmark(name)
    return {
        "name": ds.name, "root": str(ds.root), "template": ds.template, "classnames": ds.classnames,
        "counts": {s: len(ds.split(s)) for s in SPLITS},
        "expected": dict(zip(SPLITS, bench.counts)) if bench else None,
        "expected_classes": bench.classes if bench else None,
        "val_is_test": ds.val_is_test, "notes": ds.notes,
    }


def format_stats(stats: dict, all_classes: bool = False, shown: int = 10) -> str:
    """A readable summary of ``dataset_stats``; lists the first ``shown`` class names unless ``all_classes``."""
    names = stats["classnames"]
    expected = stats["expected"] or {}
    lines = [f"{stats['name']}  ({stats['root']})",
             f"classes: {_cell(len(names), stats['expected_classes'])}",
             f"template: {stats['template']}"]
    lines += [f"{s}: {_cell(stats['counts'][s], expected.get(s))}" for s in SPLITS]
    if stats["val_is_test"]:
        lines.append("val is the test split (no separate validation set)")
    listed = names if all_classes else names[:shown]
    more = "" if len(listed) == len(names) else f", … ({len(names) - len(listed)} more; --classes lists all)"
    lines.append("class names: " + ", ".join(listed) + more)
    lines += [f"note: {n}" for n in stats["notes"]]
    return "\n".join(lines)
