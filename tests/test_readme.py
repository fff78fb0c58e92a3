"""The README's offline blocks run as written: the shell tour, then the Python snippet on the runs it made."""
import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = re.compile(r"<!-- offline:[^>]*-->\n```(bash|python)\n(.*?)```", re.S)


def offline_blocks():
    return MARKER.findall(README.read_text())


def test_the_offline_blocks_run_as_written(tmp_path):
    blocks = offline_blocks()
    assert [language for language, _ in blocks] == ["bash", "python"]
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
