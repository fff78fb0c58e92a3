"""Image folders drop nothing without a word: images at any depth (as torchvision's ImageFolder finds them), class
names from folder names (``_`` → space, a ``classnames`` mapping), and reader options that no reader takes."""
import argparse
import json
import os
from pathlib import Path

import pytest
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from fake_datasets import make_fake_dataset, write_images

from promptclip.config import build_config
from promptclip.data import load_dataset
from promptclip.data.base import IMAGE_EXTENSIONS, walk_images
from promptclip.data.check import check_dataset, dataset_stats, format_stats
from promptclip.data.commands import run_stats
from promptclip.errors import ConfigError, DataError


def fruit_folder(root: Path) -> Path:
    """The user's folder: 150 images, 70 of them in sub-folders of their class folders."""
    write_images(root / "red" / f"{i}.png" for i in range(30))
    write_images(root / "red" / "batch_a" / f"{i}.png" for i in range(20))
    write_images(root / "red" / "deep" / "deeper" / f"{i}.png" for i in range(30))
    write_images(root / "green_pear" / f"{i}.jpg" for i in range(50))
    write_images(root / "green_pear" / "old" / f"{i}.JPG" for i in range(20))
    return root


# ------------------------------------------------------------------------------------- images at any depth
def test_image_extensions_are_torchvisions():
    assert IMAGE_EXTENSIONS == IMG_EXTENSIONS


def test_nested_images_are_found_in_torchvisions_order(tmp_path):
    folder = fruit_folder(tmp_path / "fruit")
    ds = load_dataset("imagefolder", folder)
    items = ds.train + ds.val + ds.test
    assert len(items) == 150
    reference = ImageFolder(str(folder))
    assert sorted((i.path, i.label) for i in items) == sorted(reference.samples)
    walk = walk_images(folder / "red")
    assert [str(p) for p in walk.paths] == [p for p, label in reference.samples if label == 1]  # same order
    assert walk.nested == 50 and not walk.repeated and not walk.others
    assert f"70 of the 150 images in {folder} lie in sub-folders of their class folders" in " ".join(ds.notes)


def test_data_stats_and_check_say_how_many_images_came_from_sub_folders(tmp_path, capsys):
    folder = fruit_folder(tmp_path / "fruit")
    assert run_stats(argparse.Namespace(name="imagefolder", root=str(folder), classes=True, overrides=[])) == 0
    out = capsys.readouterr().out
    assert "train: 75" in out and "val: 30" in out and "test: 45" in out  # 50/20/30 of 150
    assert f"note: 70 of the 150 images in {folder} lie in sub-folders" in out
    report = check_dataset("imagefolder", folder)
    assert report.ok and sum(report.counts.values()) == 150
    assert any(w.startswith("70 of the 150 images") for w in report.warnings)


def test_data_stats_takes_reader_options(tmp_path, capsys):
    from promptclip.cli import main

    folder = fruit_folder(tmp_path / "fruit")
    assert main(["data", "stats", "imagefolder", "--root", str(folder), "classnames={red: red apple}"]) == 0
    assert "class names: green pear, red apple" in capsys.readouterr().out
    assert main(["data", "stats", "imagefolder", "--root", str(folder), "templat=a {}"]) == 2
    assert ("promptclip: error: Unknown option 'templat' in data.options of dataset 'imagefolder'. "
            "Did you mean 'template'?") in capsys.readouterr().err


def test_flat_folders_have_no_sub_folder_note(tmp_path):
    write_images(tmp_path / c / f"{i}.jpg" for c in ("a", "b") for i in range(3))
    ds = load_dataset("imagefolder", tmp_path)
    assert not any("sub-folders" in n for n in ds.notes)


def test_symlink_loop_and_second_link_are_skipped_with_a_note(tmp_path):
    folder = fruit_folder(tmp_path / "fruit")
    os.symlink(folder / "red", folder / "red" / "deep" / "loop")  # back up the tree: would walk forever
    os.symlink(folder / "red" / "batch_a", folder / "red" / "batch_b")  # a second link to one folder
    ds = load_dataset("imagefolder", folder)
    assert len(ds.train + ds.val + ds.test) == 150
    note = next(n for n in ds.notes if "linked folders" in n)
    assert "skipped 2 linked folders whose target was already read" in note
    assert os.path.join("red", "deep", "loop") in note


def test_looping_and_broken_file_links_are_skipped_with_a_note(tmp_path):
    """Image-named links that lead to no file (a loop of links, a broken link) would fail later with ELOOP/ENOENT."""
    folder = fruit_folder(tmp_path / "fruit")
    os.symlink(folder / "red" / "y.png", folder / "red" / "x.png")
    os.symlink(folder / "red" / "x.png", folder / "red" / "y.png")
    os.symlink(tmp_path / "gone.png", folder / "green_pear" / "z.jpg")
    os.symlink(folder / "red" / "0.png", folder / "green_pear" / "linked.jpg")  # a good link is an image
    ds = load_dataset("imagefolder", folder)
    paths = {i.path for i in ds.train + ds.val + ds.test}
    assert len(paths) == 151 and str(folder / "green_pear" / "linked.jpg") in paths
    note = next(n for n in ds.notes if "lead to no file" in n)
    assert "skipped 3 symbolic links" in note and os.path.join("red", "x.png") in note
    assert os.path.join("green_pear", "z.jpg") in note


def test_other_files_are_skipped_with_a_note_and_hidden_ones_silently(tmp_path):
    write_images(tmp_path / c / f"{i}.jpeg" for c in ("a", "b") for i in range(3))
    (tmp_path / "a" / "notes.txt").write_text("x")
    (tmp_path / "a" / "anim.gif").write_bytes(b"GIF89a")  # not in torchvision's list: ImageFolder skips it too
    (tmp_path / "b" / ".DS_Store").write_text("x")
    write_images([tmp_path / "b" / ".cache" / "0.jpg"])
    ds = load_dataset("imagefolder", tmp_path)
    assert len(ds.train + ds.val + ds.test) == 6
    note = next(n for n in ds.notes if "not images" in n)
    assert "skipped 2 files" in note and "a/anim.gif" in note and "a/notes.txt" in note


def test_a_class_with_images_only_in_hidden_folders_is_empty(tmp_path):
    write_images([tmp_path / "a" / "0.jpg", tmp_path / "b" / ".thumbs" / "0.jpg"])
    with pytest.raises(DataError, match=r"class 'b': the folder .*/b holds no images at any depth"):
        load_dataset("imagefolder", tmp_path)


def test_nested_images_in_train_and_test_folders(tmp_path):
    for split in ("train", "test"):
        write_images(tmp_path / split / c / "x" / f"{i}.png" for c in ("a", "b") for i in range(2))
    ds = load_dataset("imagefolder", tmp_path)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (4, 0, 4)
    assert sum("lie in sub-folders" in n for n in ds.notes) == 2  # train and test each say so


def test_nested_images_in_a_benchmark_class_folder_are_noted(tmp_path):
    make_fake_dataset("ImageNetSketch", tmp_path, n_per_class=2)
    images = tmp_path / "imagenet-sketch" / "images"
    first = sorted(p for p in images.iterdir() if p.is_dir())[0]
    write_images([first / "more" / "extra.JPEG"])
    ds = load_dataset("ImageNetSketch", tmp_path)
    assert any(n.startswith(f"1 of the {len(ds.test)} images in {images} lie in sub-folders") for n in ds.notes)
    assert str(first / "more" / "extra.JPEG") in {i.path for i in ds.test}


# ------------------------------------------------------------------------------------------------ class names
def test_underscores_become_spaces_and_paths_keep_the_folder(tmp_path):
    folder = fruit_folder(tmp_path / "fruit")
    ds = load_dataset("imagefolder", folder)
    assert ds.classnames == ["green pear", "red"]
    assert all(f"{os.sep}green_pear{os.sep}" in i.path for i in ds.train if i.label == 0)
    assert "class names: green pear, red" in format_stats(dataset_stats("imagefolder", folder))


def test_train_val_test_layout_keeps_folders_for_paths(tmp_path):
    write_images(tmp_path / s / c / "0.jpg" for s in ("train", "val") for c in ("big_cat", "dog"))
    ds = load_dataset("imagefolder", tmp_path, classnames={"dog": "puppy"})
    assert ds.classnames == ["big cat", "puppy"]
    assert [Path(i.path).parent.name for i in ds.val] == ["big_cat", "dog"]


@pytest.mark.parametrize("kind", ["dict", "yaml", "json", "txt"])
def test_classnames_mapping_renames(tmp_path, kind):
    folder = fruit_folder(tmp_path / "fruit")
    mapping = {"green_pear": "Conference pear", "red": "red apple"}
    spec = {"dict": mapping, "yaml": "names.yaml", "json": "names.json", "txt": "names.txt"}[kind]
    (folder / "names.yaml").write_text("green_pear: Conference pear\nred: red apple\n")
    (folder / "names.json").write_text(json.dumps(mapping))
    (folder / "names.txt").write_text("green_pear Conference pear\nred red apple\n")
    assert load_dataset("imagefolder", folder, classnames=spec).classnames == ["Conference pear", "red apple"]


def test_classnames_mapping_may_rename_some(tmp_path):
    folder = fruit_folder(tmp_path / "fruit")
    assert load_dataset("imagefolder", folder, classnames={"red": "red apple"}).classnames == ["green pear",
                                                                                             "red apple"]


def test_classnames_entry_for_a_missing_folder_names_the_nearest(tmp_path):
    folder = fruit_folder(tmp_path / "fruit")
    with pytest.raises(DataError, match=r"classnames renames the folder 'gren_pear', which is not a class folder of "
                                        r".*fruit\. Did you mean 'green_pear'\?"):
        load_dataset("imagefolder", folder, classnames={"gren_pear": "pear"})


def test_bad_classnames_specs(tmp_path):
    folder = fruit_folder(tmp_path / "fruit")
    with pytest.raises(DataError, match=r"names.yaml does not exist: classnames must be a mapping"):
        load_dataset("imagefolder", folder, classnames="names.yaml")
    (folder / "list.yaml").write_text("- pear\n- apple\n")
    with pytest.raises(DataError, match=r"list.yaml must hold a mapping \{folder: class name\}, not list"):
        load_dataset("imagefolder", folder, classnames="list.yaml")
    (folder / "one.txt").write_text("green_pear\n")
    with pytest.raises(DataError, match=r"one.txt cannot be read as a mapping .*'<folder> <class name>'"):
        load_dataset("imagefolder", folder, classnames="one.txt")
    with pytest.raises(DataError, match=r"The class folders \['green_pear', 'red'\] of .* all get the class name "
                                        r"'fruit'"):
        load_dataset("imagefolder", folder, classnames={"green_pear": "fruit", "red": "fruit"})
    with pytest.raises(DataError, match=r"must map folder names to non-empty class names: 'red': 3"):
        load_dataset("imagefolder", folder, classnames={"red": 3})


def test_listfile_classnames_as_a_mapping_or_yaml_list(tmp_path):
    write_images(tmp_path / f"{i}.jpg" for i in range(2))
    (tmp_path / "train.csv").write_text("0.jpg,0\n1.jpg,1\n")
    with pytest.raises(DataError, match=r"classnames must be a list of names in label order or a file of them, "
                                        r"not dict"):
        load_dataset("listfile", tmp_path, train="train.csv", classnames={"0": "cat"})
    (tmp_path / "names.yaml").write_text("- cat\n- dog\n")  # once read as the lines "- cat", "- dog"
    assert load_dataset("listfile", tmp_path, train="train.csv", classnames="names.yaml").classnames == ["cat", "dog"]


# -------------------------------------------------------------------------------------- unknown reader options
def test_unknown_imagefolder_option_is_refused_when_the_config_is_built():
    with pytest.raises(ConfigError, match=r"Unknown option 'templat' in data.options of dataset 'imagefolder'\. "
                                          r"Did you mean 'template'\? Valid options: template, seed, classnames\."):
        build_config([], ['data.options={templat: "a photo of {}, a fruit."}'])
    assert build_config([], ["data.options.template=a photo of {}, a fruit."]).data.options == {
        "template": "a photo of {}, a fruit."}


def test_unknown_benchmark_option_is_refused_when_the_config_is_built():
    with pytest.raises(ConfigError, match=r"Unknown option 'split_sed' in data.options of dataset "
                                          r"'DescribableTextures'\. Did you mean 'split_seed'\?"):
        build_config([], ["data.name=DescribableTextures", "data.options.split_sed=2"])
    with pytest.raises(ConfigError, match=r"Unknown option 'check_file' .* 'ImageNet'\. Valid options: none\."):
        build_config([], ["data.name=ImageNet", "data.options.check_file=false"])
    assert build_config([], ["data.name=FGVCAircraft", "data.options.check_files=false"]).data.options == {
        "check_files": False}


def test_unknown_options_are_refused_when_read(tmp_path):
    folder = fruit_folder(tmp_path / "fruit")
    with pytest.raises(ConfigError, match=r"Unknown option 'sed' in data.options of dataset 'imagefolder'\. Did you "
                                          r"mean 'seed'\?"):
        load_dataset("imagefolder", folder, sed=3)
    with pytest.raises(ConfigError, match=r"Unknown option 'tran' .* 'listfile'\. Did you mean 'train'\?"):
        load_dataset("listfile", folder, tran="train.csv")


def test_unknown_keys_of_a_dataset_description(tmp_path):
    folder = fruit_folder(tmp_path / "fruit")
    description = tmp_path / "fruit.yaml"
    description.write_text(f"reader: imagefolder\nroot: {folder}\nclassname: {{red: red apple}}\n")
    with pytest.raises(DataError, match=r"Unknown option 'classname' in the dataset description .*fruit.yaml\. Did "
                                        r"you mean 'classnames'"):
        load_dataset(description, None)
    description.write_text(f"reader: imagefolder\nroot: {folder}\nclassnames: {{red: red apple}}\n")
    assert load_dataset(description, None).classnames == ["green pear", "red apple"]
    with pytest.raises(ConfigError, match=r"Unknown option 'seeds' in data.options of the dataset described in "
                                          r".*fruit.yaml\. Did you mean 'seed'\?"):
        load_dataset(description, None, seeds=2)
