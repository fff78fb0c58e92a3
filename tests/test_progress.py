"""Progress: bars with rate and ETA on a terminal, plain lines elsewhere and when off; log.txt in the run folder."""
import logging
import re
import sys

import pytest

from promptclip import runs
from promptclip.cli import main
from promptclip.config import build_config
from promptclip.engine import run

LINE = re.compile(r"epoch 1/2 step 20/40 loss \d+\.\d{3} acc \d+\.\d% lr \S+ eta \S+")


def overrides(root, tmp_path, **extra):
    base = {"data.root": root, "model.name": "tiny-vit", "model.pretrained": "null", "data.shots": 4,
            "train.epochs": 2, "train.batch_size": 1, "optim.name": "adamw", "optim.lr": 0.01, "text.n_ctx": 4,
            "train.device": "cpu", "output.root": tmp_path / "runs", "output.cache_dir": tmp_path / "cache"}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


class Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (pytest replaces it), as the CLI's handler does."""

    stream = property(lambda self: sys.stderr, lambda self, _: None)


@pytest.fixture
def console(monkeypatch):
    """promptclip's INFO lines on stderr, as the CLI shows them."""
    logger = logging.getLogger("promptclip")
    handler = Stderr()
    handler.setFormatter(logging.Formatter("[promptclip] %(message)s"))
    monkeypatch.setattr(logger, "handlers", [handler])
    monkeypatch.setattr(logger, "propagate", False)
    monkeypatch.setattr(logger, "level", logging.INFO)


class Interrupt(Exception):
    pass


@pytest.mark.slow
def test_log_txt_holds_the_runs_lines_and_grows_on_resume(digits_root, tmp_path, console, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    cfg = build_config(["coop"], overrides(digits_root, tmp_path))

    def stop(epoch):
        raise Interrupt

    with pytest.raises(Interrupt):
        run(cfg, progress=True, on_epoch_end=stop)
    log_txt = runs.default_run_dir(cfg) / runs.LOG
    first = log_txt.read_text()
    assert "coop on" in first and "epoch 1/2 step 20/40" in first and "epoch 1/2 done" in first
    run(cfg, progress=True)
    text = log_txt.read_text()
    assert text.startswith(first) and "Resuming" in text and "epoch 2/2 done" in text and "test accuracy" in text
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO|WARNING) ", line) for line in text.splitlines())
    assert text.count("epoch 1/2 done") == 1  # what the console showed, once


@pytest.mark.slow
def test_off_a_terminal_progress_is_plain_lines(digits_root, tmp_path, capfd):
    assert main(["train", "-c", "coop", *overrides(digits_root, tmp_path)]) == 0
    err = capfd.readouterr().err
    assert "\r" not in err
    assert LINE.search(err), err
    assert re.search(r"epoch 2/2 done: loss \S+ acc \S+% lr \S+ \(\S+\), eta 0s", err), err


@pytest.mark.slow
def test_on_a_terminal_bars_and_log_lines_do_not_collide(digits_root, tmp_path, capsys, console, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    note = lambda epoch: logging.getLogger("promptclip").info("a note after epoch %d", epoch + 1)  # noqa: E731
    run(build_config(["coop"], overrides(digits_root, tmp_path)), progress=True, on_epoch_end=note)
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and ("step/s" in err or "s/step" in err)  # the step bar with its rate
    assert not LINE.search(err)  # no plain progress lines under bars
    for line in err.split("\n"):
        if "a note after epoch" in line:
            assert line.split("\r")[-1].startswith("[promptclip] a note after epoch"), repr(line)


@pytest.mark.slow
def test_progress_off_draws_no_bars_but_logs_the_lines(digits_root, tmp_path, console, capfd, monkeypatch):
    """``--no-progress`` (a configured console, progress off): plain lines even on a terminal, as in log.txt."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    cfg = build_config(["coop"], overrides(digits_root, tmp_path))
    run(cfg, progress=False)
    err = capfd.readouterr().err
    assert "\r" not in err and LINE.search(err), err
    assert LINE.search((runs.default_run_dir(cfg) / runs.LOG).read_text())
