"""Custom datasets without code: list files, YAML descriptions, plugin readers."""
import json
from pathlib import Path

import pytest

from fake_datasets import write_images
from promptclip.data import DATASETS, Dataset, Item, load_dataset
from promptclip.errors import DataError, UnknownNameError


@pytest.fixture
def birds(tmp_path):
    """A dataset folder with images of three birds (3 each) and no list files yet."""
    folder = tmp_path / "birds"
    write_images(folder / "img" / f"{c}_{i}.jpg" for c in ("robin", "wren", "owl") for i in range(3))
    return folder


def write_csv(path: Path, rows, header=True):
    path.write_text(("path,label\n" if header else "") + "".join(f"{p},{label}\n" for p, label in rows))
    return path.name


def test_csv_lists_with_class_name_labels(birds):
    rows = [(f"img/{c}_{i}.jpg", c) for c in ("robin", "wren", "owl") for i in range(3)]
    write_csv(birds / "train.csv", [r for r in rows if not r[0].endswith("_2.jpg")])
    write_csv(birds / "val.csv", [r for r in rows if r[0].endswith("_2.jpg")], header=False)
    ds = load_dataset("listfile", birds, train="train.csv", val="val.csv", template="a photo of a {}, a bird.")
    assert ds.classnames == ["owl", "robin", "wren"]  # sorted names when no class list is given
    assert (len(ds.train), len(ds.val)) == (6, 3) and ds.test == ds.val
    assert any("no test list" in n for n in ds.notes)
    assert Item(str(birds / "img" / "owl_0.jpg"), 0) in ds.train
    assert ds.template == "a photo of a {}, a bird." and ds.name == "birds" and ds.root == birds


def test_json_list_with_index_labels_and_class_file(birds):
    (birds / "classes.txt").write_text("robin\nwren\nowl\n")
    (birds / "test.json").write_text(json.dumps([["img/robin_0.jpg", 0], {"path": "img/owl_1.jpg", "label": "owl"}]))
    ds = load_dataset("listfile", birds, test="test.json", classnames="classes.txt")
    assert ds.classnames == ["robin", "wren", "owl"] and not ds.train
    assert [i.label for i in ds.test] == [0, 2]


def test_index_labels_need_class_names(birds):
    write_csv(birds / "train.csv", [("img/robin_0.jpg", 0)])
    with pytest.raises(DataError, match="class indices but no class names.*classnames"):
        load_dataset("listfile", birds, train="train.csv")


def test_labels_outside_the_class_list(birds):
    (birds / "classes.txt").write_text("robin\nwren\n")
    write_csv(birds / "train.csv", [("img/robin_0.jpg", "robin"), ("img/owl_0.jpg", "owl")])
    with pytest.raises(DataError, match=r"labels \['owl'\].*outside the class list of 2 classes"):
        load_dataset("listfile", birds, train="train.csv", classnames="classes.txt")
    write_csv(birds / "train.csv", [("img/robin_0.jpg", 0), ("img/wren_0.jpg", 1), ("img/owl_0.jpg", 7)])
    with pytest.raises(DataError, match="1 train labels are outside the class list of 2 classes, e.g. 7"):
        load_dataset("listfile", birds, train="train.csv", classnames="classes.txt")


def test_class_without_training_images(birds):
    (birds / "classes.txt").write_text("robin\nwren\nowl\n")
    write_csv(birds / "train.csv", [("img/robin_0.jpg", 0), ("img/wren_0.jpg", 1)])
    with pytest.raises(DataError, match=r"1 classes have no training images: 'owl' \(2\)"):
        load_dataset("listfile", birds, train="train.csv", classnames="classes.txt")


def test_list_naming_missing_images(birds):
    write_csv(birds / "train.csv", [("img/robin_0.jpg", "robin"), ("img/robin_9.jpg", "robin"),
                                    ("img/emu_0.jpg", "emu")])
    with pytest.raises(DataError, match=r"names 2 of 3 images that do not exist .*img/robin_9.jpg, img/emu_0.jpg"):
        load_dataset("listfile", birds, train="train.csv")


def test_malformed_list_row(birds):
    (birds / "train.csv").write_text("img/robin_0.jpg\n")
    with pytest.raises(DataError, match=r"train.csv, line 1: expected 'path,label'"):
        load_dataset("listfile", birds, train="train.csv")


def test_yaml_description_by_path(birds, tmp_path):
    write_csv(birds / "train.csv", [(f"img/{c}_0.jpg", c) for c in ("robin", "wren", "owl")])
    write_csv(birds / "test.csv", [(f"img/{c}_1.jpg", c) for c in ("robin", "wren", "owl")])
    description = tmp_path / "configs" / "birds.yaml"
    description.parent.mkdir()
    description.write_text("name: Birds3\nroot: birds\ntrain: train.csv\ntest: test.csv\n"
                           "classnames: [robin, wren, owl]\ntemplate: 'a photo of a {}, a type of bird.'\n")
    ds = load_dataset(str(description), tmp_path)  # root: relative to the data root
    assert isinstance(ds, Dataset) and ds.name == "Birds3" and ds.root == birds
    assert ds.classnames == ["robin", "wren", "owl"] and len(ds.train) == len(ds.test) == 3
    assert ds.template == "a photo of a {}, a type of bird."


def test_yaml_naming_another_reader(birds, tmp_path):
    description = birds / "birds.yaml"
    description.write_text("reader: imagefolder\nroot: .\n")
    ds = load_dataset(description, None)  # no data root: relative to the YAML file's folder
    assert ds.classnames == ["img"] and ds.name == "birds"


def test_bad_yaml_descriptions(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("reader: [unclosed\n")
    with pytest.raises(DataError, match="bad.yaml is not valid YAML"):
        load_dataset(bad, tmp_path)
    bad.write_text("reader: listfiel\n")
    with pytest.raises(UnknownNameError, match="Did you mean 'listfile'"):
        load_dataset(bad, tmp_path)
    with pytest.raises(DataError, match="missing.yaml does not exist"):
        load_dataset(tmp_path / "missing.yaml", tmp_path)


def test_plugin_reader_registers_by_name(tmp_path):
    @DATASETS.register("TestPluginToyShapes")
    def toy(root, split_dir=None, **options):
        item = Item(str(Path(root) / "a.jpg"), 0)
        return Dataset("ToyShapes", ["circle"], [item], [], [item], Path(root))

    ds = load_dataset("testpluginToyShapes", tmp_path)
    assert ds.name == "ToyShapes" and ds.classnames == ["circle"]
