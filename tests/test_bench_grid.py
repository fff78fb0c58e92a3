"""Per-dataset tuning: a protocol's grid becomes one run per setting (each in its own folder), each run is evaluated
on its validation split, and the report chooses on validation accuracy, never on test accuracy."""
import csv
import json
import re
import shutil

import pytest

from bench_fixtures import cli, coloured_folder, fake_benchmarks
from promptclip import run_files, runs
from promptclip.bench.protocol_files import parse_protocol
from promptclip.bench.protocols import expand, write_manifest
from promptclip.bench.report import write_report
from promptclip.bench.sweep import plan_sweep, read_spec, run_sweep, write_spec
from promptclip.errors import ConfigError

TINY_CONFIG = {"model.name": "tiny-vit", "model.pretrained": None, "train.epochs": 1, "train.batch_size": 4,
               "train.device": "cpu"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return coloured_folder(tmp_path_factory.mktemp("colours"))


def protocol(root, data, grid=None, **keys):
    """A few-shot protocol over ``data`` (a dataset entry) with the tiny model, trained 1 epoch."""
    return parse_protocol({
        "kind": "few_shot", "shots": [2], "seeds": [1], "methods": ["coop"], "datasets": [data],
        "config": {**TINY_CONFIG, "output.root": str(root), "output.cache_dir": str(root / "cache")},
        **({"grid": grid} if grid is not None else {}), **keys}, "tune", "inline")


def colours(folder):
    return {"name": "colours", "data": {"name": "imagefolder", "root": str(folder)}}


def read(path):
    return json.loads(path.read_text())


@pytest.mark.slow
def test_grid_runs_validate_choose_on_val_and_resume(folder, tmp_path, capsys):
    """Real runs: the grid comes from the command line; the report's choice is the best validation accuracy."""
    root = tmp_path / "runs"
    protocol_file = tmp_path / "tune.yaml"
    protocol_file.write_text(json.dumps({
        "kind": "few_shot", "shots": [2], "seeds": [1], "methods": ["coop"], "datasets": [colours(folder)],
        "config": {**TINY_CONFIG, "output.root": str(root), "output.cache_dir": str(root / "cache")}}))
    args = ["bench", str(protocol_file), "grid={optim.lr: [0.002, 0.5]}", "--no-progress"]
    assert cli(*args) == 0
    manifest = read(root / "protocol-tune.json")
    settings = [run["setting"] for run in manifest["runs"]]
    assert settings == ["optim.lr=0.002", "optim.lr=0.5"]
    run_dirs = [root / run["dir"] for run in manifest["runs"]]
    assert [(d.name, d.parent.name, d.parent.parent.name) for d in run_dirs] == \
        [("seed_1", setting, "shots_2") for setting in settings]
    assert [read(d / "identity.json")["settings"]["optim.lr"] for d in run_dirs] == [0.002, 0.5]
    validations = [read(root / run["validation"]) for run in manifest["runs"]]
    # the few-shot val split: min(shots, 4) = 2 images of each of the 3 classes, drawn with the training images
    assert [v["num_images"] for v in validations] == [6, 6]
    assert all(v["split"] == "val" and len(v["val"]["per_class_accuracy"]) == 3 for v in validations)
    val = [v["val"]["accuracy"] for v in validations]
    test = [read(d / "result.json")["test"]["accuracy"] for d in run_dirs]
    best = max(range(2), key=lambda i: val[i])  # the first of equal scores, as the report breaks ties

    report = write_report(root, plots=False)
    (choice,) = report.choices["tune"]
    assert choice.setting == settings[best] and choice.grid == {"optim.lr": [0.002, 0.5][best]}
    assert choice.validation.mean == pytest.approx(val[best]) and choice.test.mean == pytest.approx(test[best])
    assert choice.points == 2
    markdown = report.markdown.read_text()
    assert "Tuning: settings chosen on the validation split" in markdown
    assert f"optim.lr={[0.002, 0.5][best]}" in markdown

    stamps = {p: p.stat().st_mtime_ns for d in run_dirs for p in (d / "result.json", *(d / "evals").iterdir())}
    capsys.readouterr()
    assert cli(*args) == 0  # a rerun trains and evaluates nothing
    assert "Done 0 runs, 0 failed, 2 skipped (already done)" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_the_validation_best_setting_is_chosen_and_its_test_reported(folder, tmp_path):
    """Constructed results where validation and test disagree: the choice follows validation."""
    root = tmp_path / "runs"
    proto = protocol(root, colours(folder), {"optim.lr": [0.002, 0.02, 0.2]}, seeds=[1, 2])
    specs = expand(proto)
    write_manifest(proto, specs, root, [])
    val = {"optim.lr=0.002": (60, 62), "optim.lr=0.02": (70, 72), "optim.lr=0.2": (65, 40)}  # best: 0.02 (71)
    test = {"optim.lr=0.002": (90, 90), "optim.lr=0.02": (50, 52), "optim.lr=0.2": (95, 95)}  # best: 0.2 (95)
    for spec in specs:
        setting = runs.grid_label(spec.key.point)
        spec.run_dir.mkdir(parents=True)
        (spec.run_dir / "result.json").write_text(json.dumps({
            "method": spec.key.method, "dataset": spec.key.dataset, "subsample": "all", "shots": 2,
            "seed": spec.key.seed, "model": "tiny-vit", "pretrained": None, "fingerprint": spec.identity.fingerprint,
            "test": {"accuracy": test[setting][spec.key.seed - 1]}}))
        spec.validation.parent.mkdir()
        spec.validation.write_text(json.dumps({"split": "val", "val": {"accuracy": val[setting][spec.key.seed - 1]}}))

    report = write_report(root, plots=False)
    (choice,) = report.choices["tune"]
    assert (choice.setting, choice.validation.mean, choice.test.mean) == ("optim.lr=0.02", 71, 51)
    with open(root / "report" / "tune.csv") as f:  # the main table holds the chosen setting's runs only
        (cell,) = [r for r in csv.DictReader(f) if r["dataset"] == "colours" and r["method"] == "coop"]
    assert (float(cell["mean"]), cell["seeds"]) == (51, "2")
    with open(root / "report" / "tune-tuning.csv") as f:
        (row,) = csv.DictReader(f)
    assert (row["grid.optim.lr"], float(row["val_mean"]), float(row["test_mean"])) == ("0.02", 71, 51)

    (specs[0].validation).unlink()  # one validation missing: nothing is chosen, nothing is averaged
    report = write_report(root, plots=False)
    assert report.choices["tune"] == []
    assert any("tuning waits for 1 of 6 validation results" in line for line in report.missing)
    assert "validation missing" in "\n".join(report.missing)
    with open(root / "report" / "tune.csv") as f:
        assert not [r for r in csv.DictReader(f) if r["method"] == "coop" and r["mean"] != ""]


def test_grid_points_never_share_a_folder(tmp_path):
    grid = {"optim.lr": [0.002, 0.02], "text.n_ctx": [2, 4], "optim.betas": [[0.9, 0.999], [0.8, 0.99]]}
    proto = protocol(tmp_path, "EuroSAT", grid, seeds=[1, 2],
                     methods=["coop", {"preset": "zeroshot", "shots": [0], "seeds": [1]}, "linear_probe"])
    specs = expand(proto)
    coop = [s for s in specs if s.key.method == "coop"]
    assert len(coop) == 8 * 2 and \
        [s for s in specs if s.key.method == "zeroshot"][0].key.point == {}  # zero-shot: no grid
    probe = [s for s in specs if s.key.method == "linear_probe"]  # fitted in closed form, it tunes C on val itself
    assert len(probe) == 2 and all(s.key.point == {} and s.validation is None for s in probe)
    with pytest.raises(ConfigError, match="linear_probe is fitted in closed form .* takes no grid"):
        expand(protocol(tmp_path, "EuroSAT", methods=[{"preset": "linear_probe", "grid": {"optim.lr": [0.1]}}]))
    assert len({s.run_dir for s in specs}) == len(specs)
    assert len({s.identity.fingerprint for s in specs}) == len(specs)
    for spec in coop:
        assert spec.run_dir.parent.name == runs.grid_label(spec.key.point) and \
            spec.run_dir.name == f"seed_{spec.key.seed}"
        assert (spec.config.optim.lr, spec.config.text.n_ctx, spec.config.optim.betas) == \
            (spec.key.point["optim.lr"], spec.key.point["text.n_ctx"], spec.key.point["optim.betas"])
        assert spec.validation.parent == spec.run_dir / "evals"
    # a list value does not read well as a folder name: a hash of the exact point keeps the points apart
    assert re.fullmatch(r"optim\.lr=0\.002,text\.n_ctx=2,optim\.betas=_0\.9_0\.999_-[0-9a-f]{8}",
                        coop[0].run_dir.parent.name)
    # a worker process reads back the same grid point and validation file
    spec, _ = read_spec(write_spec(coop[5]))
    assert (spec.key.point, spec.validation) == (coop[5].key.point, coop[5].validation)
    with pytest.raises(ConfigError, match=re.escape("grid.optim.lr: lists 1 twice")):
        protocol(tmp_path, "EuroSAT", {"optim.lr": [1, "1"]})


@pytest.mark.parametrize("grid, overrides, message", [
    ({"optim.lrr": [0.1]}, [], "grid key 'optim.lrr': Unknown config key 'optim.lrr'. Did you mean 'optim.lr'"),
    ({"text.n_ctxx": [2]}, [], "Did you mean 'text.n_ctx'"),
    ({"losses.dapt_inter.weight": [0.1]}, [], "coop has no loss 'dapt_inter'"),
    ({"optim.lr": [0.1]}, ["optim.lr=0.5"], "the override optim.lr sets a key the grid tunes"),
])
def test_grid_key_errors(tmp_path, grid, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        expand(protocol(tmp_path, "EuroSAT", grid), overrides)


@pytest.mark.parametrize("grid, message", [
    ({"optim.lr": 0.1}, "grid.optim.lr: must be a non-empty list of the values to try (one value: [0.1])"),
    ({"seed": [1, 2]}, "seed is set by the protocol: use seeds instead"),
])
def test_grid_value_errors(tmp_path, grid, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        protocol(tmp_path, "EuroSAT", grid)


def test_no_tuning_on_a_test_split(tmp_path, folder):
    """ImageNet's val is its test; an image folder without test/ evaluates on val: both are refused before
    anything trains."""
    data = fake_benchmarks(tmp_path / "data", ["ImageNet"])
    specs = expand(protocol(tmp_path / "runs", {"name": "ImageNet", "data": {"root": str(data)}},
                            {"optim.lr": [0.002, 0.02]}))
    outcome = run_sweep(specs, progress=False)  # each grid run fails before it trains; the failure is recorded
    assert sorted(outcome.failed) == sorted(s.id for s in specs) and not outcome.finished
    assert all("ImageNet has no validation split of its own" in e for e in outcome.failed.values())
    assert all("ImageNet has no validation split of its own" in
               run_files.read_json(s.run_dir / runs.FAILED, "f")["error"] for s in specs)
    assert not list((tmp_path / "runs").rglob(runs.RESULT)) and not list((tmp_path / "runs").rglob(runs.IDENTITY))

    no_test = tmp_path / "no_test"
    shutil.copytree(folder, no_test)
    shutil.rmtree(no_test / "test")
    specs = expand(protocol(tmp_path / "runs", colours(no_test), {"optim.lr": [0.002]}))
    (error,) = run_sweep(specs, progress=False).failed.values()
    assert "no_test has no validation split of its own" in error


def test_a_home_relative_root_is_one_folder_for_runs_manifest_and_validation(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    plan = plan_sweep("tune_dapt", ["datasets=[EuroSAT]", "shots=[2]", "seeds=[1]", "output.root=~/tune",
                                    "data.root=/data"])
    home = tmp_path / "home" / "tune"
    assert plan.root == home and all(home in s.run_dir.parents and home in s.validation.parents for s in plan.runs)
    assert write_manifest(plan.protocol, plan.runs, plan.root, plan.overrides).parent == home
