"""K-shot draws (seeded, stored as portable JSON with checksums) and base/new class subsets."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import DataError
from ..utils import atomic_write_text
from .base import Dataset, Item, items_per_class

log = logging.getLogger("promptclip")

#: Version of the sampling rule, stored in each draw file. 1: classes in sorted label order; 2: classes in order of
#: first appearance, as Dassl's ``generate_fewshot_dataset`` (the reference's draws for the same seed).
DRAW_ALGORITHM = 2


def _relative(path: str, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def dataset_checksum(ds: Dataset) -> str:
    """Fingerprint of what a draw depends on: class names and the (relative path, label) of train and val."""
    h = hashlib.sha256()
    h.update(json.dumps(ds.classnames).encode())
    for split in ("train", "val"):
        for item in ds.split(split):
            h.update(f"{split}\t{_relative(item.path, ds.root)}\t{item.label}\n".encode())
    return h.hexdigest()[:16]


def content_signature(ds: Dataset) -> Dict[str, dict]:
    """``{"train"|"val": {"items": n, "sha256": digest}}`` over each item's relative path, label, file size and
    modification time (ns): what a run read, so changed images are noticed. Sizes and mtimes stand in for a content
    hash, which would read every image at each start; a missing file counts as size -1."""
    signature = {}
    for split in ("train", "val"):
        h = hashlib.sha256()
        items = ds.split(split)
        for item in items:
            try:
                stat = os.stat(item.path)
                size, mtime = stat.st_size, stat.st_mtime_ns
            except OSError:
                size, mtime = -1, 0
            h.update(f"{_relative(item.path, ds.root)}\t{item.label}\t{size}\t{mtime}\n".encode())
        signature[split] = {"items": len(items), "sha256": h.hexdigest()}
    return signature


def sample_per_class(items: Sequence[Item], k: int, rng: random.Random) -> Tuple[List[Item], Dict[int, int]]:
    """``k`` items per class, and ``{label: number of items}`` of the classes that have fewer (they give all theirs).

    Classes are visited in order of first appearance, each with ``rng.sample(group, k)``, as the reference does.
    """
    chosen: List[Item] = []
    short: Dict[int, int] = {}
    for label, group in items_per_class(list(items)).items():
        if len(group) < k:
            short[label] = len(group)
            chosen.extend(group)
        else:
            chosen.extend(rng.sample(group, k))
    return chosen, short


def draw_path(cache_dir: Path, ds: Dataset, shots: int, seed: int, checksum: Optional[str] = None) -> Path:
    """Where a draw of ``ds`` is stored: by name and content (``checksum``, :func:`dataset_checksum` unless given), so
    two datasets that share a name (two folders called ``images``) never share draws, and changed data gets a draw of
    its own."""
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", ds.name).strip("._") or "dataset"
    checksum = checksum or dataset_checksum(ds)
    return Path(cache_dir) / "fewshot" / f"{name}-{checksum}" / f"shots_{shots}-seed_{seed}.json"


def few_shot(ds: Dataset, shots: int, seed: int, cache_dir: Optional[Path] = None) -> Dataset:
    """The ``shots``-per-class training set (and ``min(shots, 4)``-per-class validation set) for ``seed``; see
    :func:`draw_few_shot`."""
    return draw_few_shot(ds, shots, seed, cache_dir)[0]


def draw_few_shot(ds: Dataset, shots: int, seed: int, cache_dir: Optional[Path] = None
                  ) -> Tuple[Dataset, Dict[int, int]]:
    """The few-shot dataset for ``seed``, and its shortfall: ``{label: images}`` of the classes with fewer training
    images than ``shots`` (they keep all of theirs).

    A dataset whose val split is its test split (``val_is_test``, ImageNet) keeps that split whole, as the reference
    does.

    With ``cache_dir`` the draw is stored as JSON of paths relative to the dataset folder, with its shortfall, keyed
    by the dataset's content, and reused (also after the data root moved); one made by another version of the
    sampling rule is drawn again (with a warning) and replaced.
    """
    if shots is None or shots <= 0:
        return ds, {}
    checksum = dataset_checksum(ds)
    path = draw_path(cache_dir, ds, shots, seed, checksum) if cache_dir else None
    draw = None
    if path is not None and path.exists():
        try:
            draw = json.loads(path.read_text())
        except ValueError as e:
            raise DataError(f"The few-shot draw {path} is not valid JSON ({e}): delete it to draw again.") from e
        if draw.get("algorithm", 1) != DRAW_ALGORITHM:
            log.warning("The few-shot draw %s was made by version %s of the sampling rule, not by version %d "
                        "(classes in order of first appearance, as the reference): drawing again and replacing it. "
                        "Runs that used the old draw are not comparable with new ones.",
                        path, draw.get("algorithm", 1), DRAW_ALGORITHM)
            draw = None
    if draw is not None:
        if draw.get("dataset_checksum") != checksum:
            raise DataError(f"The few-shot draw {path} does not belong to the data it is filed under (checksum "
                            f"{draw.get('dataset_checksum')}, not {checksum}): it was edited or copied there. "
                            f"Delete that file to draw again.")
        to_item = lambda rel_label: Item(str(ds.root / rel_label[0]), int(rel_label[1]))  # noqa: E731
        val = ds.val if ds.val_is_test else [to_item(x) for x in draw["val"]]
        return ds.replace(train=[to_item(x) for x in draw["train"]], val=val), _stored_shortfall(draw, path, ds,
                                                                                                 shots)

    rng = random.Random(seed)
    train, short = sample_per_class(ds.train, shots, rng)
    val = sample_per_class(ds.val, min(shots, 4), rng)[0] if ds.val and not ds.val_is_test else ds.val
    if path is not None:
        draw = {
            "dataset": ds.name, "shots": shots, "seed": seed, "algorithm": DRAW_ALGORITHM,
            "dataset_checksum": checksum, "shortfall": {str(label): n for label, n in short.items()},
            "train": [[_relative(i.path, ds.root), i.label] for i in train],
            "val": [] if ds.val_is_test else [[_relative(i.path, ds.root), i.label] for i in val],
        }
        atomic_write_text(path, json.dumps(draw, indent=0))
    return ds.replace(train=train, val=val), short


def _stored_shortfall(draw: dict, path: Path, ds: Dataset, shots: int) -> Dict[int, int]:
    """A stored draw's shortfall; a draw written before draws recorded it gets it counted from ``ds``."""
    if "shortfall" not in draw:
        return {label: len(g) for label, g in items_per_class(ds.train).items() if len(g) < shots}
    try:
        short = {int(label): int(n) for label, n in draw["shortfall"].items()}
    except (AttributeError, TypeError, ValueError):
        short = None
    if short is None or not all(0 <= label < ds.num_classes for label in short):
        raise DataError(f"The few-shot draw {path} is damaged: its shortfall is not {{label: images}} of this "
                        f"dataset's classes. Delete that file to draw again.")
    return short


def shortfall(ds: Dataset, short: Dict[int, int], shots: int, used: Dataset) -> Optional[dict]:
    """``{"shots": K, "of": N, "classes": {classname: images}}`` for the classes of ``used`` (``ds`` after class
    subsampling; N is its number of classes) that had fewer training images than the shots; None when none had."""
    counts = {ds.classnames[label]: n for label, n in short.items()}
    classes = {name: counts[name] for name in used.classnames if name in counts}
    return {"shots": shots, "of": used.num_classes, "classes": classes} if classes else None


def describe_shortfall(name: str, record: dict) -> str:
    """The warning for a :func:`shortfall` record: how many classes, which ones, and what was done."""
    classes = list(record["classes"].items())
    shown = ", ".join(f"{cls!r} has {n}" for cls, n in classes[:5])
    more = f" and {len(classes) - 5} more" if len(classes) > 5 else ""
    return (f"{name}: {len(classes)} of the {record['of']} classes in use have fewer training images than the "
            f"{record['shots']} shots ({shown}{more}); using all of their images.")


def base_new_split(labels: Sequence[int]):
    """Sorted labels split into the first ``ceil(n/2)`` (base) and the rest (new)."""
    labels = sorted(set(labels))
    m = math.ceil(len(labels) / 2)
    return labels[:m], labels[m:]


def subsample_classes(ds: Dataset, which: str = "all") -> Dataset:
    """Keep the ``base`` or ``new`` half of the classes, relabelled from 0, in every split (``all`` keeps all)."""
    if which == "all":
        return ds
    source = ds.train or ds.test
    labels = [i.label for i in source] if source else range(ds.num_classes)
    base, new = base_new_split(labels)
    keep = base if which == "base" else new
    if not keep:
        n = len(set(labels))
        raise DataError(f"Dataset {ds.name!r}: the {which} half of its {n} class{'' if n == 1 else 'es'} is empty "
                        f"(base is the first ceil(n/2) classes, new the rest, so data.subsample={which} needs at "
                        f"least {1 if which == 'base' else 2}). Use data.subsample=all, or a dataset with more "
                        f"classes.")
    relabel = {old: new_label for new_label, old in enumerate(keep)}

    def filt(items: List[Item]) -> List[Item]:
        return [Item(i.path, relabel[i.label]) for i in items if i.label in relabel]

    return ds.replace(
        classnames=[ds.classnames[k] for k in keep],
        train=filt(ds.train), val=filt(ds.val), test=filt(ds.test),
    )
