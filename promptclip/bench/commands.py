"""``promptclip bench PROTOCOL`` and ``promptclip report DIR``: argparse wiring over the bench library."""
from __future__ import annotations

import argparse
import shlex
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
    "promptclip bench few_shot data.root=~/data --launcher slurm --launcher-config cluster.yaml",
    "promptclip bench few_shot data.root=~/data --launcher slurm --status",
    "promptclip bench base_to_new data.root=~/data 'methods=[coop_b2n,maple]' seeds=[1] --shard 0/4",
    "promptclip bench base_to_new 'datasets=[{name: digits, data: {name: imagefolder, root: data/digits}}]' "
    "'methods=[maple]' seeds=[1] shots=[4] model.name=tiny-vit-deep model.pretrained=null --dry-run")


LAUNCHER_HELP = """--launcher submits the sweep as one job array, each task running every n-th run not done yet
(as --shard) under each run's lock: two arrays on one folder never run a run twice, a pre-empted or timed-out task
is requeued and resumes. Options as launcher.KEY=VALUE: partition, gpus_per_task (default 1 on slurm, 0 locally),
cpus_per_task, mem_gb, timeout_min (per task, default 1440), array_parallelism (the %-limit), tasks (default
min(runs, array_parallelism or 32)), slurm_additional_parameters (e.g. '{account: abc}'). submitit's logs go to
ROOT/.submitit/JOB_ID/, the jobs to ROOT/launcher-jobs.json."""


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
    launcher = bench.add_argument_group("job arrays (submitit; pip install 'promptclip[slurm]')",
                                        LAUNCHER_HELP)
    launcher.add_argument("--launcher", choices=("slurm", "local"),
                          help="submit the runs not done yet as one job array: slurm (sbatch) or local (processes "
                               "on this machine, e.g. to try a sweep before submitting it)")
    launcher.add_argument("--launcher-config", type=Path, metavar="FILE.yaml",
                          help="launcher options (its keys, or a launcher: section); launcher.KEY=VALUE overrides win")
    launcher.add_argument("--status", action="store_true",
                          help="per run: submitted, running, done or failed, its job id and the job's log")
    waiting = launcher.add_mutually_exclusive_group()
    waiting.add_argument("--wait", action="store_true", default=None,
                         help="wait for the jobs and print the sweep's summary (the default with --launcher local)")
    waiting.add_argument("--no-wait", dest="wait", action="store_false",
                         help="return once submitted (the default with --launcher slurm)")
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
    from ..errors import ConfigError
    from .launch import split_launcher_overrides
    from .sweep import plan_sweep, run_planned

    launcher_overrides, overrides = split_launcher_overrides(args.overrides)
    launching = bool(args.launcher or args.status)
    if (launcher_overrides or args.launcher_config or args.wait is not None) and not launching:
        raise ConfigError("launcher.KEY=VALUE, --launcher-config and --wait/--no-wait go with --launcher slurm|local.")
    if launching and (args.shard or args.gpus):
        raise ConfigError("--launcher splits the sweep into array tasks itself: drop --shard and --gpus (use "
                          "launcher.tasks=N and launcher.gpus_per_task=N).")
    plan = plan_sweep(args.protocol, overrides, args.shard)
    where = f" (shard {args.shard}: {len(plan.selected)})" if args.shard else ""
    print(f"{plan.protocol.name}: {len(plan.runs)} runs{where} under {plan.root}")
    if args.status:
        return status_command(plan)
    if args.dry_run:
        print_weights(plan.selected)
        print_plan(plan.selected)
        if args.launcher:
            print_tasks(plan, args.launcher, launcher_overrides, args.launcher_config)
        return print_problems(plan.runs)
    if args.launcher:
        return launch_command(args, plan, launcher_overrides)
    outcome = run_planned(plan, gpus=args.gpus, fail_fast=args.fail_fast, progress=not args.no_progress,
                          replace=args.replace, merge=args.merge)
    return print_outcome(outcome, plan.root)


def launch_command(args: argparse.Namespace, plan, launcher_overrides: List[str]) -> int:
    """Submit the sweep as a job array; with --wait (local's default) wait for it and print the summary."""
    from .launch import launch, launcher_config, wait

    settings = launcher_config(launcher_overrides, args.launcher_config)
    submitted = launch(plan, args.launcher, settings, fail_fast=args.fail_fast, replace=args.replace,
                       merge_plan=args.merge)
    if not submitted.jobs:
        print(f"All {len(plan.runs)} runs are done; nothing submitted. Tables: promptclip report {plan.root}")
        return 0
    runs_count = sum(len(r["runs"]) for r in submitted.records)
    print(f"Submitted {runs_count} runs as {len(submitted.jobs)} {args.launcher} tasks (jobs "
          f"{', '.join(r['job'] for r in submitted.records[:4])}{', ...' if len(submitted.records) > 4 else ''}); "
          f"logs under {plan.root / '.submitit'}.")
    if not (args.wait if args.wait is not None else args.launcher == "local"):
        again = " ".join(shlex.quote(a) for a in [args.protocol, *args.overrides])
        print(f"Follow them with: promptclip bench {again} --launcher {args.launcher} --status")
        return 0
    outcome, broken = wait(submitted)
    for job, why in broken.items():
        print(f"  TASK FAILED job {job}: {why}; its runs resume when this command is run again")
    return max(print_outcome(outcome, plan.root), 1 if broken else 0)


def print_tasks(plan, kind: str, launcher_overrides: List[str], config_file) -> None:
    """What --launcher would submit: the runs not done yet, in how many tasks, with which options."""
    from .launch import launcher_config, task_count
    from .sweep import status

    settings = launcher_config(launcher_overrides, config_file)
    pending = sum(status(spec) != "done" for spec in plan.runs)
    print(f"--launcher {kind}: would submit {pending} runs as {task_count(pending, settings) if pending else 0} "
          f"tasks ({settings})")


def status_command(plan) -> int:
    """Per run of a launched sweep: state, job, log; 1 if any failed."""
    from .launch import launch_status, status_text

    rows = launch_status(plan)
    print(status_text(rows))
    return 1 if any(r.state == "failed" for r in rows) else 0


def print_outcome(outcome, root: Path) -> int:
    """The sweep's summary: runs done, failed (each with its error), busy, other settings; 1 if any failed."""
    from .. import runs
    from .sweep import first_line

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
    print(f"Tables: promptclip report {root}")
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
    from ..architecture import weights_status

    for model, pretrained, cache in dict.fromkeys((r.config.model.name, r.config.model.pretrained,
                                                   r.config.model.cache_dir) for r in runs):
        available, where = weights_status(model, pretrained, cache)
        print(f"weights {model} {pretrained or '(random)'}: {'available, ' if available else 'MISSING: '}{where}")
        if not available:
            print("  Runs will fail without a download: see the README's 'Real weights' (fill the cache on a "
                  "machine with network, or pass model.pretrained=/path/to/file).")


def _evaluations_text(spec: "RunSpec") -> str:
    names = [e.subsample if e.dataset == spec.key.dataset else e.dataset for e in spec.evaluations]
    names += ["val"] if spec.validation is not None else []
    return "-" if not names else ", ".join(names) if len(names) <= 4 else f"{len(names)}: {', '.join(names[:3])}, ..."


def report_command(args: argparse.Namespace) -> int:
    from .report import write_report

    report = write_report(args.dir, args.out, plots=not args.no_plots)
    print(report.markdown.read_text())
    print(f"Written: {report.markdown}, {', '.join(str(p) for p in report.csvs + report.plots)}")
    return 0
