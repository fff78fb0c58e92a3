"""A run that fails before it trains leaves no run folder and no lock; what others put there stays."""
import json

import pytest

from bench_fixtures import coloured_folder
from promptclip import runs
from promptclip.config import build_config
from promptclip.engine import run
from promptclip.engine import runner
from promptclip.errors import PromptclipError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return coloured_folder(tmp_path_factory.mktemp("colours") / "images")


def config(root, tmp_path, **changes):
    settings = {"data.root": root, "model.name": "tiny-vit", "model.pretrained": "null", "data.shots": 2,
                "train.epochs": 2, "train.batch_size": 4, "train.device": "cpu", "text.n_ctx": 4,
                "output.root": tmp_path / "runs", "output.cache_dir": tmp_path / "cache", **changes}
    return build_config(["coop"], [f"{k}={v}" for k, v in settings.items()])


def files_under(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


@pytest.mark.parametrize("problem", ["data.root", "weights", "model build"])
def test_a_run_that_fails_before_training_leaves_nothing(folder, tmp_path, problem):
    changes, message = {"data.root": ({"data.root": tmp_path / "typo"}, "typo"),
                        "weights": ({"model.pretrained": tmp_path / "absent.pt"}, "absent.pt"),
                        "model build": ({"text.init": "'a photo of a'", "text.n_ctx": 2}, "n_ctx=2")}[problem]
    cfg = config(folder, tmp_path, **changes)
    with pytest.raises(PromptclipError, match=message):
        run(cfg, progress=False)
    assert not (tmp_path / "runs").exists(), files_under(tmp_path / "runs")


def test_an_interrupt_before_training_leaves_nothing_and_others_runs_stay(folder, tmp_path, monkeypatch):
    done = run(config(folder, tmp_path, **{"train.epochs": 1}), progress=False)
    before = files_under(tmp_path / "runs")

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "load_backbone", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(config(folder, tmp_path, **{"seed": 2}), progress=False)
    assert files_under(tmp_path / "runs") == before  # seed_1 and the folders above it stay; seed_2 is gone
    assert done["test"]["accuracy"] >= 0


def test_a_sweeps_files_and_folder_stay(folder, tmp_path):
    cfg = config(folder, tmp_path, **{"data.root": tmp_path / "typo"})
    run_dir = runs.default_run_dir(cfg)
    run_dir.mkdir(parents=True)
    (run_dir / runs.SWEEP_SPEC).write_text(json.dumps({"id": "x"}))
    (run_dir / runs.SWEEP_LOG).write_text("started\n")
    with pytest.raises(PromptclipError, match="typo"):
        run(cfg, progress=False)
    assert sorted(p.name for p in run_dir.iterdir()) == sorted([runs.SWEEP_LOG, runs.SWEEP_SPEC])


def test_an_interrupted_run_that_fails_to_resume_keeps_its_work(folder, tmp_path, monkeypatch):
    cfg = config(folder, tmp_path)

    def stop(epoch):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(cfg, progress=False, on_epoch_end=stop)
    run_dir = runs.default_run_dir(cfg)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and not p.name.startswith(".lock")}
    assert (run_dir / runs.CHECKPOINT) in before and (run_dir / runs.IDENTITY) in before

    def missing(*args):
        raise PromptclipError("weights missing")

    monkeypatch.setattr(runner, "load_backbone", missing)
    with pytest.raises(PromptclipError, match="weights missing"):
        run(cfg, progress=False)
    for path, data in before.items():
        assert path.read_bytes() == data or path.name == runs.LOG, path
    monkeypatch.undo()
    assert run(cfg, progress=False)["test"]["num_images"] > 0  # and it resumes


def test_a_failed_run_in_a_given_existing_folder_keeps_the_folder(folder, tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    with pytest.raises(PromptclipError):
        run(config(folder, tmp_path, **{"output.dir": target, "model.pretrained": tmp_path / "absent.pt"}),
            progress=False)
    assert target.is_dir() and files_under(target) == []
