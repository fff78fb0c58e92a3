"""Speed and memory of training steps, evaluation and start-up on a real-size backbone (random weights), for
docs/benchmarks.md (run by tools/benchmark.py)."""
from __future__ import annotations

import resource
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from ..backbone import FrozenCLIP
from ..config import build_config
from ..data.base import Dataset
from ..engine.precision import autocast
from ..engine.runner import build_model
from ..hooks import PrepareContext


def timed(fn: Callable[[], object], device: torch.device, repeats: int = 3, warmup: int = 1) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after ``warmup`` calls."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory_mb(device: torch.device) -> Optional[float]:
    """Peak GPU memory since the last reset, or the process's peak resident memory on CPU (Linux's VmHWM, which
    starts afresh in a new program, unlike ``ru_maxrss``, which keeps the parent's peak at the fork)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def fake_dataset(num_classes: int) -> Dataset:
    names = [f"class number {i}" for i in range(num_classes)]
    return Dataset("synthetic", names, [], [], [], root=None)


def text_truncation(backbone: FrozenCLIP, device, prompts: int = 100) -> List[Dict]:
    ids = backbone.tokenize([f"a photo of a class number {i}." for i in range(prompts)])
    rows = []
    with torch.no_grad():
        for truncate in (False, True):
            seconds = timed(lambda: backbone.encode_text_ids(ids, truncate=truncate), device)
            rows.append({"operation": f"encode_text, {prompts} prompts, "
                                      f"{'truncated to the longest EOT' if truncate else 'full 77 tokens'}",
                         "seconds": seconds})
    return rows


#: the method presets whose training step is timed
METHODS = ("coop", "cocoop", "maple", "ivlp", "vpt_deep_clip", "vpt_shallow", "vfpt", "dapt", "kgcoop", "promptsrc")


def learner_step(backbone: FrozenCLIP, device, preset: str, overrides: Sequence[str] = (), num_classes: int = 10,
                 batch: int = 4, precision: str = "fp32", repeats: int = 3) -> Dict:
    """One training step of a method preset on random images (forward, loss, backward, SGD step; fp16 with a grad
    scaler), timed in turn with the plain image-tower forward (no prompts, no gradient) of the same batch: the fastest
    of ``repeats`` of each (the least disturbed by other load) and their ratio. Memory: before the first forward and
    at the peak (GPU: allocated tensors; CPU: the process's peak resident set, the row's own only in a fresh
    process)."""
    cfg = build_config([preset], ["data.root=/tmp", *overrides])
    dataset = fake_dataset(num_classes)
    train_features = (torch.nn.functional.normalize(torch.randn(2 * num_classes, backbone.embed_dim), dim=-1),
                      torch.arange(num_classes).repeat(2))  # random stand-ins (a step costs the same)
    context = PrepareContext(backbone, dataset.classnames, dataset.template, dataset.name, device, cfg.train.epochs,
                             lambda: train_features, lambda view: train_features)
    model = build_model(cfg, backbone, dataset, context).to(device).train()
    params = model.trainable_parameters()
    optimizer = torch.optim.SGD(params, lr=1e-3)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    images = torch.randn(batch, 3, backbone.image_size, backbone.image_size, device=device)
    labels = torch.randint(0, num_classes, (batch,), device=device)

    def forward():
        with torch.no_grad():
            _encode(backbone, images, device, precision)

    def step():
        with autocast(device, precision):
            loss = model(images, labels).loss
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        optimizer.zero_grad(set_to_none=True)

    before = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else peak_memory_mb(device)
    reset_peak(device)
    pairs = [(timed(forward, device, 1, warmup=int(i == 0)), timed(step, device, 1, warmup=int(i == 0)))
             for i in range(repeats)]
    fastest_forward, fastest_step = min(f for f, _ in pairs), min(s for _, s in pairs)
    return {"operation": f"{preset}: train step, {num_classes} classes, batch {batch}, {precision}",
            "seconds": fastest_step, "ratio": fastest_step / fastest_forward, "unit": "image forward",
            "forward_seconds": fastest_forward, "before_mb": before, "peak_mb": peak_memory_mb(device),
            "parameters": sum(p.numel() for p in params)}


def zero_shot_throughput(backbone: FrozenCLIP, device, batch: int = 32, precision: str = "fp32",
                         repeats: int = 3) -> Dict:
    """Evaluation throughput of the image tower (what zero-shot, CoOp and CoCoOp evaluation run per image)."""
    images = torch.randn(batch, 3, backbone.image_size, backbone.image_size, device=device)
    reset_peak(device)
    with torch.no_grad():
        seconds = timed(lambda: _encode(backbone, images, device, precision), device, repeats)
    return {"operation": f"evaluation, image tower, batch {batch}, {precision}", "seconds": seconds,
            "images_per_second": batch / seconds, "peak_mb": _gpu_peak(device)}


def _encode(backbone, images, device, precision):
    with autocast(device, precision):
        return backbone.encode_image(images)


def _gpu_peak(device) -> Optional[float]:
    """Peak GPU memory since the last reset; None on CPU, where the process's peak covers every earlier row too."""
    return peak_memory_mb(device) if device.type == "cuda" else None


def cocoop_batched_vs_loop(backbone: FrozenCLIP, device, num_classes: int = 10, batch: int = 8) -> List[Dict]:
    """CoCoOp's class features for a batch: all B×C prompts at once vs the reference's loop over images."""
    cfg = build_config(["cocoop"], ["data.root=/tmp"])
    model = build_model(cfg, backbone, fake_dataset(num_classes)).to(device)
    feats = torch.nn.functional.normalize(torch.randn(batch, backbone.embed_dim, device=device), dim=-1)

    def batched():
        model.text.text_features(backbone, feats).sum().backward()

    def loop():
        torch.stack([model.text.text_features(backbone, feats[i:i + 1])[0] for i in range(batch)]).sum().backward()

    rows = []
    for label, fn in (("batched B×C", batched), ("per-image loop", loop)):
        reset_peak(device)
        rows.append({"operation": f"CoCoOp text side fwd+bwd, {label}, {num_classes} classes, batch {batch}",
                     "seconds": timed(fn, device, repeats=2), "peak_mb": _gpu_peak(device)})
    return rows


STARTUP_COMMANDS = (("promptclip --help", ["--help"]), ("promptclip train --help", ["train", "--help"]),
                    ("promptclip report EMPTY_DIR", ["report", "{empty}"]),
                    ("promptclip data check EMPTY_DIR", ["data", "check", "{empty}"]))


def cli_startup(repeats: int = 5) -> List[Dict]:
    """Wall time of light CLI commands in fresh processes, as a ratio to ``python -c pass`` (and to importing torch,
    which these commands must not do)."""
    import subprocess
    import sys
    import tempfile

    def wall(args: List[str]) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, *args], capture_output=True, check=False)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    with tempfile.TemporaryDirectory() as empty:
        base = wall(["-c", "pass"])
        rows = [{"operation": "start-up: python -c pass", "seconds": base},
                {"operation": "start-up: python -c 'import torch, open_clip'",
                 "seconds": wall(["-c", "import torch, open_clip"])}]
        for label, argv in STARTUP_COMMANDS:
            rows.append({"operation": f"start-up: {label}",
                         "seconds": wall(["-m", "promptclip", *(a.format(empty=empty) for a in argv)])})
    for row in rows:
        row["ratio"], row["unit"] = row["seconds"] / base, "python -c pass"
    return rows
