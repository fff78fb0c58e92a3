"""No write leaves its folder: names read from a sweep manifest are checked before the report writes anything, and a
run's files are never read or written through symbolic links (a link is named; --replace removes the link only)."""
import json

import pytest

from bench_fixtures import coloured_folder
from promptclip import run_files, runs
from promptclip.bench.report import write_report
from promptclip.cli import main
from promptclip.config import build_config
from promptclip.engine import evaluate_run, run

OVERRIDES = ["model.name=tiny-vit", "model.pretrained=null", "data.shots=2", "train.epochs=1", "train.device=cpu",
             "text.n_ctx=4"]


def tree(root):
    return sorted((str(p.relative_to(root)), p.read_bytes() if p.is_file() else b"") for p in root.rglob("*"))


@pytest.mark.parametrize("protocol", ["../../X", "/tmp/X", "other"])
def test_a_manifest_naming_another_protocol_writes_nothing_outside_and_is_named(tmp_path, protocol):
    sweep = tmp_path / "a" / "b" / "sweep"
    sweep.mkdir(parents=True)
    manifest = sweep / "protocol-few_shot.json"
    manifest.write_text(json.dumps({"protocol": protocol, "kind": "few_shot", "runs": []}))
    outside = tree(tmp_path / "a")
    report = write_report(sweep, plots=False)
    assert [p for p in tree(tmp_path / "a") if p not in outside and not p[0].startswith("b/sweep/report")] == []
    assert sorted(p.name for p in (sweep / "report").iterdir()) == ["report.md"]
    (problem,) = report.missing
    assert str(manifest) in problem and "Rerun the bench command" in problem
    assert str(manifest) in report.markdown.read_text()


@pytest.fixture
def finished(tmp_path):
    folder = coloured_folder(tmp_path / "images")
    cfg = build_config(["coop"], [*OVERRIDES, f"data.root={folder}", f"output.root={tmp_path / 'runs'}",
                                  f"output.cache_dir={tmp_path / 'cache'}"])
    run(cfg, progress=False)
    return cfg, runs.default_run_dir(cfg)


def test_a_linked_log_is_refused_and_replace_removes_only_the_link(finished, tmp_path, capsys):
    cfg, run_dir = finished
    target = tmp_path / "elsewhere.txt"
    target.write_text("not the run's\n")
    (run_dir / runs.LOG).unlink()
    (run_dir / runs.LOG).symlink_to(target)
    args = ["train", "-c", "coop", *OVERRIDES, f"data.root={cfg.data.root}", f"output.root={tmp_path / 'runs'}",
            f"output.cache_dir={tmp_path / 'cache'}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{run_dir / runs.LOG} is a symbolic link (to {target})" in err and "--replace" in err
    assert target.read_text() == "not the run's\n"
    assert main([*args, "--replace"]) == 0  # the advised fix
    assert target.read_text() == "not the run's\n"
    assert not (run_dir / runs.LOG).is_symlink() and (run_dir / runs.LOG).read_text()
    assert run_files.read_result(run_dir)["test"]["accuracy"] >= 0


def test_linked_checkpoint_or_evals_folders_are_refused(finished, tmp_path):
    cfg, run_dir = finished
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run_dir / runs.EVALS).symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(runs.CorruptFile, match="evals is a symbolic link"):
        evaluate_run(run_dir, ["data.subsample=all"], progress=False, force=True)
    assert list(elsewhere.iterdir()) == []
    (run_dir / runs.EVALS).unlink()
    (run_dir / runs.CHECKPOINT_DIR).symlink_to(elsewhere, target_is_directory=True)
    state = run_files.run_state(run_dir, runs.Identity.of(cfg))
    assert state.status == "corrupt" and "checkpoint is a symbolic link" in state.problem
    run(cfg, progress=False, replace=True)
    assert elsewhere.is_dir() and not (run_dir / runs.CHECKPOINT_DIR).exists()
    assert run_files.run_state(run_dir, runs.Identity.of(cfg)).status == "done"
