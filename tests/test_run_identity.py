"""A run's identity covers what it read (training images, weights' content, resolved precision); its files are read
with their types checked; --replace always redoes; train_seconds covers every segment of a resumed run."""
import json
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from bench_fixtures import coloured_folder
from promptclip import run_files, runs
from promptclip.cli import main
from promptclip.config import build_config
from promptclip.engine import evaluate_run, run
from promptclip import devices as precision_module


def overrides(root, tmp_path, **changes):
    settings = {"data.root": root, "model.name": "tiny-vit", "model.pretrained": "null", "data.shots": 2,
                "train.epochs": 1, "train.batch_size": 4, "optim.name": "adamw", "optim.lr": 0.01,
                "optim.weight_decay": 0, "train.device": "cpu", "text.n_ctx": 4,
                "output.root": tmp_path / "runs", "output.cache_dir": tmp_path / "cache"}
    settings.update(changes)
    return [f"{k}={v}" for k, v in settings.items()]


def config(root, tmp_path, **changes):
    return build_config(("coop",), overrides(root, tmp_path, **changes))


@pytest.fixture
def folder(tmp_path):
    return coloured_folder(tmp_path / "images")


class Interrupt(Exception):
    pass


def repaint(paths):
    """New pixels in the same files (same names), with a modification time of their own."""
    for i, path in enumerate(paths):
        pixels = np.random.RandomState(100 + i).randint(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))


# ------------------------------------------------------------------------------------------------ 1a: the data
def test_changed_training_images_are_not_reused_and_replace_redoes(folder, tmp_path, capsys):
    cfg = config(folder, tmp_path)
    run(cfg, progress=False)
    run_dir = runs.default_run_dir(cfg)
    stored = run_files.read_identity(run_dir)
    assert stored.data["train"]["items"] == 6  # 2 shots of 3 classes
    repaint(sorted((folder / "train").rglob("*.png")))
    argv = ["-q", "train", "-c", "coop", *overrides(folder, tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{run_dir}: the training images changed since this run was made" in err and "--replace" in err
    assert "Traceback" not in err
    assert main([*argv, "--replace"]) == 0  # the advised fix
    assert run_files.read_identity(run_dir).data != stored.data
    redone = (run_dir / runs.RESULT).stat().st_mtime_ns
    assert main(argv) == 0  # and the redone run is reused
    assert (run_dir / runs.RESULT).stat().st_mtime_ns == redone


def test_a_sweep_does_not_count_a_run_whose_training_images_changed_as_done(folder, tmp_path, capsys):
    bench = ["bench", "few_shot", f"datasets=[{{name: colours, data: {{name: imagefolder, root: {folder}}}}}]",
             "methods=[coop]", "shots=[2]", "seeds=[1]", "--no-progress",
             *[o for o in overrides(folder, tmp_path) if not o.startswith(("data.root", "data.shots"))]]
    assert main(bench) == 0
    capsys.readouterr()
    repaint(sorted((folder / "train").rglob("*.png")))
    assert main([*bench, "--dry-run"]) == 0
    assert "other" in capsys.readouterr().out
    assert main(bench) == 1
    shown = "".join(capsys.readouterr())
    assert "1 not run (their folders hold runs made with other settings)" in shown
    assert "the training images changed since this run was made" in shown
    assert main([*bench, "--replace"]) == 0  # the advised fix redoes it on the data as it is now
    assert "Done 1 runs, 0 failed" in capsys.readouterr().out


def test_images_deleted_while_interrupted_are_not_resumed(folder, tmp_path):
    cfg = config(folder, tmp_path, **{"train.epochs": 3})

    def stop(epoch):
        if epoch == 0:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(cfg, progress=False, on_epoch_end=stop)
    run_dir = runs.default_run_dir(cfg)
    assert (run_dir / runs.CHECKPOINT).is_file()
    next(iter(sorted((folder / "train" / "c0").glob("*.png")))).unlink()
    with pytest.raises(runs.RunMismatch, match="the training images changed since this run was made"):
        run(cfg, progress=False)
    assert (run_dir / runs.CHECKPOINT).is_file()  # kept: the refusal deletes nothing
    assert "test" in run(cfg, progress=False, replace=True)


# ------------------------------------------------------------------------------------------------ 1b: the weights
def test_new_weights_of_the_same_size_at_the_same_path_are_other_weights(folder, tmp_path, monkeypatch):
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"a" * 4096)
    cfg = config(folder, tmp_path, **{"model.pretrained": weights})
    first, first_eval = runs.Identity.of(cfg), runs.eval_identity(cfg, "run")
    cache = tmp_path / "cache" / runs.WEIGHTS_HASHES
    assert json.loads(cache.read_text())[str(weights)]["sha256"] in first.settings["model.pretrained"]
    weights.write_bytes(b"b" * 4096)
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    second = runs.Identity.of(cfg)
    assert second.fingerprint != first.fingerprint
    assert [d.split(":")[0] for d in first.differences(second)] == ["model.pretrained"]
    assert runs.eval_identity(cfg, "run").fingerprint != first_eval.fingerprint  # nor the eval cache's numbers
    # the digest is read from the cache while the file's size and time stay: no rehash at every start
    sha256 = runs.hashlib.sha256  # fingerprints hash their text; only the weights' digest starts empty
    monkeypatch.setattr(runs.hashlib, "sha256", lambda *a: sha256(*a) if a else pytest.fail("hashed again"))
    assert runs.Identity.of(cfg).fingerprint == second.fingerprint


# ------------------------------------------------------------------------------------------------ 1c: the precision
def test_auto_precision_is_identified_by_what_it_resolves_to(folder, tmp_path, monkeypatch):
    auto, fp32 = config(folder, tmp_path), config(folder, tmp_path, **{"train.precision": "fp32"})
    assert runs.Identity.of(auto).settings["train.precision"] == "fp32"
    assert runs.Identity.of(auto).fingerprint == runs.Identity.of(fp32).fingerprint
    run(auto, progress=False)
    finished = (runs.default_run_dir(auto) / runs.RESULT).stat().st_mtime_ns
    assert main(["-q", "train", "-c", "coop", *overrides(folder, tmp_path, **{"train.precision": "fp32"})]) == 0
    assert (runs.default_run_dir(auto) / runs.RESULT).stat().st_mtime_ns == finished  # reused: fp32 is what auto ran
    monkeypatch.setattr(precision_module, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(precision_module, "native_bf16", lambda device: True)
    on_gpu = runs.Identity.of(auto)
    assert on_gpu.settings["train.precision"] == "bf16" and on_gpu.fingerprint != runs.Identity.of(fp32).fingerprint


# ------------------------------------------------------------------------------------------------ 2: typed reads
@pytest.mark.slow
def test_wrongly_typed_files_are_named_and_the_others_still_listed(folder, tmp_path, capsys):
    good, bad_identity, bad_result = (config(folder, tmp_path, seed=s) for s in (1, 2, 3))
    for cfg in (good, bad_identity, bad_result):
        run(cfg, progress=False)
    dirs = [runs.default_run_dir(c) for c in (good, bad_identity, bad_result)]
    identity = json.loads((dirs[1] / runs.IDENTITY).read_text())
    (dirs[1] / runs.IDENTITY).write_text(json.dumps({**identity, "settings": [1, 2]}))
    result = json.loads((dirs[2] / runs.RESULT).read_text())
    (dirs[2] / runs.RESULT).write_text(json.dumps({**result, "test": {**result["test"], "accuracy": "n/a"}}))
    with pytest.raises(runs.CorruptFile, match=f"{dirs[1] / runs.IDENTITY}.*settings is list"):
        run_files.read_identity(dirs[1])
    with pytest.raises(runs.CorruptFile, match=f"{dirs[2] / runs.RESULT}.*test.accuracy is n/a, not a number"):
        run_files.read_result(dirs[2])
    listed = {info.path: info for info in run_files.find_runs(tmp_path / "runs")}
    assert listed[dirs[0]].status == "done" and isinstance(listed[dirs[0]].accuracy, float)
    assert listed[dirs[1]].status == "damaged" and "settings is list" in listed[dirs[1]].detail
    assert listed[dirs[2]].status == "damaged" and "test.accuracy" in listed[dirs[2]].detail
    assert main(["runs", str(tmp_path / "runs")]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and str(dirs[0].relative_to(tmp_path / "runs")) in captured.out
    argv = ["-q", "train", "-c", "coop", *overrides(folder, tmp_path, seed=2)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{dirs[1] / runs.IDENTITY}" in err and "--replace" in err and "Traceback" not in err
    assert main([*argv, "--replace"]) == 0  # the advised fix
    assert run_files.read_identity(dirs[1]).settings["seed"] == 2


def test_a_wrongly_typed_evaluation_is_named_and_evaluated_again(folder, tmp_path):
    cfg = config(folder, tmp_path, **{"data.subsample": "base"})
    run(cfg, progress=False)
    run_dir = runs.default_run_dir(cfg)
    evaluate_run(run_dir, ["data.subsample=new"], progress=False)
    (out,) = (run_dir / runs.EVALS).glob("*-new-*.json")
    stored = json.loads(out.read_text())
    out.write_text(json.dumps({**stored, "test": {"accuracy": "n/a"}}))
    with pytest.raises(runs.CorruptFile, match=f"{out}.*test.accuracy is n/a, not a number"):
        run_files.read_scored(out, "an evaluation result")
    again = evaluate_run(run_dir, ["data.subsample=new"], progress=False)
    assert "cached" not in again and run_files.read_scored(out, "an evaluation result")["test"] == stored["test"]


# ------------------------------------------------------------------------------------------------ 3: --replace
@pytest.mark.parametrize("state", ["done", "corrupt", "failed", "resume", "other"])
def test_replace_redoes_the_run_whatever_the_folder_holds(folder, tmp_path, state):
    cfg = config(folder, tmp_path, **{"train.epochs": 2})
    run_dir = runs.default_run_dir(cfg)
    if state == "resume":
        with pytest.raises(Interrupt):
            run(cfg, progress=False, on_epoch_end=lambda epoch: (_ for _ in ()).throw(Interrupt()))
    else:
        run(config(folder, tmp_path, **{"train.epochs": 2, "optim.lr": 0.02}) if state == "other" else cfg,
            progress=False)
    if state == "done":
        result = json.loads((run_dir / runs.RESULT).read_text())
        (run_dir / runs.RESULT).write_text(json.dumps({**result, "marker": "the old run"}))
    elif state == "corrupt":
        (run_dir / runs.RESULT).write_text('{"method": "coop", "dat')
    elif state == "failed":
        (run_dir / runs.RESULT).unlink()
        (run_dir / runs.FAILED).write_text(json.dumps({"error": "The loss became non-finite. ...", "at": "then"}))
    before = run_files.run_state(run_dir, runs.Identity.of(cfg)).status
    assert before == state
    result = run(cfg, progress=False, replace=True)
    assert "marker" not in result and run_files.read_result(run_dir) == result
    assert not (run_dir / runs.FAILED).exists()
    epochs = [json.loads(line)["epoch"] for line in (run_dir / runs.METRICS).read_text().splitlines()]
    assert epochs == [0, 1]  # one fresh run, nothing of the old one
    assert run_files.read_identity(run_dir).fingerprint == runs.Identity.of(cfg).fingerprint


@pytest.mark.slow
def test_damaged_prompts_the_advised_replace_makes_sound(folder, tmp_path, capsys):
    cfg = config(folder, tmp_path, **{"data.subsample": "base"})
    run(cfg, progress=False)
    run_dir = runs.default_run_dir(cfg)
    (run_dir / runs.PROMPTS).write_bytes(b"\0" * 10)
    assert main(["-q", "eval", str(run_dir), "data.subsample=new"]) == 2
    err = capsys.readouterr().err
    assert f"{run_dir / runs.PROMPTS} is damaged or incomplete" in err and "--replace" in err
    assert main(["-q", "train", "-c", "coop", *overrides(folder, tmp_path, **{"data.subsample": "base"}),
                 "--replace"]) == 0
    assert "accuracy" in evaluate_run(run_dir, ["data.subsample=new"], progress=False)["test"]


# ------------------------------------------------------------------------------------------------ 4: train_seconds
@pytest.mark.slow
def test_train_seconds_sum_every_segment_of_a_resumed_run(folder, tmp_path):
    cfg = config(folder, tmp_path, **{"train.epochs": 3})

    def slow_then_stop(epoch):
        if epoch == 0:
            time.sleep(4.0)  # the first segment's time, counted by the record written after epoch 1
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(cfg, progress=False, on_epoch_end=slow_then_stop)
    run_dir = runs.default_run_dir(cfg)
    assert json.loads((run_dir / runs.ELAPSED).read_text())["seconds"] >= 4.0
    started = time.time()
    result = run(cfg, progress=False)
    resumed = time.time() - started
    assert [json.loads(line)["epoch"] for line in (run_dir / runs.METRICS).read_text().splitlines()] == [0, 1, 2]
    assert result["train_seconds"] >= 4.0 and result["train_seconds"] > resumed
    assert not (run_dir / runs.CHECKPOINT_DIR).exists()  # the record goes with the checkpoint
