"""The submission overhead of ``bench --launcher local``: 100 zero-shot runs (seeds 1-100) on a fake EuroSAT (4 images
per class) with the tiny random CLIP, inline vs through submitit's local executor with 1 and with 4 tasks, on a warm
feature cache; and the time ``launch()`` takes to hand 100 SLURM array tasks to ``sbatch`` (put stubs of ``srun`` and
``sbatch`` first on PATH to measure that part off a cluster).

    HF_HUB_OFFLINE=1 python tools/launcher_overhead.py /tmp/overhead            # inline vs local
    HF_HUB_OFFLINE=1 python tools/launcher_overhead.py /tmp/overhead --submit   # launch() of 100 tasks
"""
import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the fake benchmark trees of the tests
from bench_fixtures import TINY, cli, fake_benchmarks  # noqa: E402

SEEDS = ",".join(str(i) for i in range(1, 101))


def plan_args(data: Path, root: Path, cache: Path) -> list:
    return [*TINY, f"data.root={data}", f"output.root={root}", f"output.cache_dir={cache}", "datasets=[EuroSAT]",
            f"methods=[{{preset: zeroshot, shots: [0], seeds: [{SEEDS}]}}]"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path)
    parser.add_argument("--submit", action="store_true", help="time launch() of 100 SLURM tasks instead")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    data = fake_benchmarks(args.work / "data", ["EuroSAT"], n_per_class=4)
    cache = args.work / "cache"
    if args.submit:
        from promptclip.bench.launch import LauncherConfig, launch
        from promptclip.bench.sweep import plan_sweep

        plan = plan_sweep("few_shot", plan_args(data, args.work / "slurm", cache))
        started = time.time()
        submitted = launch(plan, "slurm", LauncherConfig(tasks=100))
        print(f"launch() of {len(submitted.records)} SLURM tasks: {time.time() - started:.2f} s")
        return
    cli("bench", "few_shot", *plan_args(data, args.work / "warm", cache), "seeds=[1]", "--no-progress")  # warm up
    for label, extra in [("inline", []), ("local, 1 task", ["launcher.tasks=1", "--launcher", "local"]),
                         ("local, 4 tasks", ["launcher.tasks=4", "--launcher", "local"])]:
        started = time.time()
        code = cli("bench", "few_shot", *plan_args(data, args.work / label.replace(" ", "_"), cache), *extra,
                   "--no-progress")
        print(f"{label}: exit {code}, {time.time() - started:.1f} s for 100 runs", flush=True)


if __name__ == "__main__":
    main()
