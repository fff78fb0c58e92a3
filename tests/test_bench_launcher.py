"""``bench --launcher``: a sweep as a submitit job array. Locally (submitit's LocalExecutor, real processes): the same
report as an inline sweep, two arrays on one folder running each run once, a killed task's run resuming when launched
again, a pre-empted task requeued by submitit and resuming, ``--status`` of a partly failed sweep. SLURM through a
fake ``sbatch``: the array and its options as submitted."""
import csv
import json
import os
import stat

import pytest

from bench_fixtures import TINY, cli, fake_benchmarks
from promptclip import runs
from promptclip.bench.launch import JOBS_FILE, LauncherConfig, launch, launcher_config, task_count, wait
from promptclip.bench.sweep import plan_sweep
from promptclip.errors import ConfigError, PromptclipError

PLUGIN = "launcher_stop_once"
PLUGIN_CODE = '''
"""A callback that stops its own process (a kill, a pre-emption signal), each stop once, at the end of an epoch."""
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

from promptclip.callbacks import CALLBACKS, Callback, CallbackConfig


@dataclass
class StopOnceConfig(CallbackConfig):
    stops: list = field(default_factory=list)  # [epoch, signal name, marker file]: send it once, after that epoch


@CALLBACKS.register("stop_once")
class StopOnce(Callback):
    Config = StopOnceConfig

    def on_epoch_end(self, epoch, model):
        for at, name, marker in self.cfg.stops:
            if epoch == at and not Path(marker).exists():
                Path(marker).write_text(str(os.getpid()))
                os.kill(os.getpid(), getattr(signal, name))
'''


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fake_benchmarks(tmp_path_factory.mktemp("data"), ["EuroSAT"], n_per_class=4)


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugin")
    (folder / f"{PLUGIN}.py").write_text(PLUGIN_CODE)
    return folder


@pytest.fixture
def stop_once(plugin_dir, monkeypatch):
    """The plugin importable here and in the job processes (which inherit the environment)."""
    monkeypatch.syspath_prepend(str(plugin_dir))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(plugin_dir), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("PROMPTCLIP_PLUGINS", PLUGIN)
    __import__(PLUGIN)


def sweep(data, root, *extra):
    """A few-shot sweep on one fake dataset: zero-shot once and CoOp (1 epoch) with two seeds, 3 runs."""
    return [*TINY, f"data.root={data}", f"output.root={root}", f"output.cache_dir={root / 'cache'}",
            "datasets=[EuroSAT]", "shots=[2]", "methods=[{preset: zeroshot, shots: [0], seeds: [1]}, coop]",
            "coop:train.epochs=1", *extra]


def one_coop_run(data, root, stops):
    """One CoOp run of 4 epochs, checkpointed every epoch (before a callback's stop), stopped at ``stops``."""
    stops_yaml = ", ".join(f"[{epoch}, {name}, '{marker}']" for epoch, name, marker in stops)
    return [*TINY, f"data.root={data}", f"output.root={root}", f"output.cache_dir={root / 'cache'}",
            "datasets=[EuroSAT]", "shots=[2]", "seeds=[1]", "methods=[coop]", "train.epochs=4",
            "train.checkpoint_every=1", f"callbacks={{stop_once: {{stops: [{stops_yaml}]}}}}"]


def rows(root):
    with open(root / "report" / "few_shot.csv") as f:
        return sorted(tuple(sorted(r.items())) for r in csv.DictReader(f))


def job_log(root, record):
    return (root / record["log"]).read_text()


@pytest.mark.slow
def test_a_local_array_reports_what_an_inline_sweep_reports_and_its_status(data, tmp_path, capsys):
    """One run fails (missing weights) in both sweeps: the same report, and --status lists it with its log."""
    inline, launched = tmp_path / "inline", tmp_path / "launched"
    bad = f"zeroshot:model.pretrained={tmp_path / 'missing.pt'}"
    assert cli("bench", "few_shot", *sweep(data, inline, "seeds=[1,2]", bad), "--no-progress") == 1
    assert cli("bench", "few_shot", *sweep(data, launched, "seeds=[1,2]", bad), "launcher.tasks=2", "--launcher",
               "local") == 1
    assert "FAILED zeroshot/" in capsys.readouterr().out
    (entry,) = json.loads((launched / JOBS_FILE).read_text())["launches"]
    assert [len(r["runs"]) for r in entry["jobs"]] == [2, 1]  # task i of 2: every 2nd run from i
    assert cli("report", str(inline), "--no-plots") == 0 and cli("report", str(launched), "--no-plots") == 0
    assert rows(launched) == rows(inline) and any("coop" in dict(r).values() for r in rows(inline))
    capsys.readouterr()
    assert cli("bench", "few_shot", *sweep(data, launched, "seeds=[1,2]", bad), "--launcher", "local",
               "--status") == 1
    out = capsys.readouterr().out.splitlines()
    logs = {run_id: (r["job"], str(launched / r["log"])) for r in entry["jobs"] for run_id in r["runs"]}
    for i, line in enumerate(out):
        run_id = next((run_id for run_id in logs if f" {run_id} " in line), None)
        if run_id is not None:
            state = "failed" if run_id.startswith("zeroshot/") else "done"
            assert line.split()[:2] == [state, logs[run_id][0]] and line.split()[-1] == logs[run_id][1]
            assert state == "done" or "missing.pt" in out[i + 1]  # the run's error, under its line
    assert "2 done, 1 failed" in out[-1]
    assert all(os.path.isfile(path) for _, path in logs.values())


@pytest.mark.slow
def test_two_arrays_on_one_folder_run_each_run_once(data, tmp_path):
    root = tmp_path / "runs"
    plan = plan_sweep("few_shot", sweep(data, root, "seeds=[1,2]"))
    first = launch(plan, "local", LauncherConfig(tasks=1))
    second = launch(plan, "local", LauncherConfig(tasks=1))  # submitted before the first array finished anything
    assert len(second.records) == 1 and len(second.records[0]["runs"]) == 3
    outcomes = [wait(first), wait(second)]
    assert all(broken == {} for _, broken in outcomes)
    every = {spec.id for spec in plan.runs}
    assert {run_id for outcome, _ in outcomes for run_id in outcome.finished} == every
    for outcome, _ in outcomes:  # each array accounts for every run: finished it, found it busy, or done by then
        assert set(outcome.finished + outcome.busy + outcome.skipped) == every and not outcome.failed
    for spec in plan.runs:  # trained exactly once: one test result in its log, whoever reused it after
        assert (spec.run_dir / runs.LOG).read_text().count(": test accuracy ") == 1, spec.id
    assert len(json.loads((root / JOBS_FILE).read_text())["launches"]) == 2  # both launches recorded


@pytest.mark.slow
def test_a_killed_task_resumes_on_the_next_launch_and_a_preempted_one_is_requeued(data, tmp_path, stop_once,
                                                                                  capsys):
    root = tmp_path / "runs"
    killed, preempted = tmp_path / "killed", tmp_path / "preempted"
    args = one_coop_run(data, root, [(1, "SIGKILL", killed), (2, "SIGUSR2", preempted)])  # USR2: submitit's signal
    assert cli("bench", "few_shot", *args, "--launcher", "local") == 1  # killed during epoch 2 of 4
    assert killed.is_file() and "TASK FAILED" in capsys.readouterr().out
    (run_dir,) = root.glob("coop/*/EuroSAT/all/shots_2/seed_1")
    assert not (run_dir / "result.json").exists() and (run_dir / "checkpoint" / "last.pt").is_file()
    assert cli("bench", "few_shot", *args, "--launcher", "local", "--status") == 1
    assert "before the run finished" in capsys.readouterr().out
    assert cli("bench", "few_shot", *args, "--launcher", "local") == 0
    text = job_log(root, json.loads((root / JOBS_FILE).read_text())["launches"][-1]["jobs"][0])
    assert preempted.is_file() and "requeued" in text  # pre-empted: SweepTask.checkpoint had submitit requeue it
    assert "after epoch 1" in text and "after epoch 2" in text  # resumed after the kill, then after the requeue
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2, 3] and (run_dir / "result.json").is_file()


def fake_slurm(folder):
    """``srun``, ``sbatch`` (keeps the script, answers job 4242) and ``sacct`` (every task pending)."""
    folder.mkdir()
    scripts = {"srun": "exit 0", "sbatch": f'cp "$1" {folder}/submitted.sh\necho "Submitted batch job 4242"',
               "sacct": 'printf "JobID|State\\n4242_0|PENDING\\n4242_1|RUNNING\\n4242_2|PENDING\\n"'}
    for name, body in scripts.items():
        path = folder / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return folder


def test_slurm_submits_one_array_with_the_options(data, tmp_path, monkeypatch, capsys):
    root, bin_dir = tmp_path / "runs", fake_slurm(tmp_path / "bin")
    (tmp_path / "cluster.yaml").write_text("launcher: {partition: gpu, timeout_min: 90, array_parallelism: 2}\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert cli("bench", "few_shot", *sweep(data, root, "seeds=[1,2]"), "launcher.tasks=3", "launcher.mem_gb=8",
               "launcher.slurm_additional_parameters={account: vision}", "--launcher", "slurm",
               "--launcher-config", str(tmp_path / "cluster.yaml")) == 0
    assert "Follow them with" in capsys.readouterr().out  # slurm returns once submitted
    script = (bin_dir / "submitted.sh").read_text()
    for line in ("--array=0-2%2", "--partition=gpu", "--time=90", "--mem=8GB", "--gpus-per-node=1",
                 "--account=vision", "--signal=USR2@90", f"--output={root}/.submitit/%A_%a/%A_%a_0_log.out"):
        assert f"#SBATCH {line}" in script
    (entry,) = json.loads((root / JOBS_FILE).read_text())["launches"]
    assert [r["job"] for r in entry["jobs"]] == ["4242_0", "4242_1", "4242_2"] and entry["launcher"] == "slurm"
    assert cli("bench", "few_shot", *sweep(data, root, "seeds=[1,2]"), "--launcher", "slurm", "--status") == 0
    out = capsys.readouterr().out
    assert "3 submitted" in out and f"{root}/.submitit/4242_1/4242_1_0_log.out" in out


def test_slurm_off_a_cluster_and_launcher_options_are_refused_clearly(data, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun here
    with pytest.raises(PromptclipError, match="SLURM login node.*--launcher local"):
        cli("bench", "few_shot", *sweep(data, tmp_path / "runs", "seeds=[1]"), "--launcher", "slurm")
    with pytest.raises(ConfigError, match="launcher.partiton.*launcher.partition"):
        launcher_config(["launcher.partiton=gpu"])
    with pytest.raises(ConfigError, match="timeout_min must be"):
        launcher_config(["launcher.timeout_min=0"])
    with pytest.raises(ConfigError, match="go with --launcher"):
        cli("bench", "few_shot", *sweep(data, tmp_path / "runs", "seeds=[1]"), "launcher.tasks=2")
    with pytest.raises(ConfigError, match="drop --shard"):
        cli("bench", "few_shot", *sweep(data, tmp_path / "runs", "seeds=[1]"), "--launcher", "local",
            "--shard", "0/2")
    (tmp_path / "l.yaml").write_text("tasks: 3\ncpus_per_task: 4\n")
    settings = launcher_config(["launcher.tasks=5"], tmp_path / "l.yaml")
    assert (settings.tasks, settings.cpus_per_task) == (5, 4)  # the command line wins over the file
    assert task_count(100, LauncherConfig()) == 32 and task_count(3, LauncherConfig()) == 3
    assert task_count(100, LauncherConfig(array_parallelism=8)) == 8
