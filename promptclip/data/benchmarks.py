"""Readers for the 15 benchmark datasets of CoOp, CoCoOp and MaPLe, in the folder layout of CoOp's DATASETS.md.

One table (``BENCHMARKS``) says where each dataset lives, how it is split, which class-name fixes the published
numbers depend on, its zero-shot template and the image counts to expect. Three read functions cover all of them:
split-file datasets, FGVCAircraft's official lists, and the ImageNet family (class folders named by WordNet id).
"""
from __future__ import annotations

import difflib
import importlib.util
import inspect
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import DataError
from ..registry import DATASETS
from .base import Dataset, Item, not_a_folder, split_per_class
from .folder import read_class_folders
from .splits import (SPLITS, Splits, check_labels, load_or_generate, parse_split, require_files, split_trainval,
                     to_split_dict)

GUIDE = "datasets/DATASETS.md"
PHOTO = "a photo of a {}."


# ---------------------------------------------------------------- class-name fixes (each leaves fixed names alone)

CALTECH_IGNORED = ("BACKGROUND_Google", "Faces_easy")
CALTECH_NAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}
EUROSAT_NAMES = {
    "AnnualCrop": "Annual Crop Land", "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road", "Industrial": "Industrial Buildings", "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land", "Residential": "Residential Buildings", "SeaLake": "Sea or Lake",
}


def caltech_name(name: str) -> str:
    return CALTECH_NAMES.get(name, name)


def eurosat_name(name: str) -> str:
    return EUROSAT_NAMES.get(name, name)


def ucf_name(action: str) -> str:
    """``ApplyEyeMakeup`` → ``Apply_Eye_Makeup``: the reference's class and folder name (a prompt reads the
    underscores as spaces)."""
    if "_" in action or " " in action:
        return action
    return "_".join(re.findall(r"[A-Z][^A-Z]*", action)) or action


def cars_name(name: str) -> str:
    """``AM General Hummer SUV 2000`` → ``2000 AM General Hummer SUV``."""
    words = name.split(" ")
    if len(words) > 1 and re.fullmatch(r"\d{4}", words[-1]) and not re.fullmatch(r"\d{4}", words[0]):
        return " ".join(words[-1:] + words[:-1])
    return name


def sun_name(name: str) -> str:
    """``a/apartment_building/outdoor`` → ``outdoor apartment_building`` (first letter dropped, order reversed)."""
    if "/" not in name:
        return name
    return " ".join(reversed(name.strip("/").split("/")[1:]))


# ---------------------------------------------------------------- the table

@dataclass(frozen=True)
class Benchmark:
    """What promptclip knows about one benchmark: where it lives, how it is split, what to expect."""

    name: str
    folder: str                          # under the data root
    images: str                          # image folder in the dataset folder; split paths are relative to it
    template: str
    classes: int                         # expected class and image counts (spec table), reported by `data check`
    counts: Tuple[int, int, int]
    read: Callable[..., Dataset]         # read(bench, folder, root, split_dir, **options)
    split_file: Optional[str] = None     # CoOp's split_zhou file, for datasets read by `read_split_dataset`
    generate: Optional[Callable[["Benchmark", Path, int], dict]] = None  # builds a split when the file is absent
    files: Tuple[str, ...] = ()          # files `generate` (or, for FGVCAircraft, `read`) needs
    fix: Callable[[str], str] = str      # class-name fix, applied to names from split files too
    layout: Tuple[str, ...] = ()         # folders that must exist (default: `images`)
    aliases: Tuple[str, ...] = ()
    wnids: Optional[str] = None          # timm's list of the set's WordNet ids, for a subset of ImageNet (-A, -R)

    @property
    def required_dirs(self) -> Tuple[str, ...]:
        return self.layout or (self.images,)


def dataset_folder(bench: Benchmark, root: Path) -> Path:
    """``root/<bench.folder>``, or a DataError naming the path expected and any near miss found instead."""
    root = Path(root).expanduser()
    problem = not_a_folder(root)
    if problem:
        raise DataError(f"Data root {root} {problem}: set data.root to the folder that holds the dataset "
                        f"folders ({bench.name} is read from <data root>/{bench.folder}/; see {GUIDE}).")
    folder = root / bench.folder
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{bench.name}: {folder} is a file, but a folder is expected: the dataset folder. Arrange "
                        f"it as described in {GUIDE} (section {bench.name}).")
    if not folder.is_dir():
        known = {b.folder for b in BENCHMARKS.values()}
        present = [p.name for p in root.iterdir() if p.is_dir() and p.name not in known]
        close = difflib.get_close_matches(bench.folder.lower(), [p.lower() for p in present], n=1, cutoff=0.6)
        hint = ""
        if close:
            found = next(p for p in present if p.lower() == close[0])
            hint = f" There is a folder {root / found}: rename it to {bench.folder}."
        raise DataError(f"{bench.name} is missing: expected the folder {folder}.{hint} Arrange it as described in "
                        f"{GUIDE} (section {bench.name}).")
    for rel in bench.required_dirs:
        expect_dir(folder / rel, bench)
    return folder


def expect_dir(path: Path, bench: Benchmark) -> None:
    """Raise when ``path`` is not a folder, pointing at a copy one level too deep (a common unpacking slip)."""
    if path.is_dir():
        return
    if path.exists():
        raise DataError(f"{bench.name}: {path} is a file, but a folder is expected. See {GUIDE} (section "
                        f"{bench.name}).")
    deeper = [p for p in path.parent.glob(f"*/{path.name}") if p.is_dir()]
    hint = f" Found {deeper[0]}: move its contents up one level." if deeper else ""
    raise DataError(f"{bench.name}: expected the folder {path}.{hint} See {GUIDE} (section {bench.name}).")


def restore(bench: Benchmark) -> str:
    """The way out when a benchmark lacks a class: never drop the class, restore it."""
    return (f"{bench.name} needs every one of its classes: restore what is missing by re-extracting the dataset "
            f"archive, or check the download (see {GUIDE}, section {bench.name}).")


def class_count_note(bench: Benchmark, n: int, source: str) -> List[str]:
    """A note when ``source`` gives another number of classes than the benchmark has."""
    if n == bench.classes:
        return []
    return [f"{source} gives {n} classes where {bench.name} has {bench.classes}: check that no class is missing "
            f"(published numbers use all {bench.classes})."]


def missing_files_for(bench: Benchmark, folder: Path) -> List[str]:
    return [f for f in bench.files if not (folder / f).is_file()]


def make_dataset(bench: Benchmark, folder: Path, classnames: List[str], splits: Splits,
                 notes: Sequence[str] = (), val_is_test: bool = False) -> Dataset:
    return Dataset(name=bench.name, classnames=classnames, train=splits["train"], val=splits["val"],
                   test=splits["test"], root=folder, template=bench.template, notes=list(notes),
                   val_is_test=val_is_test)


def read_lines(path: Path) -> List[str]:
    """Non-empty stripped lines of a text file that the dataset must provide."""
    if not path.is_file():
        raise DataError(f"Expected the file {path} (see {GUIDE}).")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def lookup(index: Dict[str, int], key: str, source: Path) -> int:
    if key not in index:
        raise DataError(f"{source} names the class {key!r}, which is not in the class list "
                        f"({len(index)} classes). The file does not match the dataset's class list.")
    return index[key]


# ---------------------------------------------------------------- split-file datasets

def read_split_dataset(bench: Benchmark, folder: Path, root: Path, split_dir: Optional[Path] = None,
                       split_seed: int = 1, write_split_to_root: bool = False, check_files: bool = True) -> Dataset:
    """A dataset split by CoOp's ``split_zhou_<Name>.json``; without it, a split is generated by the reference rule.

    The generated split depends on ``split_seed`` only (not on a run's seed), so runs with different seeds share
    it. ``check_files=False`` skips the check that every listed image exists (one directory listing per folder).
    """
    image_dir = folder / bench.images

    def generate() -> dict:
        missing = missing_files_for(bench, folder)
        if missing:
            raise DataError(f"{bench.name}: {folder / bench.split_file} does not exist and no split can be "
                            f"generated without {', '.join(str(folder / f) for f in missing)}. Download "
                            f"{bench.split_file} from CoOp (see {GUIDE}, section {bench.name}).")
        return bench.generate(bench, folder, split_seed)

    data, source, notes = load_or_generate(folder / bench.split_file, split_dir, generate, write_split_to_root)
    classnames, splits = parse_split(data, image_dir, source, bench.fix)
    check_labels(classnames, splits, source, restore(bench))
    if check_files:
        require_files(splits, source, image_dir, classnames)
    if notes:  # a generated split: its classes come from the folders or annotations on disk
        notes += class_count_note(bench, len(classnames), source)
    return make_dataset(bench, folder, classnames, splits, notes)


def from_class_folders(ignore: Sequence[str] = ()) -> Callable[[Benchmark, Path, int], dict]:
    """The DTD rule: classes are the sorted folders of the image folder, each split 50/20/30."""
    def generate(bench: Benchmark, folder: Path, seed: int) -> dict:
        image_dir = folder / bench.images
        names, items, _ = read_class_folders(image_dir, ignore=ignore, way_out=restore(bench))
        train, val, test = split_per_class(items, 0.5, 0.2, seed)
        return to_split_dict({"train": train, "val": val, "test": test}, [bench.fix(n) for n in names], image_dir)

    return generate


def generate_pets(bench: Benchmark, folder: Path, seed: int) -> dict:
    """``annotations/{trainval,test}.txt`` ("<image> <class id> …"); trainval split 80/20; breed from the name."""
    image_dir = folder / bench.images
    names: Dict[int, str] = {}

    def read(file: str) -> List[Item]:
        items = []
        for line in read_lines(folder / "annotations" / file):
            image, class_id = line.split()[:2]
            label = int(class_id) - 1
            names[label] = bench.fix(image.rsplit("_", 1)[0])
            items.append(Item(str(image_dir / f"{image}.jpg"), label))
        return items

    trainval, test = read("trainval.txt"), read("test.txt")
    train, val = split_trainval(trainval, 0.2, seed)
    return to_split_dict({"train": train, "val": val, "test": test}, names, image_dir)


def generate_cars(bench: Benchmark, folder: Path, seed: int) -> dict:
    """The devkit's .mat annotations (1-based classes); official train split 80/20; paths from the dataset folder."""
    from scipy.io import loadmat

    meta = [str(c[0]) for c in loadmat(folder / "devkit" / "cars_meta.mat")["class_names"][0]]

    def read(image_folder: str, annotations: Path) -> List[Item]:
        return [Item(str(folder / image_folder / str(a["fname"][0])), int(a["class"][0, 0]) - 1)
                for a in loadmat(annotations)["annotations"][0]]

    trainval = read("cars_train", folder / "devkit" / "cars_train_annos.mat")
    test = read("cars_test", folder / "cars_test_annos_withlabels.mat")
    train, val = split_trainval(trainval, 0.2, seed)
    return to_split_dict({"train": train, "val": val, "test": test}, [bench.fix(n) for n in meta], folder)


def generate_flowers(bench: Benchmark, folder: Path, seed: int) -> dict:
    """``imagelabels.mat`` (1-based label of ``image_00001.jpg`` …) and ``cat_to_name.json``; split 50/20/30."""
    from scipy.io import loadmat

    image_dir = folder / bench.images
    labels = loadmat(folder / "imagelabels.mat")["labels"][0]
    names = {int(k) - 1: v for k, v in json.loads((folder / "cat_to_name.json").read_text()).items()}
    items = [Item(str(image_dir / f"image_{i + 1:05d}.jpg"), int(label) - 1) for i, label in enumerate(labels)]
    train, val, test = split_per_class(items, 0.5, 0.2, seed)
    return to_split_dict({"train": train, "val": val, "test": test}, names, image_dir)


def generate_from_lists(class_file: str, train_file: str, test_file: str,
                        parse: Callable[[str], Tuple[str, str]]) -> Callable[[Benchmark, Path, int], dict]:
    """A split from an official class list and train/test lists (SUN397, UCF101); the train list is split 80/20.

    The class is the last field of a ``class_file`` line (UCF's classInd.txt puts its 1-based index first);
    ``parse(line)`` turns a list line into (image path relative to the image folder, class).
    """
    def generate(bench: Benchmark, folder: Path, seed: int) -> dict:
        image_dir = folder / bench.images
        classes = [line.split()[-1].strip("/") for line in read_lines(folder / class_file)]
        index = {c: i for i, c in enumerate(classes)}

        def read(file: str) -> List[Item]:
            return [Item(str(image_dir / rel), lookup(index, cls, folder / file))
                    for rel, cls in map(parse, read_lines(folder / file))]

        trainval, test = read(train_file), read(test_file)
        train, val = split_trainval(trainval, 0.2, seed)
        return to_split_dict({"train": train, "val": val, "test": test}, [bench.fix(c) for c in classes], image_dir)

    return generate


def parse_sun_line(line: str) -> Tuple[str, str]:
    """``/a/abbey/sun_x.jpg`` → (``a/abbey/sun_x.jpg``, ``a/abbey``)."""
    rel = line.strip("/")
    return rel, os.path.dirname(rel)


def parse_ucf_line(line: str) -> Tuple[str, str]:
    """``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1`` → (``Apply_Eye_Makeup/v_…_c01.jpg``, ``ApplyEyeMakeup``):
    the mid-frame images sit in folders named by ``ucf_name``."""
    action, video = line.split()[0].split("/")
    return f"{ucf_name(action)}/{os.path.splitext(video)[0]}.jpg", action


# ---------------------------------------------------------------- FGVCAircraft: official lists

def read_aircraft(bench: Benchmark, folder: Path, root: Path, split_dir: Optional[Path] = None,
                  check_files: bool = True) -> Dataset:
    """``variants.txt`` (class order) and ``images_variant_{train,val,test}.txt`` ("<image id> <variant>")."""
    missing = missing_files_for(bench, folder)
    if missing:
        raise DataError(f"FGVCAircraft: missing {', '.join(str(folder / f) for f in missing)}. Keep the whole "
                        f"data/ folder of fgvc-aircraft-2013b as {folder} (see {GUIDE}).")
    image_dir = folder / bench.images
    classnames = read_lines(folder / "variants.txt")
    index = {c: i for i, c in enumerate(classnames)}
    splits: Splits = {}
    for split in SPLITS:
        file = folder / f"images_variant_{split}.txt"
        splits[split] = [Item(str(image_dir / f"{image}.jpg"), lookup(index, variant, file))
                         for image, _, variant in (line.partition(" ") for line in read_lines(file))]
    source = f"{folder}/images_variant_*.txt"
    check_labels(classnames, splits, source, restore(bench))
    if check_files:
        require_files(splits, source, image_dir, classnames)
    return make_dataset(bench, folder, classnames, splits)


# ---------------------------------------------------------------- the ImageNet family

def timm_wnids(file: str) -> List[str]:
    """The WordNet ids in one of timm's class lists (timm comes with open_clip), read without importing timm."""
    spec = importlib.util.find_spec("timm")
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = Path(locations[0]) / "data" / "_info" / file if locations else None
    if path is None or not path.is_file():
        raise DataError(f"Cannot find timm's list of ImageNet class ids {file} (timm is installed with open_clip): "
                        f"reinstall open_clip_torch.")
    return read_lines(path)


def imagenet_names(candidates: Sequence[Path]) -> Tuple[Dict[str, str], str]:
    """WordNet id → CLIP class name, in the order of the class list, and where the names came from.

    The first ``classnames.txt`` ("<wnid> <name>" per line, CoOp's file) among ``candidates`` wins; otherwise
    timm's list of the 1000 wnids is paired with ``open_clip.IMAGENET_CLASSNAMES``.
    """
    for path in candidates:
        if path.is_file():
            names = {}
            for line in read_lines(path):
                wnid, _, name = line.partition(" ")
                if not name.strip():
                    raise DataError(f"{path}: the line {line!r} is not '<wnid> <class name>'.")
                names[wnid] = name.strip()
            return names, str(path)
    try:
        import open_clip
    except ImportError as e:
        raise DataError(f"Cannot map ImageNet class ids to names ({e}): put CoOp's classnames.txt at "
                        f"{candidates[0]} (see {GUIDE}, section ImageNet).") from e
    return dict(zip(timm_wnids("imagenet_synsets.txt"), open_clip.IMAGENET_CLASSNAMES)), \
        "open_clip.IMAGENET_CLASSNAMES"


def names_candidates(folder: Path, root: Path) -> List[Path]:
    """Where an ImageNet-family dataset looks for classnames.txt: its own folder, then the ImageNet folder."""
    return [folder / "classnames.txt", Path(root).expanduser() / "imagenet" / "classnames.txt"]


def benchmark_wnids(bench: Benchmark, names: Dict[str, str], source: str) -> List[str]:
    """The classes of ``bench`` in label order (sorted wnids): every class of the class list, or for ImageNet-A/R
    those of their 200 that the list names."""
    wnids = sorted(names)
    if bench.wnids:
        wnids = [w for w in timm_wnids(bench.wnids) if w in names]
        if not wnids:
            raise DataError(f"{source} names none of the {bench.classes} classes of {bench.name}: use CoOp's "
                            f"classnames.txt, which lists all 1000 ImageNet classes (see {GUIDE}).")
    return wnids


def read_wnid_folders(bench: Benchmark, image_dir: Path, names: Dict[str, str], source: str,
                      wnids: List[str]) -> Tuple[List[str], List[Item], List[str]]:
    """(class names, items, notes) of ``image_dir/<wnid>/`` for the classes ``wnids`` (labels in that order): each
    must have a folder with images, and every folder must be an ImageNet class of ``bench``."""
    with os.scandir(image_dir) as entries:
        folders = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    unknown = sorted(f for f in folders if f not in names)
    if unknown:
        raise DataError(f"{image_dir}: the folders {unknown[:5]} ({len(unknown)} in all) are not ImageNet class "
                        f"ids known to {source}. Class folders must be named by WordNet id (n01440764 …).")
    _, items, notes = read_class_folders(image_dir, wnids, way_out=restore(bench),
                                         describe=lambda w: f"{names[w]!r} ({w})")
    return [names[w] for w in wnids], items, notes


def read_imagenet(bench: Benchmark, folder: Path, root: Path, split_dir: Optional[Path] = None) -> Dataset:
    """``images/train/<wnid>/`` for training; ``images/val/<wnid>/`` serves as both val and test."""
    names, source = imagenet_names([folder / "classnames.txt"])
    wnids = benchmark_wnids(bench, names, source)
    image_dir = folder / bench.images
    classnames, train, notes = read_wnid_folders(bench, image_dir / "train", names, source, wnids)
    _, test, more = read_wnid_folders(bench, image_dir / "val", names, source, wnids)
    return make_dataset(bench, folder, classnames, {"train": train, "val": test, "test": test},
                        notes + more + class_count_note(bench, len(wnids), source), val_is_test=True)


def read_shift_set(bench: Benchmark, folder: Path, root: Path, split_dir: Optional[Path] = None) -> Dataset:
    """A test-only set of ``<wnid>/`` folders (ImageNet-Sketch, -A, -R): labels 0.. in sorted wnid order, with
    the ImageNet names of those wnids (so ImageNet-A/R get a 200-way classifier)."""
    names, source = imagenet_names(names_candidates(folder, root))
    wnids = benchmark_wnids(bench, names, source)
    classnames, test, notes = read_wnid_folders(bench, folder / bench.images, names, source, wnids)
    return make_dataset(bench, folder, classnames, {"train": [], "val": [], "test": test},
                        notes + class_count_note(bench, len(wnids), source))


def read_imagenetv2(bench: Benchmark, folder: Path, root: Path, split_dir: Optional[Path] = None) -> Dataset:
    """Folder ``i`` holds class ``i`` of the ImageNet class list (standard order); every class needs its folder."""
    names, source = imagenet_names(names_candidates(folder, root))
    wnids = list(names)
    image_dir = folder / bench.images
    _, test, notes = read_class_folders(image_dir, [str(i) for i in range(len(wnids))], way_out=restore(bench),
                                        describe=lambda i: f"{names[wnids[int(i)]]!r} ({wnids[int(i)]})")
    return make_dataset(bench, folder, list(names.values()), {"train": [], "val": [], "test": test},
                        notes + class_count_note(bench, len(wnids), source))


# ---------------------------------------------------------------- registration

BENCHMARKS: Dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("ImageNet", "imagenet", "images", PHOTO, 1000, (1281167, 50000, 50000), read_imagenet,
              layout=("images/train", "images/val")),
    Benchmark("Caltech101", "caltech-101", "101_ObjectCategories", PHOTO, 100, (4128, 1649, 2465),
              read_split_dataset, "split_zhou_Caltech101.json", from_class_folders(CALTECH_IGNORED),
              fix=caltech_name, aliases=("caltech",)),
    Benchmark("OxfordPets", "oxford_pets", "images", "a photo of a {}, a type of pet.", 37, (2944, 736, 3669),
              read_split_dataset, "split_zhou_OxfordPets.json", generate_pets,
              ("annotations/trainval.txt", "annotations/test.txt"), fix=str.lower, aliases=("pets",)),
    Benchmark("StanfordCars", "stanford_cars", "", PHOTO, 196, (6509, 1635, 8041), read_split_dataset,
              "split_zhou_StanfordCars.json", generate_cars,
              ("devkit/cars_meta.mat", "devkit/cars_train_annos.mat", "cars_test_annos_withlabels.mat"),
              fix=cars_name, layout=("cars_train", "cars_test"), aliases=("cars",)),
    Benchmark("OxfordFlowers", "oxford_flowers", "jpg", "a photo of a {}, a type of flower.", 102,
              (4093, 1633, 2463), read_split_dataset, "split_zhou_OxfordFlowers.json", generate_flowers,
              ("imagelabels.mat", "cat_to_name.json"), aliases=("flowers", "flowers102")),
    Benchmark("Food101", "food-101", "images", "a photo of {}, a type of food.", 101, (50500, 20200, 30300),
              read_split_dataset, "split_zhou_Food101.json", from_class_folders(), aliases=("food",)),
    Benchmark("FGVCAircraft", "fgvc_aircraft", "images", "a photo of a {}, a type of aircraft.", 100,
              (3334, 3333, 3333), read_aircraft,
              files=("variants.txt",) + tuple(f"images_variant_{s}.txt" for s in SPLITS), aliases=("aircraft",)),
    Benchmark("SUN397", "sun397", "SUN397", PHOTO, 397, (15880, 3970, 19850), read_split_dataset,
              "split_zhou_SUN397.json", generate_from_lists("ClassName.txt", "Training_01.txt", "Testing_01.txt",
                                                            parse_sun_line),
              ("ClassName.txt", "Training_01.txt", "Testing_01.txt"), fix=sun_name, aliases=("sun",)),
    Benchmark("DescribableTextures", "dtd", "images", "{} texture.", 47, (2820, 1128, 1692), read_split_dataset,
              "split_zhou_DescribableTextures.json", from_class_folders(), aliases=("dtd",)),
    Benchmark("EuroSAT", "eurosat", "2750", "a centered satellite photo of {}.", 10, (13500, 5400, 8100),
              read_split_dataset, "split_zhou_EuroSAT.json", from_class_folders(), fix=eurosat_name),
    Benchmark("UCF101", "ucf101", "UCF-101-midframes", "a photo of a person doing {}.", 101, (7639, 1898, 3783),
              read_split_dataset, "split_zhou_UCF101.json",
              generate_from_lists("ucfTrainTestlist/classInd.txt", "ucfTrainTestlist/trainlist01.txt",
                                  "ucfTrainTestlist/testlist01.txt", parse_ucf_line),
              tuple(f"ucfTrainTestlist/{f}" for f in ("classInd.txt", "trainlist01.txt", "testlist01.txt")),
              fix=ucf_name, aliases=("ucf",)),
    Benchmark("ImageNetV2", "imagenetv2", "imagenetv2-matched-frequency-format-val", PHOTO, 1000, (0, 0, 10000),
              read_imagenetv2, aliases=("imagenet-v2",)),
    Benchmark("ImageNetSketch", "imagenet-sketch", "images", PHOTO, 1000, (0, 0, 50889), read_shift_set,
              aliases=("imagenet-sketch",)),
    Benchmark("ImageNetA", "imagenet-adversarial", "imagenet-a", PHOTO, 200, (0, 0, 7500), read_shift_set,
              aliases=("imagenet-a",), wnids="imagenet_a_synsets.txt"),
    Benchmark("ImageNetR", "imagenet-rendition", "imagenet-r", PHOTO, 200, (0, 0, 30000), read_shift_set,
              aliases=("imagenet-r",), wnids="imagenet_r_synsets.txt"),
]}


def find_benchmark(name: str) -> Optional[Benchmark]:
    """The benchmark called ``name`` or one of its aliases (any case), or None."""
    key = str(name).lower()
    return next((b for b in BENCHMARKS.values() if key in (b.name.lower(),) + b.aliases), None)


def make_reader(bench: Benchmark) -> Callable[..., Dataset]:
    """The registered reader of ``bench``: ``reader(root, split_dir=None, **options)``, its signature listing the
    options of ``bench.read`` (those after ``bench, folder, root, split_dir``), so unknown options can be refused."""
    def reader(root: Path, split_dir: Optional[Path] = None, **options) -> Dataset:
        return bench.read(bench, dataset_folder(bench, root), Path(root).expanduser(), split_dir, **options)

    own = list(inspect.signature(reader).parameters.values())[:2]
    reader.__signature__ = inspect.Signature(own + list(inspect.signature(bench.read).parameters.values())[4:])
    reader.__name__ = f"read_{bench.name}"
    reader.__doc__ = f"{bench.name} from <data root>/{bench.folder}/ in CoOp's layout (see {GUIDE})."
    return reader


for _bench in BENCHMARKS.values():
    _reader = make_reader(_bench)
    for _name in (_bench.name,) + _bench.aliases:
        DATASETS.register(_name)(_reader)
