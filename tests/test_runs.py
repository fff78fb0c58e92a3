"""Trustworthy runs: a result belongs to the settings that made it; one writer per run; nothing poisoned or lost."""
import json
import os
import re
import stat
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

from bench_fixtures import coloured_folder
from promptclip import run_files, runs
from promptclip.cli import main
from promptclip.config import build_config
from promptclip.engine import evaluate_run, load_prompts, run
from promptclip.errors import ConfigError, TrainingError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return coloured_folder(tmp_path_factory.mktemp("colours") / "images")


def overrides(root, tmp_path, **changes):
    settings = {"data.root": root, "model.name": "tiny-vit", "model.pretrained": "null", "data.shots": 2,
                "train.epochs": 2, "train.batch_size": 4, "optim.name": "adamw", "optim.lr": 0.01,
                "optim.weight_decay": 0, "train.device": "cpu", "text.n_ctx": 4,
                "output.root": tmp_path / "runs", "output.cache_dir": tmp_path / "cache"}
    settings.update(changes)
    return [f"{k}={v}" for k, v in settings.items() if v is not None]  # None: leave the key out


def config(root, tmp_path, *presets, **changes):
    if "zeroshot" in presets:
        changes.setdefault("text.n_ctx", None)
    return build_config(presets or ("coop",), overrides(root, tmp_path, **changes))


def snapshot(run_dir):
    return {p.relative_to(run_dir): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()
            and not p.name.startswith(".lock")}


# ------------------------------------------------------------------------------------------------ identity
def test_identity_covers_results_not_paths_or_workers(folder, tmp_path):
    base = runs.Identity.of(config(folder, tmp_path))
    same = runs.Identity.of(config(folder, tmp_path, **{"data.num_workers": 2, "output.root": tmp_path / "x",
                                                         "train.device": "auto", "train.eval_batch_size": 7}))
    assert same.fingerprint == base.fingerprint
    other = runs.Identity.of(config(folder, tmp_path, **{"optim.lr": 0.02}))
    assert other.fingerprint != base.fingerprint
    assert base.differences(other) == ["optim.lr: 0.01 → 0.02"]


def test_default_layout_keeps_the_common_cases_apart(folder, tmp_path):
    where = lambda *presets, **changes: runs.default_run_dir(config(folder, tmp_path, *presets, **changes))  # noqa
    assert where() != where(**{"model.name": "tiny-vit-wide"})  # backbone
    assert where() != where(**{"model.pretrained": "openai"})  # weights
    assert where("coop") != where("coop_b2n")  # preset
    twin = coloured_folder(tmp_path / "projB" / "images")  # same folder name, another project
    assert where() != where(**{"data.root": twin}) and where().parent.parent.parent.name.startswith("images-")
    aliases = {runs.default_run_dir(build_config(["coop"], [f"data.name={name}", "data.root=/data"]))
               for name in ("dtd", "DTD", "DescribableTextures")}
    assert len(aliases) == 1 and "DescribableTextures" in str(aliases.pop())
    zero = runs.default_run_dir(config(folder, tmp_path, "zeroshot", **{"data.shots": 16}))
    assert zero.parent.name == "shots_0" and "shots_16" not in str(zero)


def test_two_folders_with_one_name_are_two_runs(folder, tmp_path):
    twin = coloured_folder(tmp_path / "projB" / "images", seed=1)  # other images under the same folder name
    first = run(config(folder, tmp_path, **{"train.epochs": 1}), progress=False)
    second = run(config(twin, tmp_path, **{"train.epochs": 1}), progress=False)
    assert first["fingerprint"] != second["fingerprint"]
    assert len(list((tmp_path / "runs").rglob(runs.RESULT))) == 2


@pytest.mark.parametrize("change", [{"optim.lr": 0.02}, {"text.n_ctx": 2}])
def test_a_finished_run_is_not_reused_for_other_settings(folder, tmp_path, change):
    first = run(config(folder, tmp_path), progress=False)
    run_dir = runs.default_run_dir(config(folder, tmp_path))
    before = snapshot(run_dir)
    (key, value), = change.items()
    with pytest.raises(runs.RunMismatch) as err:
        run(config(folder, tmp_path, **change), progress=False)
    message = str(err.value)
    assert str(run_dir) in message and f"{key}: " in message and f"→ {value}" in message and "--replace" in message
    assert snapshot(run_dir) == before  # nothing overwritten
    assert run(config(folder, tmp_path), progress=False) == first  # the same settings still reuse it
    replaced = run(config(folder, tmp_path, **change), progress=False, replace=True)
    assert replaced["fingerprint"] == runs.Identity.of(config(folder, tmp_path, **change)).fingerprint


def test_a_run_of_an_earlier_identity_version_is_neither_reused_nor_resumed(folder, tmp_path, monkeypatch):
    cfg = config(folder, tmp_path, **{"train.epochs": 1})
    monkeypatch.setattr(runs, "IDENTITY_VERSION", 1)  # the fingerprint the promptclip of version 1 computed
    old = runs.Identity.of(cfg)
    monkeypatch.undo()
    assert old.settings == runs.Identity.of(cfg).settings and old.fingerprint != runs.Identity.of(cfg).fingerprint
    run_dir = runs.default_run_dir(cfg)
    run_dir.mkdir(parents=True)
    run_files.write_identity(run_dir, runs.Identity(old.settings, old.fingerprint, version=1), "config: old\n")
    identity = json.loads((run_dir / runs.IDENTITY).read_text())
    del identity["version"]  # version 1 wrote none
    (run_dir / runs.IDENTITY).write_text(json.dumps(identity))
    (run_dir / runs.RESULT).write_text(json.dumps({"test": {"accuracy": 99.0}, "fingerprint": old.fingerprint}))
    with pytest.raises(runs.RunMismatch) as err:
        run(cfg, progress=False)
    message = str(err.value)
    assert "earlier promptclip (run identity version 1, now 3)" in message and "DAPT" in message \
        and "sha256" in message
    assert "--replace" in message and json.loads((run_dir / runs.RESULT).read_text())["test"]["accuracy"] == 99.0
    assert run(cfg, progress=False, replace=True)["test"]["accuracy"] != 99.0


def test_a_finished_run_is_reported_by_the_main_process_only(folder, tmp_path):
    cfg = config(folder, tmp_path, **{"train.epochs": 1})
    first = run(cfg, progress=False)

    class OtherProcess:  # what run() needs of a second DDP process here: its rank and the main one's decision
        is_main, rank = False, 1

        @staticmethod
        def share(_):
            return run_files.run_state(runs.default_run_dir(cfg), runs.Identity.of(cfg))  # the main process's: done

    assert run(cfg, progress=False, distributed=OtherProcess()) == {}
    assert run(cfg, progress=False) == first


class Interrupt(Exception):
    pass


def stop_at(epoch_index):
    def hook(epoch):
        if epoch == epoch_index:
            raise Interrupt
    return hook


def test_an_interrupted_run_is_not_resumed_with_other_settings(folder, tmp_path, capsys):
    long = config(folder, tmp_path, **{"train.epochs": 4})
    with pytest.raises(Interrupt):
        run(long, progress=False, on_epoch_end=stop_at(1))
    run_dir = runs.default_run_dir(long)
    kept = snapshot(run_dir)
    assert runs.CHECKPOINT in {str(p) for p in kept}
    short = overrides(folder, tmp_path, **{"train.epochs": 3, "optim.lr": 0.02})
    assert main(["-q", "train", "-c", "coop", *short]) == 2
    err = capsys.readouterr().err
    assert "train.epochs: 4 → 3" in err and "optim.lr: 0.01 → 0.02" in err and "Traceback" not in err
    assert snapshot(run_dir) == kept
    assert main(["-q", "train", "-c", "coop", *short, "--replace"]) == 0
    epochs = [json.loads(line)["epoch"] for line in (run_dir / runs.METRICS).read_text().splitlines()]
    assert epochs == [0, 1, 2]  # a fresh run of 3 epochs, nothing of the old one
    saved = (run_dir / runs.CONFIG).read_text()
    assert "epochs: 3" in saved and "lr: 0.02" in saved


def test_zeroshot_with_another_backbone_is_its_own_run(folder, tmp_path, capsys):
    base = overrides(folder, tmp_path, **{"text.n_ctx": None})
    assert main(["-q", "zeroshot", *base]) == 0
    first = capsys.readouterr().out
    assert main(["-q", "zeroshot", *base, "model.name=tiny-vit-wide"]) == 0
    second = capsys.readouterr().out
    assert "tiny-vit_random" in first and "tiny-vit-wide_random" in second
    assert len(list((tmp_path / "runs" / "zeroshot").rglob(runs.RESULT))) == 2


@pytest.mark.slow
def test_evaluations_are_keyed_by_the_weights(folder, tmp_path, tiny):
    cfg = config(folder, tmp_path, **{"data.subsample": "base"})
    run(cfg, progress=False)
    run_dir = runs.default_run_dir(cfg)
    first = evaluate_run(run_dir, ["data.subsample=new"], progress=False)
    assert evaluate_run(run_dir, ["data.subsample=new"], progress=False)["cached"]
    weights = tmp_path / "tiny.pt"
    torch.save(tiny.model.state_dict(), weights)
    other = evaluate_run(run_dir, ["data.subsample=new", f"model.pretrained={weights}"], progress=False)
    assert "cached" not in other and other["fingerprint"] != first["fingerprint"]
    assert len(list((run_dir / runs.EVALS).glob("*-new-*.json"))) == 2
    with pytest.raises(ConfigError, match="optim.lr is a training setting"):
        evaluate_run(run_dir, ["optim.lr=0.5"], progress=False)


def test_eval_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["-q", "eval", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not a run folder" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------------ one writer
LOCK_HOLDER = ("import sys, time; from promptclip.run_files import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
               "print('locked', flush=True); time.sleep(120)")


def test_a_second_writer_is_refused_and_a_killed_ones_lock_is_taken_over(folder, tmp_path):
    cfg = config(folder, tmp_path)
    run_dir = runs.default_run_dir(cfg)
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(runs.RunBusy, match=f"busy: pid {holder.pid} on host .+ since "):
            run(cfg, progress=False)
        assert run_files.is_locked(run_dir) and not (run_dir / runs.IDENTITY).exists()
    finally:
        holder.kill()
        holder.wait()
    result = run(cfg, progress=False)  # the dead holder's lock is taken over
    assert result["test"]["num_images"] > 0 and not run_files.is_locked(run_dir)
    epochs = [json.loads(line)["epoch"] for line in (run_dir / runs.METRICS).read_text().splitlines()]
    assert epochs == [0, 1]


@pytest.mark.slow
def test_two_identical_train_commands_one_runs(folder, tmp_path):
    cmd = [sys.executable, "-m", "promptclip", "-q", "train", "-c", "coop",
           *overrides(folder, tmp_path, **{"train.epochs": 20})]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    errors = "".join(err for _, err in outputs)
    assert codes in ([0, 0], [0, 2]), errors
    if codes == [0, 2]:  # they overlapped: the second was refused at once
        assert "is busy: pid" in errors, errors
    run_dir = runs.default_run_dir(config(folder, tmp_path, **{"train.epochs": 20}))
    lines = (run_dir / runs.METRICS).read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(20))


# ------------------------------------------------------------------------------------------------ failures
@pytest.mark.slow
def test_a_diverged_run_leaves_nothing_poisoned_and_other_settings_start_clean(folder, tmp_path):
    diverging = config(folder, tmp_path, **{"train.epochs": 3, "optim.name": "sgd", "optim.lr": 1e30,
                                            "optim.warmup_epochs": 1, "optim.warmup_lr": 1e-5})
    run_dir = runs.default_run_dir(diverging)
    with pytest.raises(TrainingError) as err:
        run(diverging, progress=False)
    where = re.search(r"became nan at epoch (\d)/3, step \d+/\d+ .*the last checkpoint holds epoch (\d)",
                      str(err.value))
    assert where, err.value
    failed_epoch, saved_epoch = int(where[1]), int(where[2])
    checkpoint = torch.load(run_dir / runs.CHECKPOINT, weights_only=True)
    assert checkpoint["epoch"] == saved_epoch and 1 <= saved_epoch < failed_epoch  # the warm-up epoch was sane
    assert all(torch.isfinite(t).all() for t in checkpoint["learners"]["text"].values())
    assert not (run_dir / runs.PROMPTS).exists() and not (run_dir / runs.RESULT).exists()
    assert "nan" in json.loads((run_dir / runs.FAILED).read_text())["error"]
    sane = config(folder, tmp_path, **{"train.epochs": 3, "optim.name": "sgd", "optim.lr": 0.01,
                                       "optim.warmup_epochs": 1, "optim.warmup_lr": 1e-5})
    result = run(sane, progress=False)
    assert result["test"]["num_images"] > 0 and not (run_dir / runs.FAILED).exists()
    epochs = [json.loads(line)["epoch"] for line in (run_dir / runs.METRICS).read_text().splitlines()]
    assert epochs == [0, 1, 2]
    assert torch.isfinite(load_prompts(run_dir).text.ctx).all()


def test_a_run_that_fails_before_training_leaves_nothing(folder, tmp_path):
    missing = config(tmp_path / "nowhere", tmp_path, **{"output.dir": tmp_path / "run"})
    with pytest.raises(Exception, match="nowhere"):
        run(missing, progress=False)
    assert not (tmp_path / "run").exists()  # no run folder, no lock (tests/test_run_leftovers.py: the cases)
    run(config(folder, tmp_path, **{"output.dir": tmp_path / "run", "optim.lr": 0.02}), progress=False)


# ------------------------------------------------------------------------------------------------ files
def test_damaged_run_files_are_named(folder, tmp_path, capsys):
    cfg = config(folder, tmp_path)
    first = run(cfg, progress=False)
    run_dir = runs.default_run_dir(cfg)
    (run_dir / runs.RESULT).write_text('{"method": "coop", "dat')
    again = run(cfg, progress=False)  # same settings: the damaged result is redone, with a warning
    assert again["test"] == first["test"]
    (run_dir / runs.IDENTITY).write_bytes(os.urandom(64))
    with pytest.raises(runs.CorruptFile, match=f"{runs.IDENTITY}.*damaged.*--replace"):
        run(cfg, progress=False)
    (run_dir / runs.CONFIG).write_text("text: [unclosed")
    assert main(["-q", "eval", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert f"{run_dir / runs.CONFIG} is damaged" in err and "Traceback" not in err


def test_files_follow_the_umask(folder, tmp_path):
    old = os.umask(0o022)
    try:
        cfg = config(folder, tmp_path)
        run(cfg, progress=False)
    finally:
        os.umask(old)
    run_dir = runs.default_run_dir(cfg)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in run_dir.iterdir() if p.is_file()}
    assert {runs.RESULT, runs.PROMPTS, runs.PROMPTS_META, runs.CONFIG, runs.IDENTITY} <= set(modes)
    assert all(mode == 0o644 for name, mode in modes.items() if not name.startswith(".lock")), modes


# ------------------------------------------------------------------------------------------------ paths
@pytest.mark.parametrize("name", ["../escape", "/abs/path", "..", "a/b"])
def test_names_never_become_paths_outside(folder, tmp_path, name):
    with pytest.raises(ConfigError, match="cannot be a folder name"):
        runs.default_run_dir(config(folder, tmp_path, **{"method": json.dumps(name)}))


@pytest.mark.parametrize("bad", ["../../outside", "/etc"])
def test_a_manifest_pointing_outside_its_sweep_is_refused(tmp_path, bad):
    from promptclip.bench.report import write_report

    manifest = {"protocol": "x", "kind": "few_shot", "runs": [
        {"id": "a", "method": "coop", "dataset": "d", "subsample": "all", "shots": 1, "seed": 1, "model": "m",
         "pretrained": None, "dir": bad, "evaluations": []}]}
    (tmp_path / "protocol-x.json").write_text(json.dumps(manifest))
    (problem,) = write_report(tmp_path, plots=False).missing  # named, and the report of the others still written
    assert str(tmp_path / "protocol-x.json") in problem and re.search("outside|not a path inside", problem)


def test_a_worker_spec_writes_only_its_own_folder(folder, tmp_path):
    from promptclip.bench.sweep import read_spec

    spec = tmp_path / "run" / runs.SWEEP_SPEC
    spec.parent.mkdir()
    cfg = json.loads(json.dumps(asdict(config(folder, tmp_path, **{"output.dir": tmp_path}))))
    spec.write_text(json.dumps({"id": "x", "method": "coop", "dataset": "d", "subsample": "all", "shots": 2,
                                "seed": 1, "config": cfg, "evaluations": []}))
    with pytest.raises(runs.CorruptFile, match="refusing to write elsewhere"):
        read_spec(spec)
    cfg["output"]["dir"] = str(spec.parent)
    spec.write_text(json.dumps({"id": "x", "method": "coop", "dataset": "d", "subsample": "all", "shots": 2,
                                "seed": 1, "config": cfg, "evaluations": [
                                    {"dataset": "../up", "subsample": "new", "overrides": []}]}))
    with pytest.raises(ConfigError, match="cannot be a folder name"):
        read_spec(spec)


# ------------------------------------------------------------------------------------------------ start-up
@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["bench", "--help"], ["report", "{dir}"],
                                  ["data", "check", "{dir}"]])
def test_light_commands_do_not_import_torch(tmp_path, argv):
    argv = [a.format(dir=tmp_path) for a in argv]
    code = ("import sys; from promptclip.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('torch loaded' if 'torch' in sys.modules or 'open_clip' in sys.modules else 'torch-free')")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120).stdout
    assert out.strip().splitlines()[-1] == "torch-free"


# ------------------------------------------------------------------------------------------------ more edges
def test_zeroshot_does_not_draw_shots(folder, tmp_path, caplog):
    cfg = config(folder, tmp_path, "zeroshot", **{"data.shots": 16})  # more shots than the 6 images per class
    with caplog.at_level("WARNING", logger="promptclip"):
        result = run(cfg, progress=False)
    assert result["shots"] == 0 and "fewer images than" not in caplog.text
    assert "shots: 0" in (runs.default_run_dir(cfg) / runs.CONFIG).read_text()


@pytest.mark.slow
def test_a_damaged_checkpoint_costs_only_its_epochs(folder, tmp_path, caplog):
    cfg = config(folder, tmp_path, **{"train.epochs": 3})
    with pytest.raises(Interrupt):
        run(cfg, progress=False, on_epoch_end=stop_at(1))
    run_dir = runs.default_run_dir(cfg)
    (run_dir / runs.CHECKPOINT).write_bytes(b"\x00" * 100)
    with caplog.at_level("WARNING", logger="promptclip"):
        resumed = run(cfg, progress=False)
    assert "last.pt is damaged" in caplog.text and "training from the start" in caplog.text
    fresh = run(config(folder, tmp_path, **{"train.epochs": 3, "output.dir": tmp_path / "fresh"}), progress=False)
    assert resumed["test"] == fresh["test"]
    epochs = [json.loads(line)["epoch"] for line in (run_dir / runs.METRICS).read_text().splitlines()]
    assert epochs == [0, 1, 2]


def sweep_specs(folder, tmp_path, *extra):
    from promptclip.bench.protocol_files import parse_protocol
    from promptclip.bench.protocols import expand

    protocol = parse_protocol({
        "kind": "few_shot", "shots": [2], "seeds": [1, 2], "methods": ["coop"],
        "datasets": [{"name": "colours", "data": {"name": "imagefolder", "root": str(folder)}}],
        "config": {"model.name": "tiny-vit", "model.pretrained": None, "train.epochs": 1, "train.batch_size": 4,
                   "train.device": "cpu", "text.n_ctx": 4, "output.root": str(tmp_path / "sweep"),
                   "output.cache_dir": str(tmp_path / "cache")}}, "mini", "inline")
    return protocol, expand(protocol, list(extra))


@pytest.mark.slow
def test_bench_never_counts_other_settings_or_damaged_results(folder, tmp_path):
    from promptclip.bench.protocols import write_manifest
    from promptclip.bench.report import write_report
    from promptclip.bench.sweep import run_sweep, status

    protocol, specs = sweep_specs(folder, tmp_path)
    root = tmp_path / "sweep"
    write_manifest(protocol, specs, root, [])
    assert len(run_sweep(specs, progress=False).finished) == 2
    first, second = specs
    (second.run_dir / runs.RESULT).write_text("{not json")
    assert [status(s) for s in specs] == ["done", "corrupt"]
    report = write_report(root, plots=False)
    assert any(f"{second.run_dir / runs.RESULT}" in line and "damaged" in line for line in report.missing)
    outcome = run_sweep(specs, progress=False)  # the damaged one is redone (same settings)
    assert outcome.finished == [second.id] and [status(s) for s in specs] == ["done", "done"]

    protocol, changed = sweep_specs(folder, tmp_path, "optim.lr=0.5")
    kept = snapshot(first.run_dir)
    assert [status(s) for s in changed] == ["other", "other"]
    outcome = run_sweep(changed, progress=False)
    assert not outcome.finished and not outcome.skipped and "optim.lr: 0.002 → 0.5" in outcome.other[first.id]
    assert snapshot(first.run_dir) == kept
    with pytest.raises(ConfigError, match=r"holds another plan(.|\n)*other settings: "):
        write_manifest(protocol, changed, root, ["optim.lr=0.5"])  # never replaced silently
    write_manifest(protocol, changed, root, ["optim.lr=0.5"], replace=True)
    report = write_report(root, plots=False)
    assert sum("made with other settings" in line for line in report.missing) == 2
    assert len(run_sweep(changed, progress=False, replace=True).finished) == 2


def test_bench_skips_a_run_another_process_is_writing(folder, tmp_path):
    from promptclip.bench.sweep import run_sweep, status

    _, specs = sweep_specs(folder, tmp_path)
    with run_files.RunLock(specs[0].run_dir):
        assert status(specs[0]) == "busy"
        outcome = run_sweep(specs, progress=False)
    assert outcome.busy == [specs[0].id] and outcome.finished == [specs[1].id]
    assert not (specs[0].run_dir / runs.RESULT).exists()


def test_a_run_records_the_precision_it_resolved_to(folder, tmp_path):
    cfg = config(folder, tmp_path, **{"train.epochs": 1})
    assert cfg.train.precision == "auto"
    assert run(cfg, progress=False)["precision"] == "fp32"  # auto on a CPU
