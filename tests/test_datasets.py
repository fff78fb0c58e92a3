"""The 15 benchmark readers on fake trees in CoOp's layout: class names, labels, splits, base/new, few-shot draws."""
import json
import math
import shutil
from pathlib import Path

import pytest

from fake_datasets import (EXPECTED, IMAGENET, IMAGENET_A, IMAGENET_R, IMAGENETV2_FOLDERS, SPLITS, imagenet_classnames,
                           make_fake_dataset, make_fake_root, path_token, per_class_split, write_images)
from promptclip.data import DATASETS, few_shot, load_dataset, prompt_classname, subsample_classes
from promptclip.data.benchmarks import BENCHMARKS
from promptclip.data.fewshot import draw_path
from promptclip.errors import ConfigError, DataError

N = 10  # images per class in the fakes
NAMES = list(EXPECTED)
TRAINABLE = [n for n in NAMES if EXPECTED[n][1](N)[0] > 0]
GENERATED = ["Caltech101", "OxfordPets", "StanfordCars", "OxfordFlowers", "Food101", "SUN397",
             "DescribableTextures", "EuroSAT", "UCF101"]

# CoOp's zero-shot templates, written out here rather than read from the code under test.
TEMPLATES = {
    "OxfordPets": "a photo of a {}, a type of pet.", "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.", "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.", "Food101": "a photo of {}, a type of food.",
    "UCF101": "a photo of a person doing {}.",
}

# The dataset folders of CoOp's DATASETS.md.
FOLDERS = {
    "ImageNet": "imagenet", "Caltech101": "caltech-101", "OxfordPets": "oxford_pets", "StanfordCars": "stanford_cars",
    "OxfordFlowers": "oxford_flowers", "Food101": "food-101", "FGVCAircraft": "fgvc_aircraft", "SUN397": "sun397",
    "DescribableTextures": "dtd", "EuroSAT": "eurosat", "UCF101": "ucf101", "ImageNetV2": "imagenetv2",
    "ImageNetSketch": "imagenet-sketch", "ImageNetA": "imagenet-adversarial", "ImageNetR": "imagenet-rendition",
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_fake_root(tmp_path_factory.mktemp("data"), n_per_class=N)


def expected_classnames(name):
    return EXPECTED[name][0]


@pytest.mark.parametrize("name", NAMES)
def test_reader_reads_the_layout(root, name):
    ds = load_dataset(name, root)
    assert ds.name == name
    assert ds.template == TEMPLATES.get(name, "a photo of a {}.")
    if name == "ImageNetV2":  # classnames.txt lists the fake's 11 classes; folder i is class i
        assert ds.classnames[:3] == ["tench", "goldfish", "great white shark"]
        assert sorted({i.label for i in ds.test}) == list(IMAGENETV2_FOLDERS)
        assert any("gives 11 classes where ImageNetV2 has 1000" in n for n in ds.notes)
    assert ds.classnames == expected_classnames(name)
    n_classes = len(ds.classnames)
    sizes = EXPECTED[name][1](N)
    for split, size in zip(SPLITS, sizes):
        items = ds.split(split)
        assert len(items) == size * n_classes, split
        for item in items:
            assert Path(item.path).is_absolute() and Path(item.path).is_file()
            assert Path(item.path).is_relative_to(ds.root)
            token = path_token(name, item.label)
            assert token is None or token in item.path, (item, token)
    assert ds.root == root / FOLDERS[name]


def test_imagenet_val_serves_as_val_and_test(root):
    ds = load_dataset("ImageNet", root)
    assert ds.val_is_test and ds.val == ds.test and ds.train
    drawn = few_shot(ds, 2, seed=1)
    assert len(drawn.train) == 2 * 4
    assert drawn.val == ds.test  # kept whole, as the reference does, not sampled from the test set


def test_class_names_enter_prompts_without_underscores(root):
    assert prompt_classname(load_dataset("UCF101", root).classnames[0]) == "Apply Eye Makeup"
    assert prompt_classname(load_dataset("SUN397", root).classnames[1]) == "outdoor apartment building"
    assert prompt_classname(load_dataset("OxfordPets", root).classnames[1]) == "american bulldog"
    ds = load_dataset("EuroSAT", root)
    assert ds.template.format(prompt_classname(ds.classnames[0])) == "a centered satellite photo of Annual Crop Land."


@pytest.mark.parametrize("alias,canonical", [("dtd", "DescribableTextures"), ("DTD", "DescribableTextures"),
                                             ("imagenet-a", "ImageNetA"), ("flowers", "OxfordFlowers"),
                                             ("caltech101", "Caltech101")])
def test_aliases_and_any_case(root, alias, canonical):
    assert load_dataset(alias, root).name == canonical


@pytest.mark.parametrize("name", TRAINABLE)
def test_base_new_relabels_every_split(root, name):
    ds = load_dataset(name, root)
    n = len(ds.classnames)
    base, new = subsample_classes(ds, "base"), subsample_classes(ds, "new")
    assert base.classnames == ds.classnames[:math.ceil(n / 2)]
    assert new.classnames == ds.classnames[math.ceil(n / 2):]
    for part, offset in ((base, 0), (new, math.ceil(n / 2))):
        for split in SPLITS:
            labels = sorted({i.label for i in part.split(split)})
            assert labels == list(range(len(part.classnames))), (split, labels)
            original = {i.path: i.label for i in ds.split(split)}
            assert all(original[i.path] == i.label + offset for i in part.split(split))
    assert len(base.test) + len(new.test) == len(ds.test)


def test_imagenet_names_from_open_clip_without_classnames_txt(tmp_path):
    import open_clip

    make_fake_dataset("ImageNet", tmp_path, n_per_class=1, with_split=False)
    assert not (tmp_path / "imagenet" / "classnames.txt").exists()
    # without classnames.txt the class list is all 1000 ImageNet classes, so each needs its folders
    write_images(tmp_path / "imagenet" / "images" / split / w / "a.JPEG"
                 for w in imagenet_classnames() for split in ("train", "val"))
    ds = load_dataset("ImageNet", tmp_path)
    assert ds.classnames == list(open_clip.IMAGENET_CLASSNAMES) and not ds.notes
    assert ds.classnames[:4] == list(IMAGENET.values())


def test_shift_sets_take_names_from_classnames_txt_when_present(tmp_path):
    make_fake_dataset("ImageNetR", tmp_path, n_per_class=2, with_split=False)  # no classnames.txt of its own
    imagenet = tmp_path / "imagenet"
    imagenet.mkdir()
    (imagenet / "classnames.txt").write_text("n01443537 gold fish\nn01484850 white shark\nn01494475 hammerhead\n")
    assert load_dataset("ImageNetR", tmp_path).classnames == ["gold fish", "white shark", "hammerhead"]
    own = tmp_path / "imagenet-rendition" / "classnames.txt"
    own.write_text("n01443537 a\nn01484850 b\nn01494475 c\n")  # the set's own file comes first
    assert load_dataset("ImageNetR", tmp_path).classnames == ["a", "b", "c"]


@pytest.mark.parametrize("name,wnids", [("ImageNetA", IMAGENET_A), ("ImageNetR", IMAGENET_R)])
def test_imagenet_a_r_map_their_wnids_onto_imagenet_names(root, name, wnids):
    import open_clip
    from timm.data import ImageNetInfo

    ds = load_dataset(name, root)
    standard = ImageNetInfo("imagenet-1k").label_names()
    assert ds.classnames == [open_clip.IMAGENET_CLASSNAMES[standard.index(w)] for w in sorted(wnids)]
    assert ds.classnames == [wnids[w] for w in sorted(wnids)]
    assert sorted({i.label for i in ds.test}) == [0, 1, 2]  # relabelled 0.. in sorted folder order
    assert not ds.train and not ds.val


def test_unknown_wnid_folder_is_refused(tmp_path):
    folder = make_fake_dataset("ImageNetA", tmp_path, n_per_class=1)
    shutil.copytree(folder / "imagenet-a" / "n01498041", folder / "imagenet-a" / "stingrays")
    with pytest.raises(DataError, match=r"\['stingrays'\].*not ImageNet class ids.*WordNet id"):
        load_dataset("ImageNetA", tmp_path)


# ---------------------------------------------------------------- split generation

@pytest.mark.parametrize("name", GENERATED)
def test_missing_split_is_generated_into_split_dir(tmp_path, name):
    data, runs = tmp_path / "data", tmp_path / "run"
    folder = make_fake_dataset(name, data, n_per_class=N, with_split=False)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    ds = load_dataset(name, data, split_dir=runs)
    saved = runs / f"split_zhou_{name}.json"
    assert saved.is_file() and sorted(p.relative_to(data) for p in data.rglob("*")) == before
    assert any("generated" in n and str(saved) in n for n in ds.notes)
    assert ds.classnames == expected_classnames(name)
    train, val, test = per_class_split(N)
    if name in ("OxfordPets", "StanfordCars", "SUN397", "UCF101"):  # 80/20 of the official training list
        train, val = train + val - round((train + val) * 0.2), round((train + val) * 0.2)
    assert [len(ds.split(s)) for s in SPLITS] == [k * len(ds.classnames) for k in (train, val, test)]
    entries = json.loads(saved.read_text())["train"]  # CoOp's format: paths relative to the image folder
    assert [str(folder / BENCHMARKS[name].images / rel) for rel, _, _ in entries] == [i.path for i in ds.train]
    assert not any(Path(rel).is_absolute() for rel, _, _ in entries)

    again = load_dataset(name, data, split_dir=runs)
    assert again.train == ds.train and again.test == ds.test
    assert any("generated earlier" in n for n in again.notes)


def test_generated_split_depends_on_split_seed_only(tmp_path):
    make_fake_dataset("DescribableTextures", tmp_path, n_per_class=N, with_split=False)
    one = load_dataset("dtd", tmp_path, split_seed=1)
    assert load_dataset("dtd", tmp_path).train == one.train  # split_seed defaults to 1
    assert load_dataset("dtd", tmp_path, split_seed=2).train != one.train
    # a run's seed is no reader option: it never reaches the split
    with pytest.raises(ConfigError, match=r"Unknown option 'seed' in data.options of dataset 'dtd'\. Did you mean "
                                          r"'split_seed'\?"):
        load_dataset("dtd", tmp_path, seed=5)
    assert any("not saved" in n for n in one.notes)
    assert not list(tmp_path.rglob("split_zhou*"))


def test_write_split_to_root_puts_it_in_the_data_tree(tmp_path):
    folder = make_fake_dataset("EuroSAT", tmp_path, n_per_class=N, with_split=False)
    ds = load_dataset("EuroSAT", tmp_path, split_dir=tmp_path / "run", write_split_to_root=True)
    assert (folder / "split_zhou_EuroSAT.json").is_file() and not (tmp_path / "run").exists()
    assert json.loads((folder / "split_zhou_EuroSAT.json").read_text())["train"][0][2] == "Annual Crop Land"
    assert load_dataset("EuroSAT", tmp_path).notes == [] and ds.classnames[0] == "Annual Crop Land"


# ---------------------------------------------------------------- few-shot draws

def test_few_shot_is_reproducible_per_seed_and_differs_across_seeds(root, tmp_path):
    ds = load_dataset("DescribableTextures", root)
    a = few_shot(ds, 4, seed=1, cache_dir=tmp_path)
    assert draw_path(tmp_path, ds, 4, 1).is_file()
    assert a.train == few_shot(ds, 4, seed=1).train  # the same draw, with or without the cache
    assert a.train != few_shot(ds, 4, seed=2).train
    assert sorted(i.label for i in a.train) == [k for k in range(3) for _ in range(4)]
    assert sorted(i.label for i in a.val) == [k for k in range(3) for _ in range(2)]  # min(4, 4) > 2 val per class
    assert a.test == ds.test


def test_few_shot_draw_survives_moving_the_data_root(root, tmp_path):
    cache = tmp_path / "cache"
    pets = load_dataset("OxfordPets", root)
    first = few_shot(pets, 2, seed=3, cache_dir=cache)
    moved = tmp_path / "moved"
    shutil.copytree(root / "oxford_pets", moved / "oxford_pets")
    stored = draw_path(cache, pets, 2, 3).read_text()
    second = few_shot(load_dataset("OxfordPets", moved), 2, seed=3, cache_dir=cache)
    assert draw_path(cache, load_dataset("OxfordPets", moved), 2, 3).read_text() == stored  # reused, not redrawn
    rel = lambda ds: [(Path(i.path).relative_to(ds.root).as_posix(), i.label) for i in ds.train]  # noqa: E731
    assert rel(first) == rel(second) and all(i.path.startswith(str(moved)) for i in second.train)


def test_a_changed_or_namesake_dataset_never_reuses_a_draw(tmp_path):
    folder = make_fake_dataset("Food101", tmp_path / "data", n_per_class=N)
    cache = tmp_path / "cache"
    original = load_dataset("Food101", tmp_path / "data")
    few_shot(original, 1, seed=1, cache_dir=cache)
    split_file = folder / "split_zhou_Food101.json"
    split = json.loads(split_file.read_text())
    removed = split["train"][0][0]
    split["train"] = split["train"][1:]
    split_file.write_text(json.dumps(split))
    changed = load_dataset("Food101", tmp_path / "data")
    drawn = few_shot(changed, 1, seed=1, cache_dir=cache)
    assert draw_path(cache, changed, 1, 1) != draw_path(cache, original, 1, 1)
    assert draw_path(cache, original, 1, 1).is_file() and draw_path(cache, changed, 1, 1).is_file()
    assert not any(i.path.endswith(removed) for i in drawn.train)
    assert drawn.train == few_shot(changed, 1, seed=1).train  # the draw of the data as it is now
    stored = json.loads(draw_path(cache, changed, 1, 1).read_text())
    draw_path(cache, changed, 1, 1).write_text(json.dumps(dict(stored, dataset_checksum="0" * 16)))
    with pytest.raises(DataError, match="does not belong to the data it is filed under.*Delete that file"):
        few_shot(changed, 1, seed=1, cache_dir=cache)


def test_few_shot_happens_before_base_new(root):
    ds = load_dataset("Caltech101", root)
    drawn = subsample_classes(few_shot(ds, 2, seed=1), "new")
    assert drawn.classnames == ["accordion", "airplane"]  # 5 classes: base = first 3
    assert sorted(i.label for i in drawn.train) == [0, 0, 1, 1]


def test_registry_lists_all_fifteen():
    assert all(name in DATASETS for name in NAMES)
