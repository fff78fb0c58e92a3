"""Measure training from cached views on scikit-learn's digits (an image folder written on the fly), on CPU.

    python tools/views_speed.py steps --model ViT-B-16 --rounds 3     # CoOp/CoCoOp epochs: cold vs warm cache
    python tools/views_speed.py sweep --model tiny-vit                # images through the image tower in a sweep
    python tools/views_speed.py sweep --model tiny-vit --views 10 --shared-only   # the same with train.views=10
    python tools/views_speed.py views --model tiny-vit --threads 2    # CoOp, 200 epochs: train.views=10 vs fresh
    python tools/views_speed.py profile --model ViT-B-16              # where a warm-cache step spends its time

``sweep`` and ``views`` also run on a checkout without cached views (the commit before them unpacked with
``git archive 871d856 | tar -x -C /tmp/old``) when started with ``PYTHONPATH=/tmp/old``, for the figures of before.
Every run shares one backbone object, as a sweep with pretrained weights shares one set of weights. Prints JSON lines.
"""
import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from promptclip.backbone import FrozenCLIP
from promptclip.bench.speed import fake_dataset
from promptclip.config import TrainConfig, build_config, preset_names
from promptclip.demo import write_digits
from promptclip.engine import run
from promptclip.engine.runner import build_model

CACHED_VIEWS = hasattr(TrainConfig(), "views")
#: KgCoOp joins the sweep where the checkout has it (its preset: 100 epochs, batch 128)
KGCOOP = "methods/kgcoop" in preset_names()
#: methods of the sweep that train on frozen views, each (seed, shots) group in this order
VIEW_METHODS = ("coop", "cocoop") + (("kgcoop",) if KGCOOP else ())
#: the few-shot protocol's CoOp epochs (configs/protocols/few_shot.yaml); CoCoOp (10) and KgCoOp (100) keep their
#: presets' epochs
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
    """Per-epoch seconds of CoOp (``--shots``) and CoCoOp (1 shot), their presets, on a cold, then a warm cache;
    ``--rounds`` rounds, each on fresh caches, the methods in turn, and the median of the rounds' speed-ups."""
    speedups: dict = {"coop": [], "cocoop": []}
    for round_ in range(args.rounds):
        for preset, shots in (("coop", args.shots), ("cocoop", 1)):
            cache = work / f"cache-{preset}-{round_}"
            seconds, cpu = {}, {}
            for state in ("cold", "warm"):
                out = work / f"{state}-{round_}"
                cfg = config(preset, root, out, cache, args.model, f"data.shots={shots}",
                             f"train.epochs={args.epochs}", "train.evaluate=false", f"output.dir={out / preset}")
                started = time.process_time()
                run(cfg, progress=False, backbone=backbone)
                cpu[f"{state} cpu seconds per epoch"] = round((time.process_time() - started) / args.epochs, 2)
                lines = (out / preset / "metrics.jsonl").read_text().splitlines()
                seconds[state] = round(sum(json.loads(line)["seconds"] for line in lines) / len(lines), 3)
            speedups[preset].append(seconds["cold"] / seconds["warm"])
            print(json.dumps({"what": "epoch seconds", "round": round_, "method": preset, "model": args.model,
                              "shots": shots, "images": 10 * shots, "batch": cfg.train.batch_size, **seconds, **cpu,
                              "speed-up": round(seconds["cold"] / seconds["warm"], 1)}), flush=True)
    print(json.dumps({"what": "median speed-up, warm over cold", "rounds": args.rounds,
                      **{m: round(statistics.median(v), 1) for m, v in speedups.items()}}), flush=True)


def sweep(args, root: Path, work: Path, backbone: FrozenCLIP) -> None:
    """Images encoded by zero-shot + linear probe + CoOp + CoCoOp (+ KgCoOp), shots {1, 2, 4}, seeds {1, 2, 3}: in
    one cache (a sweep), and with a cache of its own per run; ``--views K`` sets train.views=K for the view-trained
    methods. KgCoOp runs last in each (seed, shots) group, so the total without it is the total less its count."""
    images = counting(backbone)
    runs = [("zeroshot", 0, 1)] + [(m, k, s) for s in (1, 2, 3) for k in (1, 2, 4)
                                   for m in ("linear_probe", *VIEW_METHODS)]
    for shared in (True,) if args.shared_only else (True, False):
        before = sum(images)
        by_method: dict = {}
        for i, (method, shots, seed) in enumerate(runs):
            extra = [f"data.shots={shots}", f"seed={seed}"]
            if method == "coop":
                extra.append(f"train.epochs={COOP_EPOCHS[shots]}")
            if args.views and method in VIEW_METHODS:
                extra.append(f"train.views={args.views}")
            cache = work / ("cache" if shared else f"cache-{i}")
            start = sum(images)
            run(config(method, root, work / f"sweep-{shared}", cache, args.model, *extra), progress=False,
                backbone=backbone)
            by_method[method] = by_method.get(method, 0) + sum(images) - start
        total = sum(images) - before
        print(json.dumps({"what": "sweep images encoded", "cached views": CACHED_VIEWS, "views": args.views,
                          "one cache": shared, "total": total, **by_method,
                          "total without kgcoop": total - by_method.get("kgcoop", 0)}), flush=True)


def views(args, root: Path, work: Path, backbone: FrozenCLIP) -> None:
    """CoOp (its preset, ``--epochs`` epochs, 200 by default) end to end, training and evaluation: fresh views, then
    ``train.views=10``, each on a cache of its own that holds only the test split's features (encoded once
    beforehand, as in a sweep), so the two differ only in their training views."""
    images = counting(backbone)
    test_cache = work / "cache-test"
    run(config("zeroshot", root, work / "zeroshot", test_cache, args.model), progress=False, backbone=backbone)
    settings = [("fresh views", [])] + ([("train.views=10", ["train.views=10"])] if CACHED_VIEWS else [])
    for label, extra in settings:
        cache = work / f"cache-{label}"
        shutil.copytree(test_cache, cache)
        start, cpu, encoded = time.perf_counter(), time.process_time(), sum(images)
        result = run(config("coop", root, work / label, cache, args.model, f"data.shots={args.shots}",
                            f"train.epochs={args.epochs}", f"output.dir={work / label / 'coop'}", *extra),
                     progress=False, backbone=backbone)
        epochs = [json.loads(line)["seconds"] for line in (work / label / "coop" / "metrics.jsonl").open()]
        print(json.dumps({"what": f"coop {args.epochs} epochs end to end", "cached views": CACHED_VIEWS,
                          "setting": label, "model": args.model, "shots": args.shots,
                          "seconds": round(time.perf_counter() - start, 1),
                          "cpu seconds": round(time.process_time() - cpu, 1),
                          "training seconds": round(sum(epochs), 1),
                          "median epoch seconds, first 10": round(statistics.median(epochs[:10]), 3),
                          "median epoch seconds, after": round(statistics.median(epochs[10:] or epochs), 3),
                          "images encoded": sum(images) - encoded,
                          "test accuracy": round(result["test"]["accuracy"], 2)}), flush=True)


def profile_steps(args, root: Path, work: Path, backbone: FrozenCLIP) -> None:
    """Warm-cache training steps of CoOp (batch 32 of ``--shots`` × 10 images) and CoCoOp (batch 1 and 4) on cached
    features, 10 classes: median seconds of the step, of the text tower's forward and of its backward (from the first
    gradient at its output to the last at its input, by hooks), beside a no-grad image-tower forward of the same batch
    (the work the cache saves); then torch.profiler's operators of CoOp's step."""
    for preset, batch in (("coop", min(32, 10 * args.shots)), ("cocoop", 1), ("cocoop", 4)):
        model = build_model(build_config([preset], ["data.root=/tmp"]), backbone, fake_dataset(10)).train()
        optimizer = torch.optim.SGD(model.trainable_parameters(), lr=1e-3)
        features = torch.nn.functional.normalize(torch.randn(batch, backbone.embed_dim), dim=-1)
        labels, images = torch.randint(0, 10, (batch,)), torch.randn(batch, 3, backbone.image_size,
                                                                     backbone.image_size)
        marks: dict = {}
        encode_text = backbone.encode_text

        def timed_text(embeddings, eot, *rest, **options):
            started = time.perf_counter()
            out = encode_text(embeddings, eot, *rest, **options)
            marks["text forward"] = marks.get("text forward", 0.0) + time.perf_counter() - started
            out.register_hook(lambda grad: mark("backward in", first=True))
            embeddings.register_hook(lambda grad: mark("backward out", first=False))
            return out

        def mark(name: str, first: bool) -> None:
            if not (first and name in marks):
                marks[name] = time.perf_counter()

        def step():
            model(None, labels, image_features=features).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        backbone.encode_text = timed_text
        rows = []
        try:
            for i in range(args.repeats + 1):
                marks.clear()
                started = time.perf_counter()
                step()
                seconds = time.perf_counter() - started
                started = time.perf_counter()
                with torch.no_grad():
                    backbone.encode_image(images)
                if i:  # the first is a warm-up
                    rows.append({"step": seconds, "text forward": marks["text forward"],
                                 "text backward": marks["backward out"] - marks["backward in"],
                                 "image forward": time.perf_counter() - started})
        finally:
            backbone.encode_text = encode_text
        median = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        text = median["text forward"] + median["text backward"]
        print(json.dumps({"what": "warm-cache step", "method": preset, "model": args.model, "batch": batch,
                          "classes": 10, "repeats": args.repeats, **{k: round(v, 3) for k, v in median.items()},
                          "text share of step": round(text / median["step"], 2),
                          "cold step / warm step": round((median["step"] + median["image forward"]) /
                                                         median["step"], 1)}), flush=True)
        if preset == "coop":
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                for _ in range(args.repeats):
                    step()
            print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=12,
                                                                     max_name_column_width=40,
                                                                     max_shapes_column_width=60), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("steps", "sweep", "views", "profile"))
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run of `steps` (default 2) and "
                        "of `views` (default 200)")
    parser.add_argument("--rounds", type=int, default=1, help="`steps`: rounds of cold then warm, each on fresh caches")
    parser.add_argument("--repeats", type=int, default=5, help="`profile`: timed steps per method")
    parser.add_argument("--shots", type=int, default=1, help="shots of `views`, and of CoOp in `steps` and `profile`")
    parser.add_argument("--views", type=int, default=0, help="train.views of CoOp, CoCoOp and KgCoOp in `sweep`")
    parser.add_argument("--shared-only", action="store_true", help="`sweep`: only the runs sharing one cache")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    args = parser.parse_args()
    args.epochs = args.epochs or (200 if args.what == "views" else 2)
    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="views-speed-"))
    root = write_digits(work / "digits")
    torch.manual_seed(0)
    backbone = FrozenCLIP.load(args.model, None)
    {"steps": steps, "sweep": sweep, "views": views, "profile": profile_steps}[args.what](args, root, work, backbone)


if __name__ == "__main__":
    main()
