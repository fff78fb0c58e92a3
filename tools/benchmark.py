"""Time promptclip's training steps, evaluation and start-up on real-size backbones (random weights) and record them
in docs/benchmarks.md.

    python tools/benchmark.py --threads 2                          # CPU: every section, printed
    python tools/benchmark.py --only steps --threads 2 --write docs/benchmarks.md
    python tools/benchmark.py --device cuda --model ViT-B-16 ViT-L-14 --precision bf16 fp16 --batch 32 \\
        --classes 100 1000 --cocoop-batch 1 --only zeroshot steps --write docs/benchmarks.md     # the GPU tables

A training step is timed in turn with the plain image-tower forward of the same batch; its row gives the fastest of
each (the least disturbed by other load) and their ratio. On CPU every step row runs in a fresh process, so its peak
resident memory is its own; on a GPU the peak is the memory allocated during the step (a row that runs out of GPU
memory says so and the others go on).

``features`` counts image-tower work instead of timing it: the few-shot protocol's sweep (shots {1, 2, 4, 8, 16},
seeds {1, 2, 3}, its epoch rules, ``hparams=val``) of CoOp, then every method on features, on digits with a
validation split, all runs sharing one backbone and one feature cache as a sweep does. It counts the images the
image tower encodes per method, checks that no (image, view) is encoded twice (every encoded row is a cache entry
written once), and times the methods-on-features part of the sweep beside one 16-shot CoOp run:

    python tools/benchmark.py --only features --model tiny-vit --threads 2 --write docs/benchmarks.md

Training from cached views (warm vs cold steps, the few-shot sweep's image-tower work, ``train.views``) is measured by
``tools/views_speed.py``, which trains real runs; both write to docs/benchmarks.md.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from promptclip.backbone import FrozenCLIP
from promptclip.bench import speed
from promptclip.devices import resolve_device, resolve_precision

SECTIONS = ("startup", "text", "zeroshot", "steps", "cocoop", "features")
#: the methods on features, as the few-shot protocol runs them (presets in configs/methods/)
FEATURE_METHODS = ("clip_adapter", "tip_adapter", "tip_adapter_f", "taskres", "lp_plus_plus", "zs_lp", "gda")



def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"


def step_specs(args) -> list:
    """(method, classes, batch) of every step row: each method at ``--batch``, CoCoOp also at ``--cocoop-batch``."""
    specs = []
    for classes in args.classes:
        for method in args.methods:
            extra = [b for b in args.cocoop_batch if b != args.batch] if method == "cocoop" else []
            specs += [(method, classes, batch) for batch in [args.batch, *extra]]
    return specs


def step_row(backbone, device, spec, precision: str, repeats: int) -> dict:
    method, classes, batch = spec
    try:
        return speed.learner_step(backbone, device, method, num_classes=classes, batch=batch, precision=precision,
                                  repeats=repeats)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"operation": f"{method}: train step, {classes} classes, batch {batch}, {precision}",
                "seconds": None, "note": "out of GPU memory"}


def isolated_step_row(args, model: str, spec, precision: str) -> dict:
    """:func:`step_row` in a fresh process, whose peak resident memory is then the row's own."""
    row = json.dumps({"model": model, "device": args.device, "threads": args.threads, "spec": spec,
                      "precision": precision, "repeats": args.repeats})
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--row", row], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark row {spec} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_row(spec_json: str) -> int:
    spec = json.loads(spec_json)
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = resolve_device(spec["device"])
    backbone = FrozenCLIP.load(spec["model"], pretrained=None, device=device)
    print(json.dumps(step_row(backbone, device, tuple(spec["spec"]), spec["precision"], spec["repeats"])))
    return 0


def run_model(args, model: str, device: torch.device) -> list:
    """Every section but start-up, for one model, at every precision asked for."""
    rows = []
    in_process = {"text", "zeroshot", "cocoop"} & set(args.only) or device.type == "cuda"
    backbone = FrozenCLIP.load(model, pretrained=None, device=device) if in_process else None
    if "text" in args.only:
        rows += speed.text_truncation(backbone, device)
    for precision in dict.fromkeys(resolve_precision(p, device) for p in args.precision):
        if "zeroshot" in args.only:
            rows.append(speed.zero_shot_throughput(backbone, device, args.eval_batch, precision, args.repeats))
        if "steps" in args.only:
            for spec in step_specs(args):
                rows.append(isolated_step_row(args, model, spec, precision) if device.type == "cpu" else
                            step_row(backbone, device, spec, precision, args.repeats))
    if "cocoop" in args.only:
        rows += speed.cocoop_batched_vs_loop(backbone, device)
    return rows


def fmt(value, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def to_markdown(rows, header: str) -> str:
    lines = [header, "", "| operation | seconds | ratio | peak memory (MB) | notes |", "|---|---|---|---|---|"]
    for r in rows:
        notes = [r["note"]] if "note" in r else []
        if "images_per_second" in r:
            notes.append(f"{r['images_per_second']:.1f} images/s")
        if "forward_seconds" in r:
            notes.append(f"image forward {r['forward_seconds']:.3f} s")
        if r.get("before_mb") is not None:
            notes.append(f"{r['peak_mb'] - r['before_mb']:+.0f} MB over the {r['before_mb']:.0f} MB before the step")
        if "parameters" in r:
            notes.append(f"{r['parameters']:,} prompt parameters")
        ratio = f"{r['ratio']:.2f}× {r['unit']}" if "ratio" in r else ""
        lines.append(f"| {r['operation']} | {fmt(r['seconds'], 3)} | {ratio} | {fmt(r.get('peak_mb'), 0)} | "
                     f"{', '.join(notes)} |")
    return "\n".join(lines) + "\n"


def digits_with_val(root: Path, per_class: int = 10) -> Path:
    """scikit-learn's digits as an image folder with a validation split: ``per_class`` training images per class
    moved to ``val/``, so that the methods' ``hparams: val`` searches read features of their own."""
    from promptclip.demo import write_digits

    write_digits(root)
    for folder in sorted((root / "train").iterdir()):
        (root / "val" / folder.name).mkdir(parents=True, exist_ok=True)
        for image in sorted(folder.iterdir())[:per_class]:
            image.rename(root / "val" / folder.name / image.name)
    return root


def feature_sweep(args) -> list:
    """Image-tower work of the few-shot protocol's sweep of CoOp and every method on features on digits, planned by
    the protocol itself (its epoch rules; ``hparams=val``, so the validation features are counted too)."""
    from promptclip.bench.protocol_files import load_protocol, split_overrides
    from promptclip.bench.protocols import expand
    from promptclip.engine import run
    from promptclip.engine.cache import FeatureCache

    work = Path(tempfile.mkdtemp(prefix="feature-sweep-"))
    root = digits_with_val(work / "digits")
    overrides = [f"datasets=[{{name: digits, data: {{name: imagefolder, root: {root}}}}}]",
                 f"methods=[coop, {', '.join(FEATURE_METHODS)}]", "hparams=val",
                 f"shots=[{', '.join(map(str, args.sweep_shots))}]", f"seeds=[{', '.join(map(str, args.sweep_seeds))}]",
                 f"model.name={args.model[0]}", "model.pretrained=null", "train.device=cpu",
                 f"output.root={work / 'runs'}", f"output.cache_dir={work / 'cache'}"]
    protocol_keys, common, scoped = split_overrides(overrides)
    specs = expand(load_protocol("few_shot", protocol_keys), common, scoped)  # CoOp's runs first
    torch.manual_seed(0)
    backbone = FrozenCLIP.load(args.model[0], None)
    encoded, saved, encode, save = [], [], backbone.encode_image, FeatureCache.save
    backbone.encode_image = lambda x, prompts=None: encoded.append(len(x)) or encode(x, prompts)
    FeatureCache.save = lambda self, key, features, labels, note: saved.append((key, len(features))) or save(
        self, key, features, labels, note)
    by_method, seconds = {}, {}
    try:
        for spec in specs:
            start, began = sum(encoded), time.time()
            run(spec.config, progress=False, backbone=backbone)
            by_method[spec.method] = by_method.get(spec.method, 0) + sum(encoded) - start
            part = "CoOp, all runs" if spec.method == "coop" else "the methods on features, all runs"
            seconds[part] = seconds.get(part, 0.0) + time.time() - began
            if spec.method == "coop" and (spec.shots, spec.seed) == (max(args.sweep_shots), args.sweep_seeds[0]):
                seconds[f"one CoOp run ({spec.shots} shots, {spec.config.train.epochs} epochs)"] = time.time() - began
    finally:
        backbone.encode_image, FeatureCache.save = encode, save
        shutil.rmtree(work, ignore_errors=True)
    keys = [key for key, _ in saved]
    rows = [{"operation": f"{method}: images through the image tower", "seconds": None, "note": f"{count:,}"}
            for method, count in by_method.items()]
    rows.append({"operation": f"all {len(specs)} runs: images encoded / rows written to the feature cache",
                 "seconds": None, "note": f"{sum(encoded):,} / {sum(n for _, n in saved):,}; every cache entry "
                                          f"written once: {len(keys) == len(set(keys))}"})
    rows += [{"operation": f"wall time: {what}", "seconds": value} for what, value in seconds.items()]
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=["ViT-B-16"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", nargs="+", default=["auto"], choices=("fp32", "bf16", "fp16", "auto"),
                        help="auto: fp32 on CPU, bf16 (or fp16) on a GPU")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--methods", nargs="+", choices=speed.METHODS, default=list(speed.METHODS))
    parser.add_argument("--batch", type=int, default=4, help="training-step batch")
    parser.add_argument("--cocoop-batch", type=int, nargs="*", default=[],
                        help="further batches for CoCoOp's step (the reference trains at 1)")
    parser.add_argument("--classes", type=int, nargs="+", default=[10])
    parser.add_argument("--eval-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed repeats per row, after one warm-up (steps: the fastest counts; others: the median)")
    parser.add_argument("--write", metavar="MARKDOWN", help="append the tables to this file")
    parser.add_argument("--sweep-shots", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="`features` sweep shots")
    parser.add_argument("--sweep-seeds", type=int, nargs="+", default=[1, 2, 3], help="`features` sweep seeds")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # one step row, for isolated_step_row
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.row:
        return run_row(args.row)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    command = "python tools/benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv)
    today = datetime.date.today().isoformat()
    tables = []
    if "startup" in args.only:
        tables.append(to_markdown(speed.cli_startup(), f"### CLI start-up, {machine(device)}, {today}\n\n"
                                                       f"Command: `{command.strip()}`"))
    if "features" in args.only:
        shots = ", ".join(map(str, args.sweep_shots))
        seeds = ", ".join(map(str, args.sweep_seeds))
        tables.append(to_markdown(feature_sweep(args), f"### Few-shot sweep on features, {args.model[0]}, digits, "
                                                       f"shots {{{shots}}}, seeds {{{seeds}}}, {machine(device)}, "
                                                       f"{today}\n\nCommand: `{command.strip()}`"))
    if set(args.only) - {"startup", "features"}:
        for model in args.model:
            tables.append(to_markdown(run_model(args, model, device), f"### {model}, {machine(device)}, {today}\n\n"
                                                                      f"Command: `{command.strip()}`"))
    text = "\n".join(tables)
    print(text)
    if args.write:
        with open(args.write, "a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
