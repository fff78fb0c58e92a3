"""One run key: the folder, the manifest, a worker's file and the report all name a run by :class:`RunKey`, read back
from the JSON it wrote (never from a folder name); files written before the key existed still read."""
import json

import pytest

from promptclip import run_files, runs

POINT = {"optim.lr": 0.002, "optim.betas": [0.9, 0.999]}


def test_the_key_is_the_folder_and_its_json_reads_back():
    key = runs.RunKey("coop", "ViT-B-16_openai", "EuroSAT", "all", 16, 1, POINT)
    assert key.grid == (("optim.lr", 0.002), ("optim.betas", [0.9, 0.999])) and key.point == POINT
    assert key.path("r") == runs.RunKey("coop", "ViT-B-16_openai", "EuroSAT", "all", 16, 1).path("r").parent / \
        runs.grid_label(POINT) / "seed_1"  # the grid point one level above the seed
    assert runs.RunKey.from_json(json.loads(json.dumps(key.to_json())), "here") == key
    assert hash(runs.RunKey.from_json(key.to_json(), "here")) == hash(key)
    plain = runs.RunKey("zeroshot", "ViT-B-16_openai", "EuroSAT", "all", 0, 1)
    assert str(plain.path("r")) == "r/zeroshot/ViT-B-16_openai/EuroSAT/all/shots_0/seed_1" and plain.setting == ""


def test_files_written_before_the_key_still_read_and_damage_is_named(tmp_path):
    entry = {"id": "x", "method": "coop", "dataset": "EuroSAT", "subsample": "all", "shots": 4, "seed": 2,
             "model": "ViT-B-16", "pretrained": "openai", "dir": "x"}  # a manifest entry of an earlier promptclip
    assert runs.RunKey.from_json(entry, "m") == runs.RunKey("coop", "ViT-B-16_openai", "EuroSAT", "all", 4, 2)
    with pytest.raises(runs.CorruptFile, match="m does not name its run: shots is 4, not a whole number"):
        runs.RunKey.from_json({**entry, "shots": "4"}, "m")
    result = {**entry, "test": {"accuracy": 50.0}}
    assert run_files.result_key(result, tmp_path) == runs.RunKey.from_json(entry, "m")
    key = runs.RunKey("coop", "ViT-B-16_openai", "EuroSAT-1a2b3c", "all", 4, 2, {"optim.lr": 0.1})
    assert run_files.result_key({**result, "key": key.to_json()}, tmp_path) == key  # the key wins over the fields
