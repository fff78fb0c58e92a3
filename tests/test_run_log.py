"""log.txt is what the console showed, line for line, in every mode: a pipe, ``--no-progress``, a Python call (and
on a terminal, the console's lines plus the progress lines the bars stood for)."""
import io
import logging
import os
import re
import subprocess
import sys

import pytest

from bench_fixtures import TINY, fake_benchmarks
from promptclip import runs
from promptclip.config import build_config
from promptclip.engine import run
from promptclip.engine.trainer import PROGRESS_LINE, console_through_bars

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO|WARNING|ERROR) ")
STEP = re.compile(r"^epoch 1/2 step 20/30 loss \S+ acc \S+% lr \S+ eta \S+$")
EPOCH = re.compile(r"^epoch 2/2 done: loss \S+ acc \S+% lr \S+ \(\S+\), eta 0s$")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def settings(root, tmp_path, **extra):
    base = {"data.root": root, "model.name": "tiny-vit", "model.pretrained": "null", "data.shots": 3,
            "train.epochs": 2, "train.batch_size": 1, "optim.name": "adamw", "optim.lr": 0.01, "text.n_ctx": 4,
            "train.device": "cpu", "output.root": tmp_path / "runs", "output.cache_dir": tmp_path / "cache",
            **extra}
    return [f"{k}={v}" for k, v in base.items()]


def log_lines(run_dir):
    """log.txt's lines without their timestamps and levels."""
    lines = (run_dir / runs.LOG).read_text().splitlines()
    assert all(STAMP.match(line) for line in lines), lines
    return [STAMP.sub("", line) for line in lines]


def console_lines(text):
    """The promptclip lines a console shows (after a bar's carriage returns, the text that stays)."""
    shown = [part.split("\r")[-1] for part in text.split("\n")]
    return [line[len("[promptclip] "):] for line in shown if line.startswith("[promptclip] ")]


@pytest.fixture
def unconfigured(monkeypatch):
    """promptclip's logger as a Python session that configured no logging finds it."""
    logger = logging.getLogger("promptclip")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", True)
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    return logger


@pytest.mark.slow
def test_a_pipe(digits_root, tmp_path):
    cmd = [sys.executable, "-m", "promptclip", "train", "-c", "coop", *settings(digits_root, tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr
    (run_dir,) = (tmp_path / "runs").rglob(runs.RESULT)
    shown, logged = console_lines(done.stderr), log_lines(run_dir.parent)
    assert logged == shown and len(shown) == len(done.stderr.splitlines())
    assert any(STEP.match(line) for line in logged) and any(EPOCH.match(line) for line in logged)


@pytest.mark.slow
def test_no_progress(tmp_path_factory, tmp_path):
    data = fake_benchmarks(tmp_path_factory.mktemp("bench"), ["EuroSAT"], n_per_class=12)  # 6 training images
    root = tmp_path / "runs"
    cmd = [sys.executable, "-m", "promptclip", "bench", "few_shot", *TINY, f"data.root={data}",
           f"output.root={root}", f"output.cache_dir={root / 'cache'}", "datasets=[EuroSAT]", "shots=[6]",
           "seeds=[1]", "methods=[coop]", "coop:train.epochs=1", "coop:train.batch_size=1", "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr
    (run_dir,) = root.rglob(runs.RESULT)
    shown, logged = console_lines(done.stderr), log_lines(run_dir.parent)
    start = shown.index(logged[0])
    assert shown[start:start + len(logged)] == logged  # the run's stretch of the console, line for line
    assert any(re.match(r"epoch 1/1 step 20/24 ", line) for line in logged)
    assert any(line.startswith("epoch 1/1 done: ") for line in logged)


@pytest.mark.slow
def test_a_python_call_shows_and_logs_without_logging_configured(digits_root, tmp_path, capsys, unconfigured):
    first, second = (build_config(["coop"], settings(digits_root, tmp_path, seed=seed)) for seed in (1, 2))
    for cfg in (first, second):  # the second call adds no second console handler
        run(cfg)
        shown, logged = console_lines(capsys.readouterr().err), log_lines(runs.default_run_dir(cfg))
        assert logged == shown
        assert any(STEP.match(line) for line in logged) and any(EPOCH.match(line) for line in logged)
    assert unconfigured.handlers == [] and unconfigured.level == logging.NOTSET


@pytest.mark.slow
def test_a_python_call_with_progress_off_prints_nothing_and_still_logs(digits_root, tmp_path, capsys,
                                                                       unconfigured):
    cfg = build_config(["coop"], settings(digits_root, tmp_path))
    run(cfg, progress=False)
    assert capsys.readouterr().err == ""
    logged = log_lines(runs.default_run_dir(cfg))
    assert any(STEP.match(line) for line in logged) and any(EPOCH.match(line) for line in logged)


@pytest.mark.slow
def test_a_configured_console_gets_no_second_handler(digits_root, tmp_path, capsys, unconfigured):
    cli_handler = logging.StreamHandler(sys.stderr)
    cli_handler.setFormatter(logging.Formatter("[promptclip] %(message)s"))
    unconfigured.addHandler(cli_handler)
    unconfigured.setLevel(logging.INFO)
    seen = []
    cfg = build_config(["coop"], settings(digits_root, tmp_path))
    run(cfg, on_epoch_end=lambda epoch: seen.append(list(unconfigured.handlers)))
    assert all(sum(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
                   for h in handlers) == 1 for handlers in seen)
    assert console_lines(capsys.readouterr().err) == log_lines(runs.default_run_dir(cfg))
    assert unconfigured.handlers == [cli_handler]


@pytest.mark.slow
def test_on_a_terminal_log_txt_is_the_console_plus_the_lines_the_bars_stood_for(digits_root, tmp_path, capsys,
                                                                                 unconfigured, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    cfg = build_config(["coop"], settings(digits_root, tmp_path))
    run(cfg)
    err = capsys.readouterr().err
    assert "step/s" in err or "s/step" in err  # the bars were drawn
    logged = log_lines(runs.default_run_dir(cfg))
    progress = [line for line in logged if re.match(r"epoch \d/2 (step \d+/30|done:) ", line)]
    assert len(progress) == 4  # a step line and a done line per epoch
    assert console_lines(err) == [line for line in logged if line not in progress]


def test_with_bars_progress_lines_go_to_the_log_only(monkeypatch):
    logger = logging.getLogger("promptclip")
    console, log_file = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", console)  # a console handler prints to sys.stderr
    shown, kept = logging.StreamHandler(console), logging.StreamHandler(log_file)
    monkeypatch.setattr(logger, "handlers", [shown, kept])
    monkeypatch.setattr(logger, "level", logging.INFO)
    monkeypatch.setattr(logger, "propagate", False)
    with console_through_bars(True):
        logger.info("a step", extra={PROGRESS_LINE: True})
        logger.info("a note")
    assert console.getvalue().split() == ["a", "note"]
    assert log_file.getvalue().splitlines() == ["a step", "a note"]
    assert logger.handlers == [shown, kept]  # the console handler is back
    with console_through_bars(False):  # no bars: the console shows the progress lines too
        logger.info("another step", extra={PROGRESS_LINE: True})
    assert "another step" in console.getvalue()
