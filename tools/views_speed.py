"""Measure training from cached views on scikit-learn's digits (an image folder written on the fly), on CPU.

    python tools/views_speed.py steps --model ViT-B-16 --shots 16     # CoOp/CoCoOp epochs: cold vs warm cache
    python tools/views_speed.py sweep --model tiny-vit                # images through the image tower in a sweep
    python tools/views_speed.py sweep --model tiny-vit --views 10 --shared-only   # the same with train.views=10
    python tools/views_speed.py views --model tiny-vit --threads 2    # CoOp, 200 epochs: train.views=10 vs fresh

``sweep`` and ``views`` also run on a checkout without cached views (e.g. the previous commit unpacked with
``git archive HEAD~1 | tar -x -C /tmp/old``) when started with ``PYTHONPATH=/tmp/old``, for the figures of today.
Every run shares one backbone object, as a sweep with pretrained weights shares one set of weights. Prints JSON lines.
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from promptclip.backbone import FrozenCLIP
from promptclip.config import TrainConfig, build_config
from promptclip.demo import write_digits
from promptclip.engine import run

CACHED_VIEWS = hasattr(TrainConfig(), "views")
#: the few-shot protocol's CoOp epochs (configs/protocols/few_shot.yaml); CoCoOp keeps its preset's 10
COOP_EPOCHS = {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}


def counting(backbone: FrozenCLIP) -> list:
    """Count the images ``backbone``'s image tower encodes (appended per call)."""
    images, encode = [], backbone.encode_image
    backbone.encode_image = lambda x, prompts=None: images.append(len(x)) or encode(x, prompts)
    return images


def config(preset: str, root: Path, out: Path, cache: Path, model: str, *extra: str):
    common = [f"data.root={root}", f"model.name={model}", "model.pretrained=null", "train.device=cpu",
              f"output.root={out}", f"output.cache_dir={cache}"]
    return build_config([preset], [*common, *extra])


def steps(args, root: Path, work: Path, backbone: FrozenCLIP) -> None:
    """Per-epoch seconds of CoOp (``--shots``) and CoCoOp (1 shot), their presets, on a cold, then a warm cache."""
    for preset, shots in (("coop", args.shots), ("cocoop", 1)):
        cache = work / f"cache-{preset}"
        seconds, cpu = {}, {}
        for state in ("cold", "warm"):
            cfg = config(preset, root, work / state, cache, args.model, f"data.shots={shots}",
                         f"train.epochs={args.epochs}", "train.evaluate=false", f"output.dir={work / state / preset}")
            started = time.process_time()
            run(cfg, progress=False, backbone=backbone)
            cpu[f"{state} cpu seconds per epoch"] = round((time.process_time() - started) / args.epochs, 2)
            lines = (work / state / preset / "metrics.jsonl").read_text().splitlines()
            seconds[state] = sum(json.loads(line)["seconds"] for line in lines) / len(lines)
        print(json.dumps({"what": "epoch seconds", "method": preset, "model": args.model, "shots": shots,
                          "images": 10 * shots, "batch": cfg.train.batch_size, **seconds, **cpu,
                          "speed-up": round(seconds["cold"] / seconds["warm"], 1)}), flush=True)


def sweep(args, root: Path, work: Path, backbone: FrozenCLIP) -> None:
    """Images encoded by zero-shot + linear probe + CoOp + CoCoOp, shots {1, 2, 4}, seeds {1, 2, 3}: in one cache
    (a sweep), and with a cache of its own per run; ``--views K`` sets train.views=K for CoOp and CoCoOp."""
    images = counting(backbone)
    runs = [("zeroshot", 0, 1)] + [(m, k, s) for s in (1, 2, 3) for k in (1, 2, 4)
                                   for m in ("linear_probe", "coop", "cocoop")]
    for shared in (True,) if args.shared_only else (True, False):
        before = sum(images)
        by_method: dict = {}
        for i, (method, shots, seed) in enumerate(runs):
            extra = [f"data.shots={shots}", f"seed={seed}"]
            if method == "coop":
                extra.append(f"train.epochs={COOP_EPOCHS[shots]}")
            if args.views and method in ("coop", "cocoop"):
                extra.append(f"train.views={args.views}")
            cache = work / ("cache" if shared else f"cache-{i}")
            start = sum(images)
            run(config(method, root, work / f"sweep-{shared}", cache, args.model, *extra), progress=False,
                backbone=backbone)
            by_method[method] = by_method.get(method, 0) + sum(images) - start
        print(json.dumps({"what": "sweep images encoded", "cached views": CACHED_VIEWS, "views": args.views,
                          "one cache": shared,
                          "total": sum(images) - before, **by_method}), flush=True)


def views(args, root: Path, work: Path, backbone: FrozenCLIP) -> None:
    """CoOp (its preset, 200 epochs) end to end, training and evaluation: fresh views with a cold cache, then
    ``train.views=10`` with a cold cache."""
    images = counting(backbone)
    settings = [("fresh views", [])] + ([("train.views=10", ["train.views=10"])] if CACHED_VIEWS else [])
    for label, extra in settings:
        start, cpu, encoded = time.perf_counter(), time.process_time(), sum(images)
        result = run(config("coop", root, work / label, work / f"cache-{label}", args.model,
                            f"data.shots={args.shots}", "train.epochs=200", *extra), progress=False, backbone=backbone)
        print(json.dumps({"what": "coop 200 epochs end to end", "cached views": CACHED_VIEWS, "setting": label,
                          "model": args.model, "shots": args.shots, "seconds": round(time.perf_counter() - start, 1),
                          "cpu seconds": round(time.process_time() - cpu, 1),
                          "images encoded": sum(images) - encoded,
                          "test accuracy": round(result["test"]["accuracy"], 2)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("steps", "sweep", "views"))
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run of `steps`")
    parser.add_argument("--shots", type=int, default=1, help="shots of `views`, and of CoOp in `steps`")
    parser.add_argument("--views", type=int, default=0, help="train.views of CoOp and CoCoOp in `sweep`")
    parser.add_argument("--shared-only", action="store_true", help="`sweep`: only the runs sharing one cache")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="views-speed-"))
    root = write_digits(work / "digits")
    torch.manual_seed(0)
    backbone = FrozenCLIP.load(args.model, None)
    {"steps": steps, "sweep": sweep, "views": views}[args.what](args, root, work, backbone)


if __name__ == "__main__":
    main()
