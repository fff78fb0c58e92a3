"""``promptclip bench PROTOCOL`` and ``promptclip report DIR``: argparse wiring over the bench library."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, List

if TYPE_CHECKING:  # the bench library imports torch: load it only when a command runs, so --help stays fast
    from .protocols import RunSpec

def examples(*commands: str) -> str:
    """A help text's ``examples:`` block; tests/test_help.py parses and builds every one of them."""
    return "\n\nexamples:\n" + "\n".join(f"  {c}" for c in commands)


BENCH_HELP = """Run a benchmark protocol: every (method, dataset, shots, seed) run and its evaluations.
Finished runs are skipped and interrupted ones resume, so rerun the same command after a kill or a crash.

overrides:  seeds=[1] shots=[16] datasets=[DescribableTextures]  change the protocol's lists
            data.root=/data model.name=ViT-B-16                    set a config key in every run
            coop:train.epochs=1                                    set a config key in one method's runs
            'grid={optim.lr: [0.002, 0.02]}'                       tune: one run per value, chosen per dataset
                                                                   on the validation split by `promptclip report`

Before anything runs, every planned run is checked against its backbone's architecture (layer counts, read from
the model config); --dry-run lists every problem of every run. A run that fails is recorded in its folder
(failed.json) and the others go on; the command ends with a summary and exit code 1, and rerunning it retries the
failed runs.""" + examples(
    "promptclip bench few_shot data.root=~/data --dry-run",
    "promptclip bench base_to_new data.root=~/data 'methods=[coop_b2n,maple]' seeds=[1] --shard 0/4",
    "promptclip bench base_to_new 'datasets=[{name: digits, data: {name: imagefolder, root: data/digits}}]' "
    "'methods=[maple]' seeds=[1] shots=[4] model.name=tiny-vit-deep model.pretrained=null --dry-run")


def add_bench_commands(subparsers) -> None:
    """Add ``bench`` and ``report`` to an argparse subparsers object; each handler returns an exit code."""
    bench = subparsers.add_parser("bench", help="run a benchmark protocol (a resumable sweep of runs)",
                                  description=BENCH_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("protocol", help="a protocol in configs/protocols (few_shot, base_to_new, cross_dataset, "
                                        "domain_generalization) or a protocol YAML file")
    bench.add_argument("overrides", nargs="*", help="protocol keys, config keys or METHOD:config keys (key=value)")
    bench.add_argument("--dry-run", action="store_true", help="list the runs and their state; run nothing")
    bench.add_argument("--shard", metavar="i/n", help="run only every n-th run starting at i (0-based), e.g. one "
                                                      "SLURM array task: --shard $SLURM_ARRAY_TASK_ID/8")
    bench.add_argument("--gpus", type=int, default=0, metavar="N",
                       help="run N runs at a time, each in its own process on its own GPU")
    bench.add_argument("--fail-fast", action="store_true",
                       help="start no further run after one fails (by default the others go on; either way each "
                            "failure is recorded in its run folder's failed.json and retried by the next call)")
    bench.add_argument("--replace", action="store_true",
                       help="redo runs whose folders hold runs made with other settings (deletes those runs)")
    bench.add_argument("--merge", action="store_true",
                       help="add this plan's runs to the sweep folder's existing plan (its protocol-NAME.json), so one "
                            "report covers both; without it another plan there is refused, listing the differences")
    bench.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    bench.set_defaults(func=bench_command)

    report = subparsers.add_parser("report", help="tables (Markdown, CSV, LaTeX) and plots of a sweep folder",
                                   description="Mean ± std over seeds per dataset, averages, base/new/H, published "
                                               "numbers beside ours; missing runs are listed."
                                               + examples("promptclip report runs/few_shot --no-plots"),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    report.add_argument("dir", type=Path, help="a sweep folder (output.root of a protocol)")
    report.add_argument("--out", type=Path, help="where to write the report (default DIR/report)")
    report.add_argument("--no-plots", action="store_true", help="tables only")
    report.set_defaults(func=report_command)


def bench_command(args: argparse.Namespace) -> int:
    from .. import runs
    from .sweep import first_line, plan_sweep, run_planned

    plan = plan_sweep(args.protocol, args.overrides, args.shard)
    where = f" (shard {args.shard}: {len(plan.selected)})" if args.shard else ""
    print(f"{plan.protocol.name}: {len(plan.runs)} runs{where} under {plan.root}")
    if args.dry_run:
        print_weights(plan.selected)
        print_plan(plan.selected)
        return print_problems(plan.runs)
    outcome = run_planned(plan, gpus=args.gpus, fail_fast=args.fail_fast, progress=not args.no_progress,
                          replace=args.replace, merge=args.merge)
    print(f"Done {len(outcome.finished)} runs, {len(outcome.failed)} failed, {len(outcome.skipped)} skipped "
          f"(already done), {len(outcome.busy)} busy in other processes, {len(outcome.other)} not run (their folders "
          f"hold runs made with other settings).")
    for run_id, error in outcome.failed.items():
        print(f"  FAILED {run_id}: {first_line(error)}")
    if outcome.failed:
        print(f"  Each failure is in its run folder's {runs.FAILED} (and {runs.SWEEP_LOG}); rerun this command to "
              f"retry the failed runs.")
    for run_id, changes in outcome.other.items():
        print(f"  OTHER SETTINGS {run_id}: {'; '.join(changes[:6])}")
    if outcome.other:
        print("  Those runs are not counted as done. Redo them with the protocol's settings with --replace, or give "
              "these settings another sweep folder (output.root=...).")
    print(f"Tables: promptclip report {plan.root}")
    return 1 if outcome.failed or outcome.other else 0


def print_plan(runs: List["RunSpec"]) -> None:
    """One line per run: state, folder, the settings that differ most between methods, evaluations."""
    from .sweep import config_changes, status

    counts: dict = {}
    print(f"{'state':<9} {'run':<60} {'epochs':>6} {'lr':>8} {'batch':>5}  evaluations")
    for spec in runs:
        state = status(spec)
        counts[state] = counts.get(state, 0) + 1
        cfg = spec.config
        evaluations = _evaluations_text(spec)
        print(f"{state:<9} {spec.id:<60} {cfg.train.epochs:>6} {cfg.optim.lr:>8g} {cfg.train.batch_size:>5}  "
              f"{evaluations}")
        if state == "other":
            print(f"{'':<9} ! its folder holds a run made with other settings: {'; '.join(config_changes(spec)[:6])}")
    print(", ".join(f"{n} {state}" for state, n in sorted(counts.items())))


def print_problems(specs: List["RunSpec"]) -> int:
    """Every planned run's config checked against its backbone: every problem of every run; 1 if there are any."""
    from .sweep import plan_problems, problems_text

    problems, unknown = plan_problems(specs)
    for model in unknown:
        print(f"architecture of {model}: its model config is not on this machine; its runs are not checked")
    if not problems:
        print(f"architecture: all {len(specs)} planned runs fit their backbones")
        return 0
    print(f"PROBLEMS: {problems_text(problems, len(specs))}")
    return 1


def print_weights(runs: List["RunSpec"]) -> None:
    """Whether the weights the planned runs need are on this machine (nothing is downloaded)."""
    from ..backbone import weights_status

    for model, pretrained, cache in dict.fromkeys((r.config.model.name, r.config.model.pretrained,
                                                   r.config.model.cache_dir) for r in runs):
        available, where = weights_status(model, pretrained, cache)
        print(f"weights {model} {pretrained or '(random)'}: {'available, ' if available else 'MISSING: '}{where}")
        if not available:
            print("  Runs will fail without a download: see the README's 'Real weights' (fill the cache on a "
                  "machine with network, or pass model.pretrained=/path/to/file).")


def _evaluations_text(spec: "RunSpec") -> str:
    names = [e.subsample if e.dataset == spec.dataset else e.dataset for e in spec.evaluations]
    names += ["val"] if spec.validation is not None else []
    return "-" if not names else ", ".join(names) if len(names) <= 4 else f"{len(names)}: {', '.join(names[:3])}, ..."


def report_command(args: argparse.Namespace) -> int:
    from .report import write_report

    report = write_report(args.dir, args.out, plots=not args.no_plots)
    print(report.markdown.read_text())
    print(f"Written: {report.markdown}, {', '.join(str(p) for p in report.csvs + report.plots)}")
    return 0
