"""A shots shortfall travels with the run: stored with the draw, logged and recorded by every run that uses it,
counted among the classes in use."""
import json
import logging

import pytest
from PIL import Image

from promptclip import runs
from promptclip.config import build_config
from promptclip.engine import run

#: training images per class; with 4 shots, ``a`` and ``d`` fall short; base (sorted labels' first half) is a, b
TRAIN = {"a": 2, "b": 5, "c": 5, "d": 1}


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    root = tmp_path_factory.mktemp("uneven") / "images"
    for cls, n in TRAIN.items():
        for split, count in (("train", n), ("test", 3)):
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (8, 8), (40 * i, 60 * len(cls), ord(cls))).save(root / split / cls / f"{i}.png")
    return root


def config(root, tmp_path, preset="coop", **changes):
    settings = {"data.root": root, "model.name": "tiny-vit", "model.pretrained": "null", "data.shots": 4,
                "train.epochs": 1, "train.batch_size": 4, "train.device": "cpu",
                "output.root": tmp_path / "runs", "output.cache_dir": tmp_path / "cache", **changes}
    return build_config([preset], [f"{k}={v}" for k, v in settings.items()])


def warnings_in(path):
    return [line for line in path.read_text().splitlines() if "fewer training images than" in line]


def test_every_run_on_a_stored_draw_logs_and_records_the_shortfall(uneven, tmp_path, caplog):
    first = config(uneven, tmp_path)
    result = run(first, progress=False)
    expected = {"shots": 4, "of": 4, "classes": {"a": 2, "d": 1}}
    assert result["shortfall"] == expected
    (draw,) = (tmp_path / "cache" / "fewshot").rglob("shots_4-seed_1.json")
    assert json.loads(draw.read_text())["shortfall"] == {"0": 2, "3": 1}  # stored with the draw, by label
    stored = draw.read_bytes()

    second = config(uneven, tmp_path, preset="linear_probe")  # another method, the same (cached) draw
    with caplog.at_level(logging.WARNING, logger="promptclip"):
        again = run(second, progress=False)
    assert draw.read_bytes() == stored  # read back, not drawn again
    assert again["shortfall"] == expected
    message = ("2 of the 4 classes in use have fewer training images than the 4 shots ('a' has 2, 'd' has 1); "
               "using all of their images.")
    assert message in caplog.text
    for cfg in (first, second):
        log_txt = runs.default_run_dir(cfg) / runs.LOG
        assert len(warnings_in(log_txt)) == 1 and message in warnings_in(log_txt)[0]
    assert run(second, progress=False)["shortfall"] == expected  # a finished run's result keeps it


@pytest.mark.slow
def test_base_to_new_counts_only_the_classes_in_use(uneven, tmp_path):
    base = run(config(uneven, tmp_path, **{"data.subsample": "base"}), progress=False)
    assert base["num_classes"] == 2 and base["shortfall"] == {"shots": 4, "of": 2, "classes": {"a": 2}}
    new = run(config(uneven, tmp_path, **{"data.subsample": "new"}), progress=False)
    assert new["shortfall"] == {"shots": 4, "of": 2, "classes": {"d": 1}}


def test_no_shortfall_no_key(uneven, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="promptclip"):
        result = run(config(uneven, tmp_path, **{"data.shots": 1}), progress=False)
    assert "shortfall" not in result and "fewer training images" not in caplog.text


def test_a_draw_written_before_draws_recorded_it_still_tells(uneven, tmp_path):
    cfg = config(uneven, tmp_path, **{"train.epochs": 0})
    run(cfg, progress=False)
    (draw,) = (tmp_path / "cache" / "fewshot").rglob("shots_4-seed_1.json")
    old = json.loads(draw.read_text())
    del old["shortfall"]
    draw.write_text(json.dumps(old))
    again = run(config(uneven, tmp_path, **{"train.epochs": 0, "output.dir": tmp_path / "second"}), progress=False)
    assert again["shortfall"] == {"shots": 4, "of": 4, "classes": {"a": 2, "d": 1}}


def test_a_damaged_shortfall_in_a_draw_is_named(uneven, tmp_path):
    from promptclip.errors import DataError

    run(config(uneven, tmp_path, **{"train.epochs": 0}), progress=False)
    (draw,) = (tmp_path / "cache" / "fewshot").rglob("shots_4-seed_1.json")
    damaged = json.loads(draw.read_text())
    damaged["shortfall"] = {"zero": "two"}
    draw.write_text(json.dumps(damaged))
    with pytest.raises(DataError, match="is damaged: its shortfall.*Delete that file"):
        run(config(uneven, tmp_path, **{"train.epochs": 0, "output.dir": tmp_path / "second"}), progress=False)
