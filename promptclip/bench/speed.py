"""Speed and memory of the core operations on a real-size backbone (random weights), for docs/benchmarks.md."""
from __future__ import annotations

import resource
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch

from ..backbone import FrozenCLIP
from ..config import build_config
from ..engine.precision import autocast
from ..engine.run import build_model
from ..data.base import Dataset


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
    """Peak GPU memory since the last reset, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
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


def learner_step(backbone: FrozenCLIP, device, presets: List[str], overrides: List[str], label: str,
                 num_classes: int = 10, batch: int = 8, precision: str = "fp32") -> Dict:
    """One forward + backward + SGD step of a method on random images."""
    cfg = build_config(presets, ["data.root=/tmp", *overrides])
    model = build_model(cfg, backbone, fake_dataset(num_classes)).to(device)
    for loss in model.losses.values():  # DAPT prototypes: random stand-ins (a step costs the same)
        if hasattr(loss, "prototypes"):
            loss.prototypes = torch.nn.functional.normalize(torch.randn(num_classes, backbone.embed_dim), dim=-1).to(device)
    params = model.trainable_parameters()
    optimizer = torch.optim.SGD(params, lr=1e-3)
    images = torch.randn(batch, 3, backbone.image_size, backbone.image_size, device=device)
    labels = torch.randint(0, num_classes, (batch,), device=device)

    def step():
        with autocast(device, precision):
            out = model(images, labels)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    reset_peak(device)
    seconds = timed(step, device, repeats=2)
    return {"operation": f"{label}: train step, {num_classes} classes, batch {batch}, {precision}",
            "seconds": seconds, "peak_mb": peak_memory_mb(device),
            "parameters": sum(p.numel() for p in params)}


def zero_shot_throughput(backbone: FrozenCLIP, device, batch: int = 32, precision: str = "fp32") -> Dict:
    images = torch.randn(batch, 3, backbone.image_size, backbone.image_size, device=device)
    with torch.no_grad():
        seconds = timed(lambda: _encode(backbone, images, device, precision), device)
    return {"operation": f"zero-shot evaluation, image tower, batch {batch}, {precision}",
            "seconds": seconds, "images_per_second": batch / seconds}


def _encode(backbone, images, device, precision):
    with autocast(device, precision):
        return backbone.encode_image(images)


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
                     "seconds": timed(fn, device, repeats=2), "peak_mb": peak_memory_mb(device)})
    return rows


#: (label, presets, overrides) of the learner step benchmarks
LEARNER_STEPS = [
    ("CoOp 16 ctx", ["coop"], []),
    ("CoCoOp 4 ctx", ["cocoop"], []),
    ("MaPLe 2 ctx depth 9", ["maple"], []),
    ("IVLP 2+2 depth 12", ["ivlp"], []),
    ("VPT-deep 8 tokens (deep vision prompting)", ["vpt_deep_clip"], []),
    ("VFPT: VPT-deep 16 tokens, half Fourier", ["vfpt"], []),
    ("DAPT (CoOp 16 + VPT 16 + losses)", ["dapt"], []),
]


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
        rows = [{"operation": "start-up: python -c pass", "seconds": base, "ratio": 1.0},
                {"operation": "start-up: python -c 'import torch, open_clip'",
                 "seconds": wall(["-c", "import torch, open_clip"])}]
        for label, argv in STARTUP_COMMANDS:
            rows.append({"operation": f"start-up: {label}",
                         "seconds": wall(["-m", "promptclip", *(a.format(empty=empty) for a in argv)])})
    for row in rows:
        row["ratio"] = row["seconds"] / base
    return rows
