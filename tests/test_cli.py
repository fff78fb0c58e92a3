"""The command line end to end in a temporary folder."""
import json

import pytest

from promptclip.cli import build_parser, main


def common(digits_root, tmp_path):
    return [f"data.root={digits_root}", "model.name=tiny-vit", "model.pretrained=null", "data.shots=2",
            "train.epochs=1", "train.batch_size=8", "train.device=cpu", f"output.root={tmp_path / 'runs'}",
            f"output.cache_dir={tmp_path / 'cache'}"]


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
def test_errors_are_one_clear_line(args, message, capsys):
    assert main(["-q", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("promptclip: error:") and message in err and "Traceback" not in err


def test_help_on_every_command(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"train", "eval", "zeroshot", "predict", "demo", "config", "data", "bench", "report"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert "usage: promptclip" in capsys.readouterr().out
