"""Edge cases that must never load quietly: missing or empty class folders of a benchmark, a data root that is a
file, an empty base/new half; and few-shot draws and generated splits in the reference's class order."""
import json
import logging
import random
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from fake_datasets import (CARS, EXPECTED, FLOWERS, IMAGENET_A, imagenet_classnames, make_fake_dataset,
                           write_cars_annotations, write_classnames_txt, write_flower_labels, write_images)
from promptclip.data import Dataset, Item, few_shot, load_dataset, subsample_classes
from promptclip.data.benchmarks import BENCHMARKS, timm_wnids
from promptclip.data.check import check_datasets
from promptclip.data.fewshot import DRAW_ALGORITHM, draw_path
from promptclip.errors import DataError


def assert_restore_advice(message: str) -> None:
    """A benchmark's missing class is restored, never dropped."""
    assert "re-extracting the dataset archive" in message and "check the download" in message
    assert "remove" not in message.lower() and "delete" not in message.lower()


# ---------------------------------------------------------------- class folders read from the disk

# (dataset, class folder relative to the dataset folder, the class as the error names it)
FOLDER_CLASSES = [
    ("ImageNet", "images/train/n01484850", "'great white shark' (n01484850)"),
    ("ImageNet", "images/val/n01443537", "'goldfish' (n01443537)"),
    ("ImageNetSketch", "images/n01491361", "'tiger shark' (n01491361)"),
    ("ImageNetA", "imagenet-a/n01531178", "'goldfinch' (n01531178)"),  # the middle one: later labels would shift
    ("ImageNetR", "imagenet-r/n01443537", "'goldfish' (n01443537)"),
    ("ImageNetV2", "imagenetv2-matched-frequency-format-val/2", "'great white shark' (n01484850)"),
    ("ImageNetV2", "imagenetv2-matched-frequency-format-val/10", "'brambling' (n01530575)"),
]


@pytest.mark.parametrize("how", ["missing", "empty"])
@pytest.mark.parametrize("name,rel,shown", FOLDER_CLASSES)
def test_imagenet_family_class_folder_missing_or_empty(tmp_path, name, rel, shown, how):
    folder = make_fake_dataset(name, tmp_path, n_per_class=2)
    shutil.rmtree(folder / rel)
    if how == "empty":
        (folder / rel).mkdir()
    with pytest.raises(DataError) as error:
        load_dataset(name, tmp_path)
    message = str(error.value)
    state = "does not exist" if how == "missing" else "holds no images"
    assert f"class {shown}: the folder {folder / rel} {state}" in message
    assert f"1 of the {len(EXPECTED[name][0])} classes in {(folder / rel).parent} has no images: " in message
    assert message.endswith(f"{name} needs every one of its classes: restore what is missing by re-extracting the "
                            f"dataset archive, or check the download (see datasets/DATASETS.md, section {name}).")
    assert_restore_advice(message)


def test_imagenet_a_needs_all_200_classes_with_coops_full_classnames_txt(tmp_path):
    folder = make_fake_dataset("ImageNetA", tmp_path, n_per_class=1, with_split=False)
    write_classnames_txt(folder, imagenet_classnames())  # CoOp's file: all 1000 ImageNet classes
    with pytest.raises(DataError, match=r"197 of the 200 classes in .*imagenet-a have no images: class "
                                        r"'American robin' \(n01558993\)"):
        load_dataset("ImageNetA", tmp_path)
    a = timm_wnids("imagenet_a_synsets.txt")
    write_images(folder / "imagenet-a" / w / "x.jpg" for w in a)
    ds = load_dataset("ImageNetA", tmp_path)
    assert len(ds.classnames) == 200 and not ds.notes
    assert ds.classnames[:3] == list(IMAGENET_A.values())  # labels in sorted wnid order, as the reference
    write_images([folder / "imagenet-a" / "n01440764" / "x.jpg"])  # tench: an ImageNet class ImageNet-A lacks
    with pytest.raises(DataError, match=r"\['n01440764'\] \(1 in all\), which are not among its 200 classes"):
        load_dataset("ImageNetA", tmp_path)


def test_imagenet_without_classnames_txt_needs_all_1000_classes(tmp_path):
    make_fake_dataset("ImageNet", tmp_path, n_per_class=1, with_split=False)
    with pytest.raises(DataError, match=r"996 of the 1000 classes in .*images/train have no images: class "
                                        r"'hammerhead shark' \(n01494475\): the folder .*n01494475 does not exist; "
                                        r".* and 991 more\. ImageNet needs every one of its classes"):
        load_dataset("ImageNet", tmp_path)


def test_truncated_classnames_txt_is_noted(tmp_path):
    make_fake_dataset("ImageNet", tmp_path, n_per_class=1)
    ds = load_dataset("ImageNet", tmp_path)
    assert ds.notes == [f"{tmp_path / 'imagenet' / 'classnames.txt'} gives 4 classes where ImageNet has 1000: check "
                        f"that no class is missing (published numbers use all 1000)."]


# (dataset, class folder under the image folder, the class name after fixes)
SPLIT_FILE_CLASSES = [
    ("Caltech101", "airplanes", "airplane"), ("Food101", "baklava", "baklava"),
    ("SUN397", "b/bakery/shop", "shop bakery"), ("DescribableTextures", "braided", "braided"),
    ("EuroSAT", "SeaLake", "Sea or Lake"), ("UCF101", "Yo_Yo", "Yo_Yo"),
]


@pytest.mark.parametrize("how", ["missing", "empty"])
@pytest.mark.parametrize("name,rel,classname", SPLIT_FILE_CLASSES)
def test_split_file_class_folder_missing_or_empty(tmp_path, name, rel, classname, how):
    folder = make_fake_dataset(name, tmp_path, n_per_class=N)
    class_dir = folder / BENCHMARKS[name].images / rel
    shutil.rmtree(class_dir)
    if how == "empty":
        class_dir.mkdir()
    with pytest.raises(DataError) as error:
        load_dataset(name, tmp_path)
    message = str(error.value)
    assert f"names {N} of " in message
    assert f"No image of 1 class exists: {classname!r} (folder {class_dir}); restore them by re-extracting the " \
           f"dataset archive." in message
    assert "remove" not in message and "delete" not in message


# Datasets whose images of all classes share one folder: the message names the class, without a folder.
FLAT = [("OxfordPets", "images", "bengal", "Bengal_"), ("StanfordCars", "cars_train", None, None),
        ("OxfordFlowers", "jpg", None, None), ("FGVCAircraft", "images", "Falcon 2000", "40")]


@pytest.mark.parametrize("name,image_dir,classname,prefix", FLAT)
def test_flat_image_folder_class_missing(tmp_path, name, image_dir, classname, prefix):
    folder = make_fake_dataset(name, tmp_path, n_per_class=N)
    ds = load_dataset(name, tmp_path)
    label = len(ds.classnames) - 1
    gone = {i.path for s in ("train", "val", "test") for i in ds.split(s) if i.label == label}
    if prefix is not None:  # the class shows in the file names, as in the real dataset
        assert all(Path(p).name.startswith(prefix) for p in gone)
    for path in gone:
        Path(path).unlink()
    with pytest.raises(DataError) as error:
        load_dataset(name, tmp_path)
    message = str(error.value)
    assert f"No image of 1 class exists: {ds.classnames[label]!r}; restore them by re-extracting" in message
    assert classname is None or repr(classname) in message
    assert "(folder" not in message  # the folder holds other classes too: it is not the class's folder
    assert str(folder) in message


@pytest.mark.parametrize("name", ["Caltech101", "Food101", "DescribableTextures", "EuroSAT"])
def test_generated_split_refuses_an_empty_class_folder(tmp_path, name):
    folder = make_fake_dataset(name, tmp_path, n_per_class=2, with_split=False)
    class_dir = sorted(p for p in (folder / BENCHMARKS[name].images).iterdir()
                       if p.name not in ("BACKGROUND_Google", "Faces_easy"))[-1]
    for image in class_dir.iterdir():
        image.unlink()
    with pytest.raises(DataError) as error:
        load_dataset(name, tmp_path)
    assert f"class {class_dir.name!r}: the folder {class_dir} holds no images" in str(error.value)
    assert_restore_advice(str(error.value))


def test_generated_split_notes_the_class_count(tmp_path):
    folder = make_fake_dataset("DescribableTextures", tmp_path, n_per_class=N, with_split=False)
    shutil.rmtree(folder / "images" / "braided")  # no class list on disk: only the count can tell
    ds = load_dataset("dtd", tmp_path)
    assert "the split generated in place of split_zhou_DescribableTextures.json gives 2 classes where " \
           "DescribableTextures has 47: check that no class is missing (published numbers use all 47)." in ds.notes


def test_image_folder_refuses_a_class_outside_train(tmp_path):
    write_images(tmp_path / split / c / "0.jpg" for split in ("train", "val") for c in ("cat", "dog"))
    write_images([tmp_path / "val" / "emu" / "0.jpg"])
    with pytest.raises(DataError, match=r"val has the folders \['emu'\] \(1 in all\), which are not among its 2 "
                                        r"classes"):
        load_dataset("imagefolder", tmp_path)
    shutil.rmtree(tmp_path / "val" / "emu")
    shutil.rmtree(tmp_path / "val" / "dog")
    with pytest.raises(DataError, match=r"1 of the 2 classes in .*val has no images: class 'dog': the folder "
                                        r".*val/dog does not exist\. Add images to these folders, or remove"):
        load_dataset("imagefolder", tmp_path)


# ---------------------------------------------------------------- a file where a folder is expected

def test_data_root_that_is_a_file(tmp_path):
    root = tmp_path / "data.txt"
    root.write_text("not a folder")
    for name in ("dtd", "ImageNet", "ImageNetA"):
        with pytest.raises(DataError, match=rf"Data root {root} is a file, but a folder is expected: set data.root "
                                            r"to the folder that holds the dataset folders"):
            load_dataset(name, root)
    with pytest.raises(DataError, match=rf"Data folder {root} is a file, but a folder is expected"):
        load_dataset("imagefolder", root)
    with pytest.raises(DataError, match=rf"Dataset folder {root} is a file, but a folder is expected"):
        load_dataset("listfile", root, train="train.csv")
    with pytest.raises(DataError, match=rf"Data root {root} is a file, but a folder is expected"):
        check_datasets(root)


def test_dataset_and_image_folders_that_are_files(tmp_path):
    (tmp_path / "dtd").write_text("")
    with pytest.raises(DataError, match=rf"DescribableTextures: {tmp_path / 'dtd'} is a file, but a folder is "
                                        r"expected: the dataset folder"):
        load_dataset("dtd", tmp_path)
    (tmp_path / "dtd").unlink()
    (tmp_path / "dtd").mkdir()
    (tmp_path / "dtd" / "images").write_text("")
    with pytest.raises(DataError, match=rf"DescribableTextures: {tmp_path / 'dtd' / 'images'} is a file, but a "
                                        r"folder is expected"):
        load_dataset("dtd", tmp_path)


def test_list_and_class_files_that_are_folders(tmp_path):
    (tmp_path / "train.csv").mkdir()
    with pytest.raises(DataError, match=r"List file .*train.csv is a folder, but a file is expected"):
        load_dataset("listfile", tmp_path, train="train.csv")
    (tmp_path / "test.csv").write_text("a.jpg,0\n")
    (tmp_path / "classes.txt").mkdir()
    with pytest.raises(DataError, match=r"Class-name file .*classes.txt is a folder, but a file is expected"):
        load_dataset("listfile", tmp_path, test="test.csv", classnames="classes.txt")
    (tmp_path / "d.yaml").mkdir()
    with pytest.raises(DataError, match=r"Dataset description .*d.yaml is a folder, but a file is expected"):
        load_dataset(str(tmp_path / "d.yaml"), tmp_path)


# ---------------------------------------------------------------- base/new halves

def toy(labels, name="Toy", n_classes=None):
    items = [Item(f"/x/{i}.jpg", y) for i, y in enumerate(labels)]
    classes = n_classes if n_classes is not None else len(set(labels))
    return Dataset(name, [f"c{k}" for k in range(classes)], items, [], items, Path("/x"))


def test_empty_new_half_is_an_error():
    with pytest.raises(DataError, match=r"Dataset 'Toy': the new half of its 1 class is empty \(base is the first "
                                        r"ceil\(n/2\) classes, new the rest, so data.subsample=new needs at least "
                                        r"2\)\. Use data.subsample=all"):
        subsample_classes(toy([0, 0, 0]), "new")
    assert subsample_classes(toy([0, 0, 0]), "base").classnames == ["c0"]
    assert subsample_classes(toy([0, 1, 1]), "new").classnames == ["c1"]


def test_empty_base_half_is_an_error():
    with pytest.raises(DataError, match=r"Dataset 'Empty': the base half of its 0 classes is empty"):
        subsample_classes(toy([], "Empty"), "base")


# ---------------------------------------------------------------- the reference's class order

N = 10
UNSORTED = [2, 0, 2, 1, 0, 2, 1, 1, 0, 2, 0, 1, 2, 0, 1, 2, 0, 1, 1, 2, 0, 0, 2, 1]  # first appearance: 2, 0, 1


def reference_fewshot(data_source, num_shots):
    """Dassl's generate_fewshot_dataset as its code reads: group by label in order of first appearance (a
    defaultdict), then ``random.sample(items, num_shots)`` per group from the global ``random``; a group with fewer
    items keeps them all (repeat=False)."""
    tracker = defaultdict(list)
    for item in data_source:
        tracker[item.label].append(item)
    out = []
    for items in tracker.values():
        out.extend(random.sample(items, num_shots) if len(items) >= num_shots else items)
    return out


def reference_draw(train, val, shots, seed):
    """CoOp's draw: the run's seed seeds ``random``; train is drawn first, then val with min(shots, 4)."""
    random.seed(seed)
    return reference_fewshot(train, shots), reference_fewshot(val, min(shots, 4))


def sorted_order_draw(train, shots, seed):
    """The draw with classes in sorted label order (promptclip's old rule), to show the data tells them apart."""
    rng = random.Random(seed)
    groups = defaultdict(list)
    for item in train:
        groups[item.label].append(item)
    return [x for label in sorted(groups) for x in rng.sample(groups[label], shots)]


def unsorted_dataset():
    train = [Item(f"/d/train/{i:03d}.jpg", y) for i, y in enumerate(UNSORTED)]
    val = [Item(f"/d/val/{i:03d}.jpg", y) for i, y in enumerate(reversed(UNSORTED))]  # first appearance 1, 2, 0
    return Dataset("Unsorted", ["a", "b", "c"], train, val, list(train), Path("/d"))


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("shots", [1, 2, 4])
def test_few_shot_draw_equals_the_references(seed, shots):
    ds = unsorted_dataset()
    train, val = reference_draw(ds.train, ds.val, shots, seed)
    drawn = few_shot(ds, shots, seed)
    assert drawn.train == train and drawn.val == val
    assert [i.label for i in drawn.train][::shots] == [2, 0, 1]
    assert drawn.train != sorted_order_draw(ds.train, shots, seed)


def test_cached_draw_of_the_old_rule_is_drawn_again(tmp_path, caplog):
    ds = unsorted_dataset()
    path = draw_path(tmp_path, ds, 2, 1)
    few_shot(ds, 2, 1, cache_dir=tmp_path)
    stored = json.loads(path.read_text())
    assert stored["algorithm"] == DRAW_ALGORITHM == 2
    old = dict(stored, train=[[f"train/{Path(i.path).name}", i.label] for i in sorted_order_draw(ds.train, 2, 1)])
    del old["algorithm"]  # files written before the rule had a version
    path.write_text(json.dumps(old))
    with caplog.at_level(logging.WARNING, logger="promptclip"):
        drawn = few_shot(ds, 2, 1, cache_dir=tmp_path)
    assert drawn.train == reference_draw(ds.train, ds.val, 2, 1)[0]
    assert f"The few-shot draw {path} was made by version 1 of the sampling rule, not by version 2 (classes in " \
           f"order of first appearance, as the reference): drawing again and replacing it." in caplog.text
    assert json.loads(path.read_text()) == stored
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="promptclip"):
        assert few_shot(ds, 2, 1, cache_dir=tmp_path).train == drawn.train
    assert "drawing again" not in caplog.text  # a draw of the current rule is reused


def reference_flowers_split(image_dir, labels, seed):
    """CoOp's OxfordFlowers.read_data: paths grouped by 1-based label in order of first appearance in
    imagelabels.mat; per group ``random.shuffle`` then 50% train, 20% val, the rest test."""
    random.seed(seed)
    tracker = defaultdict(list)
    for i, label in enumerate(labels):
        tracker[label + 1].append(str(image_dir / f"image_{i + 1:05d}.jpg"))
    train, val, test = [], [], []
    for label, paths in tracker.items():
        random.shuffle(paths)
        n_train, n_val = round(len(paths) * 0.5), round(len(paths) * 0.2)
        train += [Item(p, label - 1) for p in paths[:n_train]]
        val += [Item(p, label - 1) for p in paths[n_train:n_train + n_val]]
        test += [Item(p, label - 1) for p in paths[n_train + n_val:]]
    return train, val, test


def reference_split_trainval(trainval, p_val=0.2):
    """CoOp's OxfordPets.split_trainval: indices grouped by label in order of first appearance; per group
    ``random.shuffle`` then the first round(n * p_val) go to val, the rest to train."""
    tracker = defaultdict(list)
    for idx, item in enumerate(trainval):
        tracker[item.label].append(idx)
    train, val = [], []
    for idxs in tracker.values():
        n_val = round(len(idxs) * p_val)
        random.shuffle(idxs)
        for n, idx in enumerate(idxs):
            (val if n < n_val else train).append(trainval[idx])
    return train, val


@pytest.mark.parametrize("split_seed", [1, 7])
def test_generated_flowers_split_and_draw_equal_the_references(tmp_path, split_seed):
    folder = tmp_path / "oxford_flowers"
    write_flower_labels(folder, UNSORTED)
    ds = load_dataset("OxfordFlowers", tmp_path, split_seed=split_seed)
    train, val, test = reference_flowers_split(folder / "jpg", UNSORTED, split_seed)
    assert (ds.train, ds.val, ds.test) == (train, val, test)
    assert ds.classnames == FLOWERS and [i.label for i in ds.train][::4] == [2, 0, 1]
    for seed in (1, 2):
        assert few_shot(ds, 2, seed).train == reference_draw(train, val, 2, seed)[0]


@pytest.mark.parametrize("split_seed", [1, 7])
def test_generated_cars_split_equals_the_reference(tmp_path, split_seed):
    folder = tmp_path / "stanford_cars"
    test_labels = [0, 1, 2, 1, 0, 2]
    write_cars_annotations(folder, UNSORTED, test_labels)
    ds = load_dataset("StanfordCars", tmp_path, split_seed=split_seed)
    trainval = [Item(str(folder / "cars_train" / f"{j + 1:05d}.jpg"), y) for j, y in enumerate(UNSORTED)]
    random.seed(split_seed)
    train, val = reference_split_trainval(trainval)
    assert (ds.train, ds.val) == (train, val)
    assert ds.test == [Item(str(folder / "cars_test" / f"{j + 1:05d}.jpg"), y) for j, y in enumerate(test_labels)]
    assert len(ds.classnames) == len(CARS) and [i.label for i in ds.train][:1] == [2]
    assert few_shot(ds, 3, 5).train == reference_draw(train, val, 3, 5)[0]
