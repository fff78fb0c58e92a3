"""The command line end to end in a temporary folder."""
import json
import os
import re
import subprocess
import sys

import pytest

from promptclip.cli import build_parser, main


def common(digits_root, tmp_path):
    return [f"data.root={digits_root}", "model.name=tiny-vit", "model.pretrained=null", "data.shots=2",
            "train.epochs=1", "train.batch_size=8", "train.device=cpu", f"output.root={tmp_path / 'runs'}",
            f"output.cache_dir={tmp_path / 'cache'}"]


@pytest.mark.slow
def test_train_eval_predict(digits_root, tmp_path, capsys):
    assert main(["-q", "train", "-c", "coop", "text.n_ctx=4", "data.subsample=base",
                 *common(digits_root, tmp_path)]) == 0
    out = capsys.readouterr().out
    (run_dir,) = (tmp_path / "runs" / "coop" / "tiny-vit_random").glob(f"{digits_root.name}-*/base/shots_2/seed_1")
    assert "test accuracy" in out and str(run_dir) in out
    assert json.loads((run_dir / "result.json").read_text())["num_classes"] == 5

    assert main(["-q", "eval", str(run_dir), "data.subsample=new"]) == 0
    assert "(new): accuracy" in capsys.readouterr().out

    image = sorted((digits_root / "test" / "seven").iterdir())[0]
    assert main(["-q", "predict", str(run_dir), str(image), "--topk", "3", "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)
    assert predictions[0]["path"] == str(image) and len(predictions[0]["top"]) == 3
    assert sum(p for _, p in predictions[0]["top"]) <= 1.0 + 1e-6


def test_zeroshot_command(digits_root, tmp_path, capsys):
    assert main(["-q", "zeroshot", *[o for o in common(digits_root, tmp_path) if "epochs" not in o]]) == 0
    assert "zero-shot accuracy" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_command(tmp_path, capsys):
    assert main(["-q", "demo", "--out", str(tmp_path / "demo"), "--epochs", "1", "--shots", "1"]) == 0
    out = capsys.readouterr().out
    assert "| CoOp, class-specific |" in out and "random weights" in out
    assert (tmp_path / "demo" / "runs" / "coop_csc").is_dir()


def test_config_command_lists_and_resolves(capsys):
    assert main(["config", "--list"]) == 0
    assert "methods/coop" in capsys.readouterr().out.split()
    assert main(["config", "-c", "coop", "optim.lr=0.1"]) == 0
    assert "lr: 0.1" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["train", "-c", "coop", "optim.lrr=1"], "Did you mean 'optim.lr'"),
    (["train", "-c", "coop", "data.root=/no/such/folder", "model.name=tiny-vit"], "/no/such/folder"),
    (["predict", "/no/run", "x.png"], "Run folder /no/run does not exist"),
])
def test_errors_are_one_clear_line(args, message, capsys, tmp_path):
    outputs = [f"output.root={tmp_path / 'runs'}", f"output.cache_dir={tmp_path / 'cache'}"]
    assert main(["-q", *args, *(outputs if args[0] == "train" else [])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("promptclip: error:") and message in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # a run that fails before training leaves nothing behind


def test_help_on_every_command(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"train", "eval", "zeroshot", "predict", "demo", "config", "data", "bench", "report"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert "usage: promptclip" in capsys.readouterr().out


def test_options_and_overrides_in_any_order(capsys):
    assert main(["config", "optim.lr=0.1", "-c", "coop", "text.n_ctx=8", "-q"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.1" in out and "n_ctx: 8" in out
    with pytest.raises(SystemExit):
        main(["config", "-c", "coop", "--no-such-flag"])
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_dry_run_before_overrides_says_whether_the_weights_are_here(tmp_path, capsys):
    args = ["bench", "few_shot", "--dry-run", f"data.root={tmp_path}", "seeds=[1]", "shots=[1]", "methods=[coop]",
            "datasets=[EuroSAT]", "-q"]
    assert main([*args, f"model.pretrained={tmp_path / 'absent.pt'}"]) == 0
    out = capsys.readouterr().out
    assert "few_shot: 1 runs" in out and f"weights ViT-B-16 {tmp_path / 'absent.pt'}: MISSING" in out
    assert main([*args, "model.name=tiny-vit", "model.pretrained=null"]) == 0
    assert "weights tiny-vit (random): available" in capsys.readouterr().out


def test_the_zero_shot_ensemble_says_which_templates(digits_root, tmp_path, caplog):
    with caplog.at_level("INFO", logger="promptclip"):
        assert main(["zeroshot", "-c", "zeroshot_ensemble", *[o for o in common(digits_root, tmp_path)
                                                              if "epochs" not in o]]) == 0
    assert "mean over 8 templates (CoOp's 7 ImageNet templates + the dataset's" in caplog.text


@pytest.mark.slow
def test_a_closed_pipe_ends_quietly(tmp_path):
    cmd = [sys.executable, "-m", "promptclip", "bench", "few_shot", "--dry-run", f"data.root={tmp_path}"]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    process.stdout.readline()
    process.stdout.close()  # like `| head -1`; the plan has 500 lines, more than a pipe holds
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141 and "Traceback" not in err and "BrokenPipe" not in err


def test_a_protocol_given_as_a_preset_says_so(capsys):
    assert main(["config", "-c", "few_shot"]) == 2
    assert "is a benchmark protocol, not a run preset: run it with promptclip bench few_shot" in capsys.readouterr().err


def test_report_on_a_missing_folder_fails_without_creating_it(tmp_path, capsys):
    assert main(["report", str(tmp_path / "typo")]) == 2
    assert "is not a folder" in capsys.readouterr().err and not (tmp_path / "typo").exists()


def test_runs_lists_status_and_accuracy(digits_root, tmp_path, capsys):
    from promptclip import run_files, runs

    assert main(["-q", "zeroshot", *[o for o in common(digits_root, tmp_path) if "epochs" not in o]]) == 0
    (finished,) = (tmp_path / "runs").rglob(runs.RESULT)
    interrupted = tmp_path / "runs" / "other" / "seed_1"
    (interrupted / runs.CHECKPOINT_DIR).mkdir(parents=True)
    capsys.readouterr()
    with run_files.RunLock(interrupted):
        assert main(["runs", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    accuracy = json.loads(finished.read_text())["test"]["accuracy"]
    assert re.search(rf"^done .* {accuracy:.2f}  zeroshot/", out, re.M)
    assert re.search(rf"^running .*other/seed_1  \(pid {os.getpid()} on host ", out, re.M)
    assert "1 done, 1 running" in out


@pytest.mark.slow
def test_library_noise_only_with_verbose(digits_root, tmp_path):
    args = ["zeroshot", *[o for o in common(digits_root, tmp_path) if "epochs" not in o]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    quiet = subprocess.run([sys.executable, "-m", "promptclip", *args], capture_output=True, text=True, env=env)
    verbose = subprocess.run([sys.executable, "-m", "promptclip", "-v", *args, f"output.root={tmp_path / 'v'}"],
                             capture_output=True, text=True, env=env)
    assert quiet.returncode == verbose.returncode == 0
    assert "[promptclip]" in quiet.stderr and "[open_clip" not in quiet.stderr and "[root]" not in quiet.stderr
    assert "[root]" in verbose.stderr or "[open_clip" in verbose.stderr
