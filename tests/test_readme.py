"""The README's offline blocks run as written: the shell tour, then the Python snippet on the runs it made; and the
worked example of "Adding a method" (a plugin file, its preset and the command that trains with them)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = re.compile(r"<!-- offline:[^>]*-->\n```(bash|python|yaml)\n(.*?)```", re.S)
LANGUAGES = ["bash", "python", "python", "yaml", "bash"]  # the tour (2 blocks), the plugin example (3)


def offline_blocks():
    return MARKER.findall(README.read_text())


@pytest.mark.slow
def test_the_offline_blocks_run_as_written(tmp_path):
    blocks = offline_blocks()
    assert [language for language, _ in blocks] == LANGUAGES
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))  # `source .venv/bin/activate` as after `make demo`
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "VIRTUAL_ENV")}
    shell = subprocess.run(["bash", "-euo", "pipefail", "-c", blocks[0][1]], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    assert shell.returncode == 0, shell.stdout + shell.stderr
    assert "test accuracy" in shell.stdout and "Traceback" not in shell.stderr
    assert "Base-to-new accuracy" in shell.stdout  # the report of the sweep
    assert re.search(r"^done\s", shell.stdout, re.M)  # `promptclip runs` lists finished runs
    python = subprocess.run([sys.executable, "-c", blocks[1][1]], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert python.returncode == 0, python.stderr
    lines = python.stdout.strip().splitlines()
    assert len(lines) == 4 and all("seven" in line or "[(" in line for line in lines[:3])


@pytest.mark.slow
def test_the_plugin_example_trains_with_its_loss_and_callback(tmp_path):
    from promptclip.demo import write_digits

    _, _, (_, module), (_, preset), (_, command) = offline_blocks()
    write_digits(tmp_path / "data" / "digits")  # what the tour made
    (tmp_path / "anchor.py").write_text(module)
    (tmp_path / "anchor.yaml").write_text(preset)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.prefix) / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    shell = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
    assert shell.returncode == 0, shell.stdout + shell.stderr
    (run_dir,) = (tmp_path / "runs" / "coop_anchor").glob("*/*/all/shots_2/seed_1")
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == 1 and epochs[0]["anchor"] > 0  # random prompts sit away from the zero-shot features
    assert epochs[0]["loss"] == pytest.approx(epochs[0]["ce"] + epochs[0]["anchor"], rel=1e-5)  # weight 1
    settings = json.loads((run_dir / "identity.json").read_text())["settings"]
    assert settings["callbacks.prompt_ema.decay"] == 0.5 and settings["losses.anchor.templates"] == "ensemble"
    assert (run_dir / "result.json").is_file() and (run_dir / "prompts.safetensors").is_file()
