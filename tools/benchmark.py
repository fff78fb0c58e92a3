"""Time promptclip's core operations on ViT-B/16 (random weights) and record them in docs/benchmarks.md.

    python tools/benchmark.py                       # everything, printed
    python tools/benchmark.py --only text coop --write docs/benchmarks.md
"""
import argparse
import datetime
import os
import platform
import sys

import torch

from promptclip.backbone import FrozenCLIP
from promptclip.bench import speed
from promptclip.engine.precision import resolve_device

SECTIONS = ("startup", "text", "zeroshot", "coop", "learners", "cocoop")


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"


def run_sections(backbone, device, sections, precision):
    rows = []
    if "startup" in sections:
        rows += speed.cli_startup()
    if "text" in sections:
        rows += speed.text_truncation(backbone, device)
    if "zeroshot" in sections:
        rows.append(speed.zero_shot_throughput(backbone, device, precision=precision))
    if "coop" in sections:
        for classes in (10, 100):
            rows.append(speed.learner_step(backbone, device, ["coop"], [], "CoOp 16 ctx", classes,
                                           precision=precision))
    if "learners" in sections:
        for label, presets, overrides in speed.LEARNER_STEPS:
            rows.append(speed.learner_step(backbone, device, presets, overrides, label, precision=precision))
    if "cocoop" in sections:
        rows += speed.cocoop_batched_vs_loop(backbone, device)
    return rows


def to_markdown(rows, header: str) -> str:
    lines = [header, "", "| operation | seconds | peak memory (MB) | notes |", "|---|---|---|---|"]
    for r in rows:
        notes = []
        if "images_per_second" in r:
            notes.append(f"{r['images_per_second']:.1f} images/s")
        if "ratio" in r:
            notes.append(f"{r['ratio']:.1f}× python -c pass")
        if "parameters" in r:
            notes.append(f"{r['parameters']:,} prompt parameters")
        peak = f"{r['peak_mb']:.0f}" if r.get("peak_mb") is not None else ""
        lines.append(f"| {r['operation']} | {r['seconds']:.3f} | {peak} | {', '.join(notes)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--write", metavar="MARKDOWN", help="append the table to this file")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    backbone = FrozenCLIP.load(args.model, pretrained=None, device=device)
    rows = run_sections(backbone, device, args.only, args.precision)
    command = "python tools/benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv)
    header = (f"### {args.model}, {machine(device)}, {datetime.date.today().isoformat()}\n\n"
              f"Command: `{command.strip()}`")
    table = to_markdown(rows, header)
    print(table)
    if args.write:
        with open(args.write, "a") as f:
            f.write("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
