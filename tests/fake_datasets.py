"""Tiny fake copies of the 15 benchmark datasets in CoOp's exact folder layout, for tests.

``make_fake_dataset(name, root)`` writes one dataset under the data root ``root`` (a few 8×8 JPEGs per class, real
split-file formats and the quirks of each dataset) and returns its folder; ``make_fake_root(root, names)`` writes
several and returns the data root. ``EXPECTED`` holds, per dataset, the class names a reader must produce (after
every class-name fix, in label order) and the images per class in train/val/test.

The ImageNet-family fakes hold a few of the classes, so their classnames.txt lists only those (CoOp's lists all
1000): a reader requires a folder with images for every class the list names.
"""
from __future__ import annotations

import io
import json
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

SPLITS = ("train", "val", "test")

# ImageNet wnids and CLIP names used by the fakes (index in the standard 1000-class order in the comments).
IMAGENET = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark",  # 0, 1, 2
            "n01491361": "tiger shark"}  # 3
IMAGENET_A = {"n01498041": "stingray", "n01531178": "goldfinch", "n01534433": "junco"}  # 6, 11, 13
IMAGENET_R = {"n01443537": "goldfish", "n01484850": "great white shark", "n01494475": "hammerhead shark"}  # 1, 2, 4
IMAGENETV2 = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark",  # 0, 1, 2
              "n01491361": "tiger shark", "n01494475": "hammerhead shark", "n01496331": "electric ray",  # 3, 4, 5
              "n01498041": "stingray", "n01514668": "rooster", "n01514859": "hen", "n01518878": "ostrich",  # 6 … 9
              "n01530575": "brambling"}  # 10
IMAGENETV2_FOLDERS = tuple(range(len(IMAGENETV2)))  # 10 sorts before 2 as text: labels must follow the number

CALTECH = ["BACKGROUND_Google", "Faces", "Faces_easy", "Leopards", "Motorbikes", "accordion", "airplanes"]
PETS = ["Abyssinian", "american_bulldog", "american_pit_bull_terrier", "Bengal"]  # class ids 1..4
CARS = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Aston Martin V8 Vantage Convertible 2012"]
FLOWERS = ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"]
FOOD = ["apple_pie", "baby_back_ribs", "baklava"]
AIRCRAFT = ["707-320", "A300B4", "F-16A/B", "Falcon 2000"]
SUN = ["a/abbey", "a/apartment_building/outdoor", "b/bakery/shop", "b/bamboo_forest"]
DTD = ["banded", "blotchy", "braided"]
EUROSAT = ["AnnualCrop", "Forest", "HerbaceousVegetation", "SeaLake"]
UCF = ["ApplyEyeMakeup", "ApplyLipstick", "Archery", "YoYo"]


def per_class_split(n: int) -> Tuple[int, int, int]:
    """Images per class in train/val/test of the fake split files (the reference's 50/20/30 rounding)."""
    train, val = round(n * 0.5), round(n * 0.2)
    return train, val, n - train - val


#: name → (class names after fixes, per-class (train, val, test) sizes as a function of n_per_class)
EXPECTED: Dict[str, Tuple[List[str], Callable[[int], Tuple[int, int, int]]]] = {
    "ImageNet": (list(IMAGENET.values()), lambda n: (n, n, n)),
    "Caltech101": (["face", "leopard", "motorbike", "accordion", "airplane"], per_class_split),
    "OxfordPets": (["abyssinian", "american_bulldog", "american_pit_bull_terrier", "bengal"], per_class_split),
    "StanfordCars": (["2000 AM General Hummer SUV", "2012 Acura RL Sedan", "2012 Aston Martin V8 Vantage Convertible"],
                     per_class_split),
    "OxfordFlowers": (FLOWERS, per_class_split),
    "Food101": (FOOD, per_class_split),
    "FGVCAircraft": (AIRCRAFT, per_class_split),
    "SUN397": (["abbey", "outdoor apartment_building", "shop bakery", "bamboo_forest"], per_class_split),
    "DescribableTextures": (DTD, per_class_split),
    "EuroSAT": (["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Sea or Lake"], per_class_split),
    "UCF101": (["Apply_Eye_Makeup", "Apply_Lipstick", "Archery", "Yo_Yo"], per_class_split),
    "ImageNetV2": (list(IMAGENETV2.values()), lambda n: (0, 0, n)),  # folder i holds class i
    "ImageNetSketch": (list(IMAGENET.values()), lambda n: (0, 0, n)),
    "ImageNetA": (list(IMAGENET_A.values()), lambda n: (0, 0, n)),
    "ImageNetR": (list(IMAGENET_R.values()), lambda n: (0, 0, n)),
}


@lru_cache(maxsize=None)
def jpeg_bytes(size: int = 8) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (200, 80, 40)).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_images(paths: Iterable[Path]) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg_bytes())


def write_lines(path: Path, lines: Iterable[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def split_classes(images: Sequence[Sequence[str]]) -> Dict[str, List[Tuple[str, int]]]:
    """Per-class image lists → {split: [(image, label)]} by ``per_class_split``, in class order."""
    out: Dict[str, List[Tuple[str, int]]] = {s: [] for s in SPLITS}
    for label, names in enumerate(images):
        n_train, n_val, _ = per_class_split(len(names))
        bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, len(names))}
        for split, (a, b) in bounds.items():
            out[split] += [(name, label) for name in names[a:b]]
    return out


def write_split_file(path: Path, images: Sequence[Sequence[str]], classnames: Sequence[str]) -> None:
    """CoOp's split_zhou JSON for per-class image lists (paths as the dataset's split file holds them)."""
    split = split_classes(images)
    data = {s: [[rel, label, classnames[label]] for rel, label in split[s]] for s in SPLITS}
    path.write_text(json.dumps(data))


# ---------------------------------------------------------------- one builder per dataset: (folder, n, split?)

def _class_folders(image_dir: Path, classes: Sequence[str], n: int, stem: Callable[[str], str],
                   ext: str = ".jpg") -> List[List[str]]:
    """``image_dir/<class>/<stem>_<i><ext>``; returns per-class paths relative to ``image_dir``."""
    rels = [[f"{c}/{stem(c)}_{i:04d}{ext}" for i in range(1, n + 1)] for c in classes]
    write_images(image_dir / r for group in rels for r in group)
    return rels


def _folder_dataset(image: str, classes: Sequence[str], split_file: str,
                    split_names: Optional[Sequence[str]] = None, skip: Sequence[str] = ()):
    """DTD-like: one folder per class; ``skip`` folders get images but stay out of the split file."""
    def build(folder: Path, n: int, with_split: bool) -> None:
        rels = _class_folders(folder / image, classes, n, stem=lambda c: "image")
        kept = [(r, c) for r, c in zip(rels, classes) if c not in skip]
        if with_split:
            names = split_names if split_names is not None else [c for _, c in kept]
            write_split_file(folder / split_file, [r for r, _ in kept], names)

    return build


def _pets(folder: Path, n: int, with_split: bool) -> None:
    images = [[f"{breed}_{i}" for i in range(1, n + 1)] for breed in PETS]
    write_images(folder / "images" / f"{im}.jpg" for group in images for im in group)
    n_train, n_val, _ = per_class_split(n)
    trainval = [f"{im} {label + 1} 1 1" for label, group in enumerate(images) for im in group[:n_train + n_val]]
    test = [f"{im} {label + 1} 1 1" for label, group in enumerate(images) for im in group[n_train + n_val:]]
    write_lines(folder / "annotations" / "trainval.txt", trainval)
    write_lines(folder / "annotations" / "test.txt", test)
    if with_split:
        write_split_file(folder / "split_zhou_OxfordPets.json", [[f"{im}.jpg" for im in g] for g in images],
                         EXPECTED["OxfordPets"][0])


def write_cars_annotations(folder: Path, train: Sequence[int], test: Sequence[int]) -> List[List[str]]:
    """StanfordCars' devkit files for images with the 0-based labels ``train`` (cars_train/00001.jpg …) and
    ``test`` (cars_test/…), in that order; returns per-class image paths relative to ``folder``."""
    import numpy as np
    from scipy.io import savemat

    images: List[List[str]] = [[] for _ in CARS]
    annotations: Dict[str, list] = {}
    for sub, labels in (("cars_train", train), ("cars_test", test)):
        annotations[sub] = [(f"{j + 1:05d}.jpg", label + 1) for j, label in enumerate(labels)]
        for name, cls in annotations[sub]:
            images[cls - 1].append(f"{sub}/{name}")
    write_images(folder / r for g in images for r in g)

    def mat(rows):
        a = np.zeros((1, len(rows)), dtype=[("fname", "O"), ("class", "O")])
        for j, (name, cls) in enumerate(rows):
            a[0, j]["fname"], a[0, j]["class"] = np.array([name]), np.array([[cls]], dtype=np.uint8)
        return a

    (folder / "devkit").mkdir(parents=True, exist_ok=True)
    names = np.empty((1, len(CARS)), dtype=object)
    names[0, :] = CARS
    savemat(folder / "devkit" / "cars_meta.mat", {"class_names": names})
    savemat(folder / "devkit" / "cars_train_annos.mat", {"annotations": mat(annotations["cars_train"])})
    savemat(folder / "cars_test_annos_withlabels.mat", {"annotations": mat(annotations["cars_test"])})
    return images


def _cars(folder: Path, n: int, with_split: bool) -> None:
    n_train, n_val, _ = per_class_split(n)
    images = write_cars_annotations(folder, [k for k in range(len(CARS)) for _ in range(n_train + n_val)],
                                    [k for k in range(len(CARS)) for _ in range(n - n_train - n_val)])
    if with_split:
        write_split_file(folder / "split_zhou_StanfordCars.json", images, EXPECTED["StanfordCars"][0])


def write_flower_labels(folder: Path, labels: Sequence[int]) -> List[List[str]]:
    """OxfordFlowers' imagelabels.mat (0-based ``labels`` of image_00001.jpg …) and cat_to_name.json; returns
    per-class image names."""
    import numpy as np
    from scipy.io import savemat

    images = [[f"image_{j + 1:05d}.jpg" for j, y in enumerate(labels) if y == label] for label in range(len(FLOWERS))]
    write_images(folder / "jpg" / im for g in images for im in g)
    savemat(folder / "imagelabels.mat", {"labels": np.array([[y + 1 for y in labels]])})
    (folder / "cat_to_name.json").write_text(json.dumps({str(i + 1): c for i, c in enumerate(FLOWERS)}))
    return images


def _flowers(folder: Path, n: int, with_split: bool) -> None:
    images = write_flower_labels(folder, [label for label in range(len(FLOWERS)) for _ in range(n)])
    if with_split:
        write_split_file(folder / "split_zhou_OxfordFlowers.json", images, FLOWERS)


def _aircraft(folder: Path, n: int, with_split: bool) -> None:
    ids = [[f"{label + 1}0{i:05d}" for i in range(n)] for label in range(len(AIRCRAFT))]  # 7 digits, as real ids
    write_images(folder / "images" / f"{i}.jpg" for g in ids for i in g)
    write_lines(folder / "variants.txt", AIRCRAFT)
    split = split_classes(ids)
    for s in SPLITS:
        write_lines(folder / f"images_variant_{s}.txt", [f"{i} {AIRCRAFT[label]}" for i, label in split[s]])


def _sun(folder: Path, n: int, with_split: bool) -> None:
    rels = _class_folders(folder / "SUN397", SUN, n, stem=lambda c: "sun")
    write_lines(folder / "ClassName.txt", [f"/{c}" for c in SUN])
    n_train, n_val, _ = per_class_split(n)
    write_lines(folder / "Training_01.txt", [f"/{r}" for g in rels for r in g[:n_train + n_val]])
    write_lines(folder / "Testing_01.txt", [f"/{r}" for g in rels for r in g[n_train + n_val:]])
    if with_split:
        write_split_file(folder / "split_zhou_SUN397.json", rels, EXPECTED["SUN397"][0])


def _ucf(folder: Path, n: int, with_split: bool) -> None:
    renamed = EXPECTED["UCF101"][0]
    videos = [[f"v_{a}_g{i:02d}_c01" for i in range(1, n + 1)] for a in UCF]
    rels = [[f"{r}/{v}.jpg" for v in g] for r, g in zip(renamed, videos)]
    write_images(folder / "UCF-101-midframes" / r for g in rels for r in g)
    lists = folder / "ucfTrainTestlist"
    write_lines(lists / "classInd.txt", [f"{i + 1} {a}" for i, a in enumerate(UCF)])
    n_train, n_val, _ = per_class_split(n)
    write_lines(lists / "trainlist01.txt",
                [f"{a}/{v}.avi {i + 1}" for i, (a, g) in enumerate(zip(UCF, videos)) for v in g[:n_train + n_val]])
    write_lines(lists / "testlist01.txt", [f"{a}/{v}.avi" for a, g in zip(UCF, videos) for v in g[n_train + n_val:]])
    if with_split:
        write_split_file(folder / "split_zhou_UCF101.json", rels, renamed)


def write_classnames_txt(folder: Path, wnids: Iterable[str]) -> None:
    """CoOp's classnames.txt ("<wnid> <name>" per line) for ``wnids``."""
    names = imagenet_classnames()
    write_lines(folder / "classnames.txt", [f"{w} {names[w]}" for w in wnids])


def _imagenet(folder: Path, n: int, with_split: bool) -> None:
    """``with_split`` here means: write classnames.txt (of the fake's classes). Files are named as in ImageNet
    (upper-case .JPEG)."""
    _class_folders(folder / "images" / "train", list(IMAGENET), n, stem=lambda c: c, ext=".JPEG")
    _class_folders(folder / "images" / "val", list(IMAGENET), n, stem=lambda c: "ILSVRC2012_val", ext=".JPEG")
    if with_split:
        write_classnames_txt(folder, IMAGENET)


@lru_cache(maxsize=None)
def imagenet_classnames() -> Dict[str, str]:
    """All 1000 "wnid → name" pairs, in the order of CoOp's classnames.txt (the fakes' classes among them)."""
    import open_clip
    from timm.data import ImageNetInfo

    names = dict(zip(ImageNetInfo("imagenet-1k").label_names(), open_clip.IMAGENET_CLASSNAMES))
    assert all(names[w] == n for w, n in {**IMAGENET, **IMAGENET_A, **IMAGENET_R, **IMAGENETV2}.items())
    return names


def _wnid_test_set(image: str, wnids: Sequence[str], readme: bool = True):
    """``with_split`` here means: write the set's own classnames.txt (of the fake's classes)."""
    def build(folder: Path, n: int, with_split: bool) -> None:
        _class_folders(folder / image, wnids, n, stem=lambda c: "img")
        if readme:
            (folder / image / "README.txt").write_text("not a class folder\n")
        if with_split:
            write_classnames_txt(folder, wnids)

    return build


def _imagenetv2(folder: Path, n: int, with_split: bool) -> None:
    _class_folders(folder / "imagenetv2-matched-frequency-format-val", [str(i) for i in IMAGENETV2_FOLDERS], n,
                   stem=lambda c: "img")
    if with_split:
        write_classnames_txt(folder, IMAGENETV2)


BUILDERS: Dict[str, Tuple[str, Callable[[Path, int, bool], None]]] = {
    "ImageNet": ("imagenet", _imagenet),
    "Caltech101": ("caltech-101", _folder_dataset("101_ObjectCategories", CALTECH, "split_zhou_Caltech101.json",
                                                  EXPECTED["Caltech101"][0], skip=("BACKGROUND_Google", "Faces_easy"))),
    "OxfordPets": ("oxford_pets", _pets),
    "StanfordCars": ("stanford_cars", _cars),
    "OxfordFlowers": ("oxford_flowers", _flowers),
    "Food101": ("food-101", _folder_dataset("images", FOOD, "split_zhou_Food101.json")),
    "FGVCAircraft": ("fgvc_aircraft", _aircraft),
    "SUN397": ("sun397", _sun),
    "DescribableTextures": ("dtd", _folder_dataset("images", DTD, "split_zhou_DescribableTextures.json")),
    # raw EuroSAT names in the split file: the reader's fix must apply to split-file names too
    "EuroSAT": ("eurosat", _folder_dataset("2750", EUROSAT, "split_zhou_EuroSAT.json")),
    "UCF101": ("ucf101", _ucf),
    "ImageNetV2": ("imagenetv2", _imagenetv2),
    "ImageNetSketch": ("imagenet-sketch", _wnid_test_set("images", list(IMAGENET), readme=False)),
    "ImageNetA": ("imagenet-adversarial", _wnid_test_set("imagenet-a", list(IMAGENET_A))),
    "ImageNetR": ("imagenet-rendition", _wnid_test_set("imagenet-r", list(IMAGENET_R))),
}


def path_token(name: str, label: int) -> Optional[str]:
    """A piece of every image path of class ``label`` in the fake ``name`` (None where paths carry no class)."""
    folders = {
        "ImageNet": list(IMAGENET), "ImageNetSketch": list(IMAGENET), "ImageNetA": list(IMAGENET_A),
        "ImageNetR": list(IMAGENET_R), "Caltech101": [c for c in CALTECH if c not in ("BACKGROUND_Google",
                                                                                       "Faces_easy")],
        "Food101": FOOD, "DescribableTextures": DTD, "EuroSAT": EUROSAT, "SUN397": SUN,
        "UCF101": EXPECTED["UCF101"][0],
    }
    if name in folders:
        return f"/{folders[name][label]}/"
    others = {"ImageNetV2": lambda: f"/{label}/", "OxfordPets": lambda: f"/{PETS[label]}_",
              "FGVCAircraft": lambda: f"/{label + 1}0"}
    return others[name]() if name in others else None


def make_fake_dataset(name: str, root, n_per_class: int = 10, with_split: bool = True) -> Path:
    """Write a fake ``name`` under data root ``root`` and return its dataset folder.

    ``with_split=False`` leaves out the split_zhou file (the raw annotations a split is generated from stay);
    for the ImageNet family it leaves out classnames.txt.
    """
    folder_name, build = BUILDERS[name]
    folder = Path(root) / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    build(folder, n_per_class, with_split)
    return folder


def make_fake_root(root, names: Optional[Iterable[str]] = None, n_per_class: int = 10) -> Path:
    """Write fake copies of ``names`` (default: all 15) under ``root`` and return the data root."""
    root = Path(root)
    for name in names or BUILDERS:
        make_fake_dataset(name, root, n_per_class)
    return root
