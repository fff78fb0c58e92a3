"""Data and helpers shared by the bench tests: fake benchmark trees with distinct images, a coloured image folder,
the ``bench``/``report`` commands as a CLI would call them."""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from fake_datasets import make_fake_root

TINY = ["model.name=tiny-vit", "model.pretrained=null", "train.device=cpu"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def distinct_images(root: Path) -> None:
    """Give every image under ``root`` its own noise (the fakes share one JPEG), seeded by its path."""
    for path in sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        seed = int(hashlib.sha1(str(path.relative_to(root)).encode()).hexdigest()[:8], 16)
        pixels = np.random.RandomState(seed).randint(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, format="JPEG" if path.suffix.lower() != ".png" else "PNG")


def fake_benchmarks(root: Path, names: Sequence[str], n_per_class: int = 10) -> Path:
    """Fake benchmark trees (CoOp's layout) with distinct images; returns the data root."""
    data = make_fake_root(root, names, n_per_class=n_per_class)
    distinct_images(data)
    return data


def coloured_folder(root: Path, classes: int = 3, train: int = 6, val: int = 3, test: int = 5, seed: int = 0) -> Path:
    """``root/{train,val,test}/c<k>/<i>.png``: 16×16 noise around one colour per class (separable features)."""
    rng = np.random.RandomState(seed)
    centres = rng.randint(30, 226, (classes, 3))
    for split, count in (("train", train), ("val", val), ("test", test)):
        for k in range(classes):
            folder = Path(root) / split / f"c{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                noise = rng.randint(-30, 31, (16, 16, 3))
                pixels = np.clip(centres[k] + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return Path(root)


def cli(*argv: str) -> int:
    """Run ``bench``/``report`` through an argparse parser as ``promptclip`` wires them."""
    from promptclip.bench.commands import add_bench_commands

    parser = argparse.ArgumentParser(prog="promptclip")
    add_bench_commands(parser.add_subparsers(required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)
