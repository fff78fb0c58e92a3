"""Bad input gives a DataError that names the problem and the way out; ``data check`` and ``data stats``."""
import json
import shutil

import pytest

from fake_datasets import make_fake_dataset, make_fake_root, write_lines
from promptclip.data import Item, load_dataset
from promptclip.data.check import check_datasets, dataset_stats, format_reports, verify_images
from promptclip.cli import main
from promptclip.errors import DataError, UnknownNameError

CHECKED = ["DescribableTextures", "EuroSAT", "Caltech101", "FGVCAircraft", "ImageNetA"]


def run(*argv):
    """The command's exit status through the CLI's entry point, as a shell sees it."""
    return main(list(map(str, argv)))


# ---------------------------------------------------------------- bad input

def test_missing_data_root(tmp_path):
    with pytest.raises(DataError, match=rf"Data root {tmp_path / 'nowhere'} does not exist.*<data root>/dtd/.*"
                                        r"datasets/DATASETS.md"):
        load_dataset("dtd", tmp_path / "nowhere")


def test_missing_dataset_folder_with_near_miss(tmp_path):
    (tmp_path / "DTD").mkdir()
    with pytest.raises(DataError, match=rf"DescribableTextures is missing: expected the folder {tmp_path / 'dtd'}\. "
                                        r"There is a folder .*DTD: rename it to dtd.*DATASETS.md \(section "
                                        r"DescribableTextures\)"):
        load_dataset("DescribableTextures", tmp_path)


def test_image_folder_one_level_too_deep(tmp_path):
    make_fake_dataset("DescribableTextures", tmp_path / "x", n_per_class=1)
    shutil.move(str(tmp_path / "x" / "dtd"), str(tmp_path / "dtd" / "dtd"))
    with pytest.raises(DataError, match=r"expected the folder .*dtd/images\. Found .*dtd/dtd/images: move its "
                                        r"contents up one level"):
        load_dataset("dtd", tmp_path)


def test_split_file_naming_missing_images(tmp_path):
    folder = make_fake_dataset("Caltech101", tmp_path)
    (folder / "101_ObjectCategories" / "accordion" / "image_0001.jpg").unlink()
    shutil.rmtree(folder / "101_ObjectCategories" / "airplanes")
    with pytest.raises(DataError, match=r"split_zhou_Caltech101.json names 11 of 50 images that do not exist under "
                                        r".*e\.g\. accordion/image_0001.jpg, airplanes/image_0001.jpg"):
        load_dataset("Caltech101", tmp_path)


def test_split_file_without_a_class_in_train(tmp_path):
    folder = make_fake_dataset("Food101", tmp_path)
    split_file = folder / "split_zhou_Food101.json"
    split = json.loads(split_file.read_text())
    split["train"] = [e for e in split["train"] if e[1] != 1]
    split_file.write_text(json.dumps(split))
    with pytest.raises(DataError, match=r"1 classes have no training images: 'baby_back_ribs' \(1\)"):
        load_dataset("Food101", tmp_path)


def test_broken_split_files(tmp_path):
    folder = make_fake_dataset("Food101", tmp_path)
    split_file = folder / "split_zhou_Food101.json"
    split_file.write_text('{"train": [')
    with pytest.raises(DataError, match="split_zhou_Food101.json cannot be read as JSON.*delete it"):
        load_dataset("Food101", tmp_path)
    split_file.write_text(json.dumps({"train": [["a.jpg", 0, "x"], ["b.jpg", 0, "y"]], "val": [], "test": []}))
    with pytest.raises(DataError, match="label 0 is called both 'x' and 'y'"):
        load_dataset("Food101", tmp_path)
    split_file.write_text(json.dumps({"train": [["a.jpg", "0", "x"]], "val": [], "test": []}))
    with pytest.raises(DataError, match=r"the train entry \['a.jpg', '0', 'x'\] is not \[path, label, classname\]"):
        load_dataset("Food101", tmp_path)


def test_no_split_file_and_nothing_to_generate_it_from(tmp_path):
    folder = make_fake_dataset("OxfordPets", tmp_path, with_split=False)
    shutil.rmtree(folder / "annotations")
    with pytest.raises(DataError, match=r"split_zhou_OxfordPets.json does not exist and no split can be generated "
                                        r"without .*annotations/trainval.txt.*Download split_zhou_OxfordPets.json"):
        load_dataset("OxfordPets", tmp_path)


def test_aircraft_list_naming_an_unknown_variant(tmp_path):
    folder = make_fake_dataset("FGVCAircraft", tmp_path)
    with open(folder / "images_variant_test.txt", "a") as f:
        f.write("1000001 Boeing 999\n")
    with pytest.raises(DataError, match=r"images_variant_test.txt names the class 'Boeing 999', which is not in the "
                                        r"class list \(4 classes\)"):
        load_dataset("FGVCAircraft", tmp_path)


def test_empty_class_folder(tmp_path):
    folder = make_fake_dataset("DescribableTextures", tmp_path, with_split=False)
    for image in (folder / "images" / "blotchy").iterdir():
        image.unlink()
    with pytest.raises(DataError, match=r"class 'blotchy': the folder .*images/blotchy holds no images.*"
                                        r"re-extracting the dataset archive") as error:
        load_dataset("DescribableTextures", tmp_path)
    assert "remove" not in str(error.value)  # a benchmark class is restored, never dropped


def test_unknown_dataset_name_suggests_and_lists(tmp_path):
    with pytest.raises(UnknownNameError, match=r"Unknown dataset 'DescribableTexture'\. Did you mean "
                                               r"'describabletextures'.*Known datasets: .*eurosat.*imagenetr"):
        load_dataset("DescribableTexture", tmp_path)


def test_verify_images_finds_unreadable_files(tmp_path):
    folder = make_fake_dataset("EuroSAT", tmp_path, n_per_class=2)
    good = folder / "2750" / "Forest" / "image_0001.jpg"
    truncated = folder / "2750" / "Forest" / "image_0002.jpg"
    truncated.write_bytes(good.read_bytes()[:-60])
    garbage = folder / "2750" / "SeaLake" / "image_0001.jpg"
    garbage.write_bytes(b"not an image")
    assert verify_images([good, truncated, garbage]) == [str(truncated), str(garbage)]
    assert verify_images([Item(str(good), 0), Item(str(garbage), 1), Item(str(good), 0)]) == [str(garbage)]


# ---------------------------------------------------------------- data check / data stats

@pytest.fixture
def root(tmp_path):
    return make_fake_root(tmp_path / "data", CHECKED)


def test_check_reports_found_against_expected(root):
    reports = {r.name: r for r in check_datasets(root, CHECKED)}
    assert all(r.status == "ok" and r.ok for r in reports.values())
    dtd = reports["DescribableTextures"]
    assert (dtd.classes, dtd.expected_classes) == (3, 47)
    assert dtd.counts == {"train": 15, "val": 6, "test": 9}
    assert dtd.expected == {"train": 2820, "val": 1128, "test": 1692}
    table = format_reports(list(reports.values()))
    assert "DescribableTextures  ok" in table and "15/2820 !" in table and "0/0" in table
    assert "counts differ from the published dataset: 3 classes (expected 47)" in table


def test_check_reports_a_broken_tree_precisely(root):
    shutil.rmtree(root / "eurosat" / "2750")
    (root / "caltech-101" / "101_ObjectCategories" / "accordion" / "image_0003.jpg").unlink()
    (root / "fgvc_aircraft" / "variants.txt").unlink()
    (root / "dtd" / "split_zhou_DescribableTextures.json").unlink()
    (root / "imagenet-adversarial" / "imagenet-a" / "n01498041" / "img_0001.jpg").write_bytes(b"\xff\xd8broken")
    reports = {r.name: r for r in check_datasets(root, CHECKED + ["OxfordPets"], verify=True)}
    assert reports["OxfordPets"].status == "missing"
    assert "expected the folder" in reports["OxfordPets"].problems[0]
    assert reports["EuroSAT"].status == "broken"
    assert any(f"expected the folder {root / 'eurosat' / '2750'}" in p for p in reports["EuroSAT"].problems)
    assert any("names 1 of 50 images that do not exist" in p and "accordion/image_0003.jpg" in p
               for p in reports["Caltech101"].problems)
    assert reports["FGVCAircraft"].problems == [f"missing file {root / 'fgvc_aircraft' / 'variants.txt'}"]
    dtd = reports["DescribableTextures"]
    assert dtd.ok and any("split_zhou_DescribableTextures.json does not exist: generated" in w and "not saved" in w
                          for w in dtd.warnings)
    assert not list((root / "dtd").glob("split_zhou*"))  # checking never writes into the data tree
    a = reports["ImageNetA"]
    assert a.unreadable == [str(root / "imagenet-adversarial" / "imagenet-a" / "n01498041" / "img_0001.jpg")]
    assert a.status == "broken" and "1 images cannot be read" in a.problems[0]


def test_data_check_command(root, capsys):
    assert run("data", "check", root, "dtd", "EuroSAT") == 0
    out = capsys.readouterr().out
    assert "DescribableTextures" in out and "EuroSAT" in out and "ImageNetA" not in out
    shutil.rmtree(root / "eurosat" / "2750")
    assert run("data", "check", root, "dtd", "EuroSAT") == 1
    assert "EuroSAT: ERROR: EuroSAT: expected the folder" in capsys.readouterr().out
    assert run("data", "check", root / "absent") == 2  # an error, reported like every command's
    err = capsys.readouterr().err
    assert err.startswith("promptclip: error: ") and "does not exist" in err


def test_data_check_all_lists_missing_without_failing(tmp_path, capsys):
    root = make_fake_root(tmp_path, ["DescribableTextures", "ImageNet"], n_per_class=2)
    assert run("data", "check", root) == 0
    out = capsys.readouterr().out
    assert "ImageNet             ok" in out and "ImageNetV2: missing: ImageNetV2 is missing" in out
    assert "ERROR" not in out and "rename" not in out  # another dataset's folder is no near miss
    assert run("data", "check", root, "ImageNetA") == 1  # named explicitly: missing is a failure


def test_data_stats_command(root, capsys):
    assert run("data", "stats", "EuroSAT", "--root", root) == 0
    out = capsys.readouterr().out
    assert "classes: 4/10 !" in out and "train: 20/13500 !" in out
    assert "Annual Crop Land, Forest, Herbaceous Vegetation Land, Sea or Lake" in out
    assert run("data", "stats", "Food101", "--root", root) == 2
    err = capsys.readouterr().err
    assert err.startswith("promptclip: error: ") and "Food101 is missing" in err
    stats = dataset_stats("ImageNetA", root)
    assert stats["counts"] == {"train": 0, "val": 0, "test": 30} and stats["classnames"][0] == "stingray"


def test_data_command_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "check", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "--verify" in help_text and "data root" in help_text
    with pytest.raises(SystemExit):
        main(["data"])  # a sub-command is required
    assert "check,stats" in capsys.readouterr().err


def test_check_with_missing_split_and_raw_files(tmp_path):
    folder = make_fake_dataset("UCF101", tmp_path, with_split=False)
    write_lines(folder / "ucfTrainTestlist" / "classInd.txt", [])
    (folder / "ucfTrainTestlist" / "testlist01.txt").unlink()
    [report] = check_datasets(tmp_path, ["ucf"])
    assert report.name == "UCF101" and report.status == "broken"
    assert "ucfTrainTestlist/testlist01.txt" in report.problems[0] and "download the split file" in report.problems[0]
