"""The feature cache's budget (least recently used first, held entries kept, results unchanged), a full disk (caching
stops with one warning, results unchanged), and ``promptclip cache du|prune|clear``."""
import argparse
import errno
import json
import logging
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from bench_fixtures import TINY, coloured_folder
from promptclip.backbone import FrozenCLIP
from promptclip.config import build_config
from promptclip.data.base import Item
from promptclip.engine import cache as cache_module
from promptclip.engine import cache_admin, load_prompts, prepare_data, run
from promptclip.engine.cache import FeatureCache, TrainingViews, frozen_features

CPU = torch.device("cpu")


def config(root, tmp_path, out, cache="cache", **overrides):
    base = {"data.root": root, "data.shots": 2, "train.epochs": 3, "train.batch_size": 4, "optim.name": "adamw",
            "optim.lr": 0.01, "optim.weight_decay": 0, "train.eval_batch_size": 64, "text.n_ctx": 4,
            "output.dir": tmp_path / out, "output.cache_dir": tmp_path / cache, **overrides}
    return build_config(["coop"], [*TINY, *(f"{k}={v}" for k, v in base.items())])


def outcome(run_dir):
    """What must not depend on the cache: result.json's metrics and loss, and the saved prompts."""
    result = json.loads((run_dir / "result.json").read_text())
    return result["test"], result["train_loss"], load_prompts(run_dir).text.ctx


def same(a, b):
    return a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def sizes(directory):
    return {p.name: p.stat().st_size for p in directory.glob("*.safetensors")}


@pytest.fixture(scope="module")
def baseline(digits_root, tmp_path_factory):
    """A run without budget or failure, and the sizes of the entries it cached."""
    tmp_path = tmp_path_factory.mktemp("baseline")
    run(config(digits_root, tmp_path, "run"), progress=False)
    return outcome(tmp_path / "run"), sizes(tmp_path / "cache" / "features")


@pytest.fixture
def wired_budget(monkeypatch):
    """Gives ``max_gb`` to every FeatureCache the runner makes, as the call sites pass ``output.cache_max_gb`` once
    wired (/tmp/proposals/cache.md); with the wiring in place this only repeats the config."""
    def wire(max_gb):
        monkeypatch.setitem(cache_module.frozen_features.__kwdefaults__, "max_gb", max_gb)
        monkeypatch.setitem(TrainingViews.__init__.__kwdefaults__, "max_gb", max_gb)
    return wire


@pytest.mark.slow
def test_a_tiny_budget_keeps_results_and_the_folder_within_it_but_for_held_entries(
        digits_root, tmp_path, baseline, wired_budget, monkeypatch, caplog):
    expected, stored = baseline
    view = min(stored.values())  # a training view's entry (the test split's is larger)
    budget = 1.5 * view
    wired_budget(budget / cache_admin.GB)
    features = tmp_path / "cache" / "features"
    unheld_after_each_write = []
    enforce = cache_module.enforce_budget

    def checked(directory, max_bytes):
        result = enforce(directory, max_bytes)
        held = sum(size for name, size in sizes(features).items() if str(features / name) in cache_admin._held_here)
        unheld_after_each_write.append(sum(sizes(features).values()) - held)
        return result

    monkeypatch.setattr(cache_module, "enforce_budget", checked)
    with caplog.at_level(logging.INFO, logger="promptclip"):
        for out in ("cold", "warm"):  # the warm run finds some views evicted, recomputes them, and evicts others
            run(config(digits_root, tmp_path, out, **{"output.cache_max_gb": budget / cache_admin.GB}),
                progress=False)
            assert same(outcome(tmp_path / out), expected)
    # cold: 3 views and the test split; warm: view 0 (held to the end of the cold run) is read back, the rest again
    assert len(unheld_after_each_write) == 4 + 3
    assert max(unheld_after_each_write) <= budget
    assert len(sizes(features)) < len(stored)
    evictions = [r.getMessage() for r in caplog.records if "least recently used" in r.getMessage()]
    assert evictions and all("budget" in line for line in evictions)
    assert not cache_admin._held_here  # the runs let go of every entry


def items_and_tensors(tmp_path, n=4):
    items = [Item(str(tmp_path / f"{i}.png"), i % 2) for i in range(n)]
    return items, torch.randn(n, 8), torch.tensor([i.label for i in items])


def write_entries(tmp_path, keys, **about):
    items, features, labels = items_and_tensors(tmp_path)
    cache = FeatureCache(tmp_path / "cache")
    now = time.time()
    for age, key in zip(range(len(keys), 0, -1), keys):
        cache.save(key, features, labels, "test", about or None)
        os.utime(cache.path(key), (now - 100 * age, now - 100 * age))  # oldest first
    cache.release()
    return cache, items, features, labels


def test_the_least_recently_used_entries_go_first_and_a_read_counts_as_a_use(tmp_path):
    cache, items, features, labels = write_entries(tmp_path, ["a", "b", "c"])
    reader = FeatureCache(tmp_path / "cache")
    assert torch.equal(reader.load("a", items)[0], features)  # the oldest entry, read now
    reader.release()
    size = cache.path("a").stat().st_size
    FeatureCache(tmp_path / "cache", max_gb=3 * size / cache_admin.GB).save("d", features, labels, "test")
    assert sorted(sizes(cache.directory)) == ["a.safetensors", "c.safetensors", "d.safetensors"]


def hold_in_another_process(path):
    """Fork a process that holds ``path``'s entry until killed; its pid."""
    ready_r, ready_w = os.pipe()
    wait_r, wait_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child only holds a lock and waits: no torch here
        os.close(ready_r)
        cache_admin.hold(path)
        os.write(ready_w, b"1")
        os.read(wait_r, 1)
        os._exit(0)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"1"
    os.close(ready_r)
    return pid


def test_held_entries_are_not_evicted_until_their_holder_lets_go_or_dies(tmp_path):
    cache, items, _, _ = write_entries(tmp_path, ["mine", "theirs", "free"])
    assert cache.load("mine", items) is not None  # this process holds it now
    pid = hold_in_another_process(cache.path("theirs"))
    try:
        message = cache_admin.prune(tmp_path / "cache", 1e-9)
        assert sorted(sizes(cache.directory)) == ["mine.safetensors", "theirs.safetensors"]
        assert "Removed 1 " in message and "2 entries" in message and "held by running processes" in message
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    cache_admin.prune(tmp_path / "cache", 1e-9)  # a dead process protects nothing
    assert sorted(sizes(cache.directory)) == ["mine.safetensors"]
    cache.release()
    cache_admin.prune(tmp_path / "cache", 1e-9)
    assert sizes(cache.directory) == {}


def cache_cli(*argv):
    parser = argparse.ArgumentParser(prog="promptclip")
    cache_admin.add_cache_command(parser.add_subparsers(required=True))
    args = parser.parse_args(["cache", *argv])
    return args.func(args)


@pytest.fixture
def filled(tmp_path):
    """A cache with a test-transform entry, a training view, an entry from before entries described themselves, a
    stale temporary file, and a few-shot draw."""
    folder = coloured_folder(tmp_path / "images", classes=2, train=2, val=1, test=2)
    cfg = build_config(["coop"], [*TINY, f"data.root={folder}", "data.shots=2"])
    data = prepare_data(cfg)
    backbone = FrozenCLIP.load("tiny-vit")
    cache_dir = tmp_path / "cache"
    frozen_features(backbone, data.test, cache_dir, 8, 0, CPU, "fp32", progress=False)
    TrainingViews(backbone, data.train, 1, 0, True, 8, 0, CPU, "fp32", cache_dir, progress=False).features(0)
    items, features, labels = items_and_tensors(tmp_path)
    FeatureCache(cache_dir).save("legacy", features, labels, "written before du")
    leftover = cache_dir / "features" / ".dead.safetensors.x.tmp"
    leftover.write_bytes(b"0" * 1000)
    os.utime(leftover, (time.time() - 2 * cache_admin.STALE_TEMPORARY_S,) * 2)
    draw = cache_dir / "fewshot" / "images-0" / "shots_2-seed_1.json"
    draw.parent.mkdir(parents=True)
    draw.write_text("{}")
    return cache_dir, folder, draw


def test_du_shows_entries_per_backbone_dataset_and_kind(filled, capsys):
    cache_dir, folder, _ = filled
    assert cache_cli("du", "--cache-dir", str(cache_dir)) == 0
    out = capsys.readouterr().out
    rows = {tuple(line.split()[:4]) for line in out.splitlines()[2:] if line.startswith("  ")}
    assert rows == {("tiny-vit", str(folder / "test"), "test-transform", "1"),
                    ("tiny-vit", str(folder / "train"), "training", "view"), ("unknown", "unknown", "unknown", "1")}
    assert "3 entries" in out
    assert "1 temporary files" in out and "Few-shot draws" in out and "1 files" in out


def test_prune_applies_a_budget_now_and_keeps_the_draws(filled, capsys):
    cache_dir, _, draw = filled
    before = sizes(cache_dir / "features")
    budget = max(before.values())
    assert cache_cli("prune", "--cache-dir", str(cache_dir), "--max-gb", str(budget / cache_admin.GB)) == 0
    after = sizes(cache_dir / "features")
    assert 0 < len(after) < len(before) and sum(after.values()) <= budget
    assert not list((cache_dir / "features").glob("*.tmp")) and draw.exists()
    assert "Removed" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cache_cli("prune", "--cache-dir", str(cache_dir), "--max-gb", "0")


def test_clear_asks_first_and_removes_features_not_draws(filled, monkeypatch, capsys):
    cache_dir, _, draw = filled
    for answer in ("n", EOFError()):
        def reply(_question, answer=answer):
            if isinstance(answer, Exception):
                raise answer
            return answer
        monkeypatch.setattr("builtins.input", reply)
        assert cache_cli("clear", "--cache-dir", str(cache_dir)) == 1
        assert len(sizes(cache_dir / "features")) == 3
    monkeypatch.setattr("builtins.input", lambda _question: "y")
    assert cache_cli("clear", "--cache-dir", str(cache_dir)) == 0
    assert os.listdir(cache_dir / "features") == [] and draw.exists()
    assert "Removed 3 feature entries" in capsys.readouterr().out
    assert cache_cli("clear", "--yes", "--cache-dir", str(cache_dir)) == 0


@pytest.mark.slow
def test_a_full_disk_stops_caching_with_one_warning_and_the_run_gives_the_same_result(
        digits_root, tmp_path, baseline, monkeypatch, caplog):
    monkeypatch.setattr(cache_module, "_disk_full", False)  # restored afterwards: other tests cache again
    writes = []

    def full(path, data):
        writes.append(path)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(cache_module, "atomic_write_bytes", full)
    with caplog.at_level(logging.WARNING, logger="promptclip"):
        run(config(digits_root, tmp_path, "full"), progress=False)
    assert same(outcome(tmp_path / "full"), baseline[0])
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(writes) == 1 and len(warnings) == 1 and "full" in warnings[0] and "No space" in warnings[0]
    assert sizes(tmp_path / "cache" / "features") == {}


@pytest.mark.slow
def test_a_file_size_limit_while_writing_an_entry_is_a_full_disk(tmp_path):
    """A real EFBIG from the kernel (RLIMIT_FSIZE, SIGXFSZ ignored): one warning, no entry, no temporary left."""
    script = textwrap.dedent("""
        import logging, os, resource, signal, sys
        import torch
        from promptclip.engine.cache import FeatureCache
        logging.basicConfig(level=logging.WARNING)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        cache = FeatureCache(sys.argv[1])
        for key in ("a", "b"):
            cache.save(key, torch.randn(64, 32), torch.zeros(64, dtype=torch.long), "too big")
        print(sorted(os.listdir(cache.directory)))
    """)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert done.stderr.count("WARNING") == 1 and "File too large" in done.stderr
