"""The ``promptclip`` command: argument parsing that calls the library."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
import warnings
from pathlib import Path
from typing import List, Optional

from .bench.commands import examples
from .errors import ConfigError, PromptclipError
from .plugins import load_plugins

OVERRIDES_HELP = "config overrides as dotted keys, e.g. optim.lr=0.01 data.shots=4 text.n_ctx=8"
EVAL_OVERRIDES_HELP = ("evaluation settings as dotted keys (model.*, data.*, train.precision, train.device, "
                       "train.eval_batch_size, output.cache_dir), e.g. data.subsample=new train.eval_batch_size=64")
PRESET_HELP = "preset name (configs/**/NAME.yaml) or YAML file; repeat to merge several, later ones win"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the message (it may be replaced after set-up)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


def _setup_logging(quiet: bool, verbose: bool) -> None:
    """promptclip's own lines on stderr; other libraries' chatter (open_clip's root-logger lines, the hub client's
    retries, DDP's notices) only with ``-v``."""
    logger = logging.getLogger("promptclip")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[promptclip] %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    if verbose:
        logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
        return
    root = logging.getLogger()
    if not root.handlers:  # open_clip logs through the root logger, which would otherwise print to stderr
        root.addHandler(logging.NullHandler())
    for name in ("huggingface_hub", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*find_unused_parameters=True.*")


def _config(args, extra_presets: List[str] = ()):
    from .config import build_config

    return build_config([*extra_presets, *args.config], args.overrides)


def _run_and_report(args, presets: List[str], what: str) -> int:
    """One run; under torchrun (``torchrun --nproc_per_node N -m promptclip train ...``) one DDP run."""
    from .engine import run
    from .runs import default_run_dir

    cfg = _config(args, presets)
    result = run(cfg, progress=not args.quiet, replace=args.replace)  # {} on the other processes of a DDP run
    if result.get("test"):
        print(f"{what} accuracy {result['test']['accuracy']:.2f}%  macro-F1 {result['test']['macro_f1']:.2f}%  "
              f"(run folder: {default_run_dir(cfg)})")
    return 0


def cmd_train(args) -> int:
    return _run_and_report(args, [], "test")


def cmd_zeroshot(args) -> int:
    return _run_and_report(args, ["zeroshot"], "zero-shot")


def cmd_eval(args) -> int:
    from .engine import evaluate_run

    result = evaluate_run(args.run_dir, args.overrides, progress=not args.quiet, force=args.force)
    cached = result.get("cached") and f"  (cached result from {result.get('finished_at', '?')}; --force recomputes)"
    print(f"{result['dataset']} ({result['subsample']}): accuracy {result['test']['accuracy']:.2f}%  "
          f"macro-F1 {result['test']['macro_f1']:.2f}%{cached or ''}")
    return 0


def cmd_predict(args) -> int:
    from .engine.predict import predict

    if args.topk < 1:
        raise ConfigError(f"--topk must be at least 1, not {args.topk}.")

    predictions = predict(args.run_dir, args.images, topk=args.topk, device=args.device)
    if args.json:
        print(json.dumps(predictions, indent=2))
    else:
        for p in predictions:
            print(f"{p['path']}: " + ", ".join(f"{name} {prob:.1%}" for name, prob in p["top"]))
    return 0


def cmd_interpret(args) -> int:
    from .interpret import format_interpretation, interpret_run

    result = interpret_run(args.run_dir, topk=args.topk, device=args.device)
    print(json.dumps(result, indent=2) if args.json else format_interpretation(result))
    return 0


def cmd_demo(args) -> int:
    from .demo import demo

    demo(Path(args.out), shots=args.shots, epochs=args.epochs, progress=not args.quiet)
    return 0


def cmd_config(args) -> int:
    from .config import preset_names, to_yaml

    if args.list:
        print("\n".join(preset_names()))
    else:
        print(to_yaml(_config(args)), end="")
    return 0


def cmd_runs(args) -> int:
    from .run_files import find_runs

    found = find_runs(args.dir)
    if not found:
        print(f"No runs under {args.dir}.")
        return 0
    print(f"{'status':<12} {'epochs':>7} {'accuracy':>8}  run")
    for info in found:
        accuracy = f"{info.accuracy:.2f}" if info.accuracy is not None else "—"
        print(f"{info.status:<12} {info.epochs:>7} {accuracy:>8}  {info.path.relative_to(args.dir)}"
              f"{f'  ({info.detail})' if info.detail else ''}")
    counts: dict = {}
    for info in found:
        counts[info.status] = counts.get(info.status, 0) + 1
    print(", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    return 0


GLOBAL_FLAGS = {"-q": "--quiet", "--quiet": "--quiet", "-v": "--verbose", "--verbose": "--verbose"}


def _command(sub, name: str, help: str, description: str, *example_lines: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=textwrap.fill(description, 110) + examples(*example_lines),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _with_config(p: argparse.ArgumentParser, runs: bool = False, overrides_help: str = OVERRIDES_HELP):
    p.add_argument("-c", "--config", action="append", default=[], metavar="PRESET", help=PRESET_HELP)
    if runs:
        p.add_argument("--replace", action="store_true",
                       help="if the run folder holds a run made with other settings, delete it and run anew")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=overrides_help)
    return p


def _add_run_commands(sub) -> None:
    """train, zeroshot, eval, predict: the commands that make or use a run."""
    p = _with_config(_command(sub, "train", "train prompts and evaluate them (resumes an interrupted run)",
                            "Train prompts with a preset and overrides; writes a run folder.",
                            "promptclip train -c coop data.name=DescribableTextures data.root=~/data data.shots=16 "
                            "seed=1",
                            "promptclip train -c maple data.name=imagefolder data.root=data/digits "
                            "model.name=tiny-vit-deep model.pretrained=null   # offline, random weights"), runs=True)
    p.set_defaults(func=cmd_train)
    p = _with_config(_command(sub, "zeroshot", "zero-shot CLIP on a dataset",
                            "Zero-shot CLIP: the zeroshot preset plus yours.",
                            "promptclip zeroshot data.name=EuroSAT data.root=~/data"), runs=True,
                    overrides_help="config overrides as dotted keys, e.g. text.templates=ensemble "
                                   "train.eval_batch_size=64")
    p.set_defaults(func=cmd_zeroshot)
    p = _command(sub, "eval", "evaluate a run's prompts on another class set or dataset",
                "Evaluate saved prompts; overrides choose the data and how to evaluate, not what was trained. Writes "
                "RUN_DIR/evals/<dataset>-<subsample>-<fingerprint>.json, one file per distinct evaluation (the "
                "fingerprint covers the run and every evaluation setting); an existing one is reused unless --force.",
                "promptclip eval RUN_DIR data.subsample=new",
                "promptclip eval RUN_DIR data.name=ImageNetV2 data.root=~/data")
    p.add_argument("run_dir", type=Path)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=EVAL_OVERRIDES_HELP)
    p.add_argument("--force", action="store_true", help="evaluate again even if the result exists")
    p.set_defaults(func=cmd_eval)
    p = _command(sub, "predict", "top-k classes for image files with a run's prompts",
                "Classify image files with the prompts saved in RUN_DIR.",
                "promptclip predict RUN_DIR IMAGE.png --topk 2")
    p.add_argument("run_dir", type=Path)
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_predict)


def _add_tool_commands(sub) -> None:
    """interpret, demo, config, runs."""
    p = _command(sub, "interpret", "what a run's learned prompts mean: nearest words, prompt norms",
                "For each learned text context vector, the nearest tokens of the backbone's vocabulary (Euclidean "
                "distance, as in CoOp); for deep, vision and image-conditioned prompts, L2 norms per layer beside "
                "the backbone's own scales. docs/interpret.md explains each number.",
                "promptclip interpret RUN_DIR --topk 3")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--topk", type=int, default=5, help="nearest tokens per context vector (default 5)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_interpret)
    p = _command(sub, "demo", "offline demo: digits, a tiny random CLIP, zero-shot vs CoOp",
                "Writes scikit-learn's digits as an image folder and compares zero-shot CLIP with CoOp (shared and "
                "class-specific) on a tiny CLIP with random weights.",
                "promptclip demo --out demo_runs --shots 2 --epochs 1")
    p.add_argument("--out", default="demo_runs", help="folder for the data and the runs")
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--epochs", type=int, default=40)
    p.set_defaults(func=cmd_demo)
    p = _with_config(_command(sub, "config", "print the resolved config of presets + overrides",
                            "Print the config a train command would use, or --list presets.",
                            "promptclip config -c maple model.name=tiny-vit-deep", "promptclip config --list"))
    p.add_argument("--list", action="store_true", help="list the presets")
    p.set_defaults(func=cmd_config)
    p = _command(sub, "runs", "list the runs under a folder with their status and accuracy",
                "Every run folder under DIR: done, running (with the lock's owner), interrupted (resumes when its "
                "command is run again), failed or damaged; epochs done and test accuracy.",
                "promptclip runs runs")
    p.add_argument("dir", type=Path, help="a folder of runs, e.g. runs")
    p.set_defaults(func=cmd_runs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="promptclip", description="Prompt learning on frozen CLIP models. "
                                     "Options and KEY=VALUE overrides may come in any order.")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    parser.add_argument("-v", "--verbose", action="store_true", help="also show other libraries' messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run_commands(sub)
    _add_tool_commands(sub)
    from .bench.commands import add_bench_commands
    from .data.commands import add_data_commands
    from .engine.cache_admin import add_cache_command
    from .engine.export import add_export_command

    add_data_commands(sub)
    add_bench_commands(sub)
    add_export_command(sub)
    add_cache_command(sub)
    return parser


def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Arguments in any order: global flags may follow the command and overrides may follow options."""
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = [GLOBAL_FLAGS[a] for a in argv if a in GLOBAL_FLAGS]
    parser = build_parser()
    args, extra = parser.parse_known_args(flags + [a for a in argv if a not in GLOBAL_FLAGS])
    takes_overrides = hasattr(args, "overrides")
    unknown = [a for a in extra if not (takes_overrides and "=" in a and not a.startswith("-"))]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse(argv)
    _setup_logging(args.quiet, args.verbose)
    try:
        load_plugins()
        code = args.func(args)
        sys.stdout.flush()
        return code
    except PromptclipError as err:
        print(f"promptclip: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `promptclip ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print("promptclip: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
