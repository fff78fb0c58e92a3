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
from typing import List, Optional, Sequence

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


def sample_per_class(items: Sequence[Item], k: int, rng: random.Random, warn_name: str = "") -> List[Item]:
    """Draw ``k`` items per class (all of them, with one warning naming the classes, where a class has fewer).

    Classes are visited in order of first appearance, each with ``rng.sample(group, k)``, as the reference does.
    """
    chosen: List[Item] = []
    short = {}
    for label, group in items_per_class(list(items)).items():
        if len(group) < k:
            short[label] = len(group)
            chosen.extend(group)
        else:
            chosen.extend(rng.sample(group, k))
    if short and warn_name:
        shown = ", ".join(f"class {label} has only {n}" for label, n in list(short.items())[:5])
        more = f" and {len(short) - 5} more" if len(short) > 5 else ""
        log.warning("%s: %d class(es) have fewer images than the %d shots (%s%s); using all of their images.",
                    warn_name, len(short), k, shown, more)
    return chosen


def draw_path(cache_dir: Path, ds: Dataset, shots: int, seed: int, checksum: Optional[str] = None) -> Path:
    """Where a draw of ``ds`` is stored: by name and content (``checksum``, :func:`dataset_checksum` unless given), so
    two datasets that share a name (two folders called ``images``) never share draws, and changed data gets a draw of
    its own."""
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", ds.name).strip("._") or "dataset"
    checksum = checksum or dataset_checksum(ds)
    return Path(cache_dir) / "fewshot" / f"{name}-{checksum}" / f"shots_{shots}-seed_{seed}.json"


def few_shot(ds: Dataset, shots: int, seed: int, cache_dir: Optional[Path] = None) -> Dataset:
    """The ``shots``-per-class training set (and ``min(shots, 4)``-per-class validation set) for ``seed``.

    A dataset whose val split is its test split (``val_is_test``, ImageNet) keeps that split whole, as the reference
    does.

    With ``cache_dir`` the draw is stored as JSON of paths relative to the dataset folder, keyed by the dataset's
    content, and reused (also after the data root moved); one made by another version of the sampling rule is
    drawn again (with a warning) and replaced.
    """
    if shots is None or shots <= 0:
        return ds
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
        return ds.replace(train=[to_item(x) for x in draw["train"]], val=val)

    rng = random.Random(seed)
    train = sample_per_class(ds.train, shots, rng, warn_name=f"{ds.name} train")
    val = sample_per_class(ds.val, min(shots, 4), rng) if ds.val and not ds.val_is_test else ds.val
    if path is not None:
        draw = {
            "dataset": ds.name, "shots": shots, "seed": seed, "algorithm": DRAW_ALGORITHM,
            "dataset_checksum": checksum,
            "train": [[_relative(i.path, ds.root), i.label] for i in train],
            "val": [] if ds.val_is_test else [[_relative(i.path, ds.root), i.label] for i in val],
        }
        atomic_write_text(path, json.dumps(draw, indent=0))
    return ds.replace(train=train, val=val)


def base_new_split(labels: Sequence[int]):
    """Sorted labels split into the first ``ceil(n/2)`` (base) and the rest (new)."""
    labels = sorted(set(labels))
    m = math.ceil(len(labels) / 2)
    return labels[:m], labels[m:]


def subsample_classes(ds: Dataset, which: str = "all") -> Dataset:
    """Keep the ``base`` or ``new`` half of the classes, relabelled from 0, in every split (``all`` keeps all)."""
    if which == "all":
        return ds
    if which not in ("base", "new"):
        raise DataError(f"data.subsample must be all, base or new, not {which!r}.")
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
