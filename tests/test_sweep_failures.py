"""Sweeps that finish: a failed run is recorded and the others go on, a rerun retries it; the dry run checks every
planned run against its backbone; the deep tiny model runs every shipped preset, as the README's table says."""
import dataclasses
import json
import re
from pathlib import Path

import pytest

from bench_fixtures import cli, coloured_folder
from promptclip import run_files, runs
from promptclip.backbone import FrozenCLIP
from promptclip.config import CONFIG_DIR, build_config
from promptclip.model import config_problems
from promptclip.architecture import TINY_MODELS, Architecture

PRESETS = sorted(p.stem for p in (CONFIG_DIR / "methods").glob("*.yaml"))
README = Path(__file__).resolve().parent.parent / "README.md"
FAST = ["model.pretrained=null", "train.device=cpu", "train.epochs=1", "train.max_steps_per_epoch=2",
        "seeds=[1]", "shots=[2]", "--no-progress"]


def datasets(*entries):
    return "datasets=[" + ", ".join(f"{{name: {n}, data: {{name: imagefolder, root: {r}}}}}" for n, r in entries) + "]"


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """The sweeps here use the default output.cache_dir (relative): keep it out of the repository."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return coloured_folder(tmp_path_factory.mktemp("data") / "colours", classes=4)


@pytest.mark.slow
@pytest.mark.parametrize("gpus", [0, 1])
def test_a_failed_run_is_recorded_the_others_go_on_and_a_rerun_retries_it(folder, tmp_path, capsys, gpus):
    missing = tmp_path / "later"
    args = ["few_shot", datasets(("colours", folder), ("later", missing)), "methods=[coop]", "model.name=tiny-vit",
            f"output.root={tmp_path / 'runs'}", *FAST, *(["--gpus", "1"] if gpus else [])]
    assert cli("bench", *args) == 1
    out = capsys.readouterr().out
    good, bad = (tmp_path / "runs" / f"coop/tiny-vit_random/{d}/all/shots_2/seed_1" for d in ("colours", "later"))
    assert (good / runs.RESULT).is_file() and not (good / runs.FAILED).exists()
    failure = json.loads((bad / runs.FAILED).read_text())
    assert failure["stage"] == "sweep" and failure["at"] and "later" in failure["error"]
    assert re.match(r"^\w+(Error|File|Missing)\w*: ", failure["error"]), failure  # "<ExceptionType>: message"
    assert "Done 1 runs, 1 failed, 0 skipped" in out
    assert f"FAILED coop/tiny-vit_random/later/all/shots_2/seed_1: {failure['error'].splitlines()[0]}" in out
    assert not (bad / runs.IDENTITY).exists()
    assert run_files.run_state(bad, runs.Identity.of(build_config(["coop"]))).status == "new"  # retried, not "other"
    coloured_folder(missing, classes=4)
    assert cli("bench", *args) == 0
    out = capsys.readouterr().out
    assert "Done 1 runs, 0 failed, 1 skipped" in out
    assert (bad / runs.RESULT).is_file() and not (bad / runs.FAILED).exists()


def test_the_dry_run_lists_every_problem_and_the_sweep_refuses_before_starting(folder, tmp_path, capsys):
    args = ["base_to_new", datasets(("colours", folder)), "methods=[coop_b2n, maple, promptsrc]",
            "model.name=tiny-vit", f"output.root={tmp_path}", *FAST]
    assert cli("bench", *args, "--dry-run") == 1
    out = capsys.readouterr().out
    assert ("maple/tiny-vit_random/colours/base/shots_2/seed_1: text.depth=9 > 2 text layers (use 1..2); "
            "text.depth=9 > 2 vision layers (use 1..2)") in out
    assert ("promptsrc/tiny-vit_random/colours/base/shots_2/seed_1: text.text_depth=9 > 2 text layers (use 1..2); "
            "text.vision_depth=9 > 2 vision layers (use 1..2)") in out
    assert "2 of 3 planned runs" in out and "coop_b2n/tiny-vit_random/colours/base/shots_2/seed_1:" not in out
    from promptclip.errors import ConfigError

    with pytest.raises(ConfigError, match=r"Nothing was started: 2 of 3 planned runs(.|\n)*text.vision_depth=9"):
        cli("bench", *args)
    assert not any(tmp_path.rglob(runs.IDENTITY))  # not even the runs that fit started


def test_the_architecture_from_the_config_is_the_loaded_backbones():
    for name in TINY_MODELS:  # the same facts; why a tower takes no vision prompts is worded by each reader
        read, loaded = Architecture.of(name), FrozenCLIP.load(name).architecture
        assert dataclasses.replace(read, vision_problem=None) == dataclasses.replace(loaded, vision_problem=None)
        assert ("ViT" in read.vision_problem and "ViT" in loaded.vision_problem if name == "tiny-rn" else
                read.vision_problem is None is loaded.vision_problem), name
    assert Architecture.of("ViT-B-16") == Architecture("ViT-B-16", 12, 512, 12, 768)
    assert Architecture.of("no-such-model") is None


def test_every_preset_fits_the_deep_tiny_model_in_a_dry_run(tmp_path, capsys):
    assert cli("bench", "few_shot", f"methods=[{', '.join(PRESETS)}]", "model.name=tiny-vit-deep",
               "model.pretrained=null", "datasets=[DescribableTextures]", "seeds=[1]", "shots=[2]",
               f"output.root={tmp_path}", "--dry-run") == 0
    assert f"architecture: all {len(PRESETS)} planned runs fit their backbones" in capsys.readouterr().out


def test_the_readme_says_which_tiny_model_runs_which_presets():
    """The README's table, row by row, against the architecture check (`coop*` covers the coop presets)."""
    rows = re.findall(r"^\| `(tiny-[\w-]+)` \| [^|]+ \| ([^|]+) \|$", README.read_text(), re.M)
    assert sorted(name for name, _ in rows) == sorted(TINY_MODELS)
    for name, text in rows:
        fits = {p for p in PRESETS if not config_problems(build_config([p], [f"model.name={name}"]),
                                                          Architecture.of(name))}
        listed = text.split(";")[0]  # what follows a ";" only comments on it
        named = {p for pattern in re.findall(r"`([\w*]+)`", listed) for p in PRESETS
                 if re.fullmatch(pattern.replace("*", r"\w*"), p)}
        if text.startswith("every"):
            assert fits == set(PRESETS), name
        elif text.startswith("all but"):
            assert fits == set(PRESETS) - named, (name, sorted(fits))
        else:
            assert fits == named, (name, sorted(fits))


@pytest.mark.slow
def test_the_deep_presets_train_on_the_deep_tiny_model(folder, tmp_path, capsys):
    deep = ["maple", "ivlp", "promptsrc", "vpt_deep_clip"]
    root = tmp_path / "runs"
    assert cli("bench", "base_to_new", datasets(("colours", folder)), f"methods=[{', '.join(deep)}]",
               "model.name=tiny-vit-deep", f"output.root={root}", *FAST) == 0
    for method in deep:
        run_dir = root / f"{method}/tiny-vit-deep_random/colours/base/shots_2/seed_1"
        assert json.loads((run_dir / runs.RESULT).read_text())["test"]["num_images"] > 0, method
        (evaluation,) = (run_dir / runs.EVALS).glob("colours-new-*.json")
        assert json.loads(evaluation.read_text())["test"]["num_images"] > 0, method


@pytest.mark.slow
def test_gpu_workers_stop_with_their_parent_on_sigterm(folder, tmp_path):
    """``bench --gpus``: a SIGTERM to the parent (scancel, kill) stops the workers it started."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = [sys.executable, "-m", "promptclip", "bench", "few_shot", datasets(("colours", folder)), "methods=[coop]",
            "model.name=tiny-vit", "model.pretrained=null", "train.device=cpu", "train.epochs=1000", "seeds=[1]",
            "shots=[2]", f"output.root={tmp_path / 'runs'}", f"output.cache_dir={tmp_path / 'cache'}",
            "--no-progress", "--gpus", "1"]
    parent = subprocess.Popen(args, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children_file = Path(f"/proc/{parent.pid}/task/{parent.pid}/children")
    deadline, workers = time.time() + 120, []
    while not workers and time.time() < deadline and parent.poll() is None:
        time.sleep(0.2)
        workers = [int(p) for p in children_file.read_text().split()] if children_file.exists() else []
    assert workers, "the sweep started no worker"
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) == 128 + signal.SIGTERM
    for pid in workers:  # reaped by the parent: gone, not orphaned
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
