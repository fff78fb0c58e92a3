# Two entry points: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch 2.14.1 + torchvision 0.29.1 install from this team's local disk; any torch >= 2.1 works elsewhere.
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test test-fast bench clean

$(BIN)/promptclip: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test,plot]'
	touch $@

setup: $(BIN)/promptclip

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/promptclip demo

# -p no:cacheprovider: the suite writes nothing into the repository (.ci/run checks), not even .pytest_cache;
# ruff (pyflakes + pycodestyle, pyproject.toml) first, then every test (CI runs this)
test: setup
	$(BIN)/ruff check --no-cache .
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider

# the inner loop: every test not marked slow (whole runs on digits, subprocess sweeps, job arrays)
test-fast: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow"

bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python tools/benchmark.py

clean:
	rm -rf $(VENV) demo_runs *.egg-info
