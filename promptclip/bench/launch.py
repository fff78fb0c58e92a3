"""A sweep as one job array through submitit: ``promptclip bench PROTOCOL ... --launcher slurm|local``.

Each array task runs its share of the runs not done yet (task i of n takes every n-th, as ``--shard i/n`` does)
under each run's lock, so two arrays on one sweep folder never run a run twice: a run another process holds is
skipped and reported as busy. A pre-empted or timed-out task is requeued by submitit (:meth:`SweepTask.checkpoint`)
and its runs resume from their checkpoints; so does a killed task's run when the command is launched again.

``<root>/launcher-jobs.json`` (written atomically, under a lock) maps every submitted job to its task and runs;
``--status`` reads it to show, per run, submitted / running / done / failed with its job id and the job's log.
submitit's own files (the pickled task, its result, stdout/stderr) live in ``<root>/.submitit/<job id>/``.

The options (:class:`LauncherConfig`) come from ``--launcher-config FILE.yaml`` (its keys, or a ``launcher:``
section) and ``launcher.KEY=VALUE`` overrides, which win; unknown keys are refused with the nearest valid one.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import run_files, runs
from ..config import bounded, from_dict, merge, parse_override, read_yaml_mapping
from ..errors import ConfigError, PromptclipError
from ..utils import atomic_write_json
from .protocols import RunSpec, write_manifest
from .sweep import SweepOutcome, SweepPlan, check_plan, run_sweep, shard, status

log = logging.getLogger("promptclip")
LAUNCHERS = ("slurm", "local")
LAUNCHER_PREFIX = "launcher."
JOBS_FILE = "launcher-jobs.json"
SUBMITIT_DIR = ".submitit"
DEFAULT_TASKS = 32  # array tasks when neither launcher.tasks nor launcher.array_parallelism says
#: a SLURM job state in which the job may still run (or is waiting to)
ACTIVE_SLURM_STATES = ("PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
                       "RESIZING", "SUSPENDED", "PREEMPTED", "SIGNALING", "STAGE_OUT", "UNKNOWN")


@dataclass
class LauncherConfig:
    """How the sweep's job array is submitted (``launcher.KEY=VALUE``)."""

    partition: Optional[str] = None  # SLURM partition (the cluster's default when unset)
    gpus_per_task: Optional[int] = bounded(None, ge=0)  # unset: 1 on SLURM, 0 locally; >1 runs that many at a time
    cpus_per_task: Optional[int] = bounded(None, ge=1)
    mem_gb: Optional[float] = bounded(None, gt=0)
    timeout_min: int = bounded(24 * 60, ge=1)  # per task; a task that runs out is requeued and resumes
    array_parallelism: Optional[int] = bounded(None, ge=1)  # SLURM's %-limit: tasks running at once
    tasks: Optional[int] = bounded(None, ge=1)  # array tasks; default min(runs, array_parallelism or 32)
    slurm_additional_parameters: Dict[str, Any] = field(default_factory=dict)  # any other sbatch option


def split_launcher_overrides(overrides: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Command-line overrides → (``launcher.KEY=VALUE`` ones, all others)."""
    mine = [t for t in overrides if t.split("=", 1)[0].strip().startswith(LAUNCHER_PREFIX)]
    return mine, [t for t in overrides if t not in mine]


def launcher_config(overrides: Sequence[str] = (), path: Optional[Path] = None) -> LauncherConfig:
    """The launcher options: ``path``'s (its keys, or its ``launcher:`` section), then ``launcher.KEY=VALUE``."""
    data: dict = {}
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"--launcher-config {path}: no such file.")
        data = read_yaml_mapping(Path(path), "launcher options (partition, timeout_min, ...)")
        if set(data) == {"launcher"}:
            data = data["launcher"] or {}
    for text in overrides:
        data = merge(data, parse_override(text.strip()[len(LAUNCHER_PREFIX):]))
    return from_dict(LauncherConfig, data, "launcher")


def task_count(runs_to_do: int, settings: LauncherConfig) -> int:
    """How many array tasks: ``launcher.tasks``, else min(runs, array_parallelism or 32); never more than runs."""
    return max(1, min(runs_to_do, settings.tasks or settings.array_parallelism or DEFAULT_TASKS))


def gpus_of(kind: str, settings: LauncherConfig) -> int:
    return settings.gpus_per_task if settings.gpus_per_task is not None else (1 if kind == "slurm" else 0)


class SweepTask:
    """One array task: run its share of the sweep (submitit pickles this object and calls it with the runs)."""

    def __init__(self, gpus: int = 0, fail_fast: bool = False, replace: bool = False):
        self.gpus, self.fail_fast, self.replace = gpus, fail_fast, replace

    def __call__(self, specs: List[RunSpec]) -> SweepOutcome:
        _log_to_stdout()
        # one GPU: the runs train in this process; more: one worker process per GPU, as `bench --gpus N`
        return run_sweep(specs, gpus=self.gpus if self.gpus > 1 else 0, fail_fast=self.fail_fast, progress=False,
                         replace=self.replace)

    def checkpoint(self, specs: List[RunSpec]):
        """Pre-empted or out of time: submitit requeues the same task, whose runs resume from their checkpoints."""
        import submitit

        log.warning("Task interrupted (pre-empted or out of time): requeued; its runs resume from their checkpoints.")
        return submitit.helpers.DelayedSubmission(SweepTask(self.gpus, self.fail_fast, self.replace), specs)


def _log_to_stdout() -> None:
    """promptclip's lines, with their times, in the job's stdout log (other libraries' chatter stays out)."""
    logger = logging.getLogger("promptclip")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    root = logging.getLogger()
    if not root.handlers:  # open_clip logs through the root logger
        root.addHandler(logging.NullHandler())


def _submitit():
    try:
        import submitit
    except ImportError:
        raise PromptclipError("--launcher needs submitit: pip install 'promptclip[slurm]'.") from None
    return submitit


def slurm_parameters(settings: LauncherConfig, name: str) -> Dict[str, Any]:
    """submitit's AutoExecutor parameters for ``settings``: one task per job, its GPUs, the options set."""
    params: Dict[str, Any] = {"name": name, "timeout_min": settings.timeout_min, "nodes": 1, "tasks_per_node": 1,
                              "gpus_per_node": gpus_of("slurm", settings)}
    optional = {"slurm_partition": settings.partition, "cpus_per_task": settings.cpus_per_task,
                "mem_gb": settings.mem_gb, "slurm_array_parallelism": settings.array_parallelism,
                "slurm_additional_parameters": settings.slurm_additional_parameters or None}
    params.update({k: v for k, v in optional.items() if v is not None})
    return params


def make_executor(kind: str, root: Path, settings: LauncherConfig, name: str):
    """``submitit.AutoExecutor`` (SLURM) or ``submitit.LocalExecutor`` with its logs in ``root/.submitit/<job>``."""
    submitit = _submitit()
    folder = Path(root) / SUBMITIT_DIR / "%j"
    if kind == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=settings.timeout_min, gpus_per_node=gpus_of(kind, settings))
        return executor
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    except RuntimeError as err:  # no srun: not on a SLURM cluster
        raise PromptclipError(f"--launcher slurm: {err} Submit from a SLURM login node, or try the sweep here with "
                              f"--launcher local.") from None
    executor.update_parameters(**slurm_parameters(settings, name))
    return executor


@dataclass
class Launch:
    """A submitted array: its jobs (submitit's) and what ``launcher-jobs.json`` records of each."""

    kind: str
    jobs: list
    records: List[dict]
    root: Path


def launch(plan: SweepPlan, kind: str, settings: LauncherConfig, fail_fast: bool = False, replace: bool = False,
           merge_plan: bool = False) -> Launch:
    """Check the plan, write the manifest (as ``bench`` does), then submit the runs not done yet as one array of
    ``task_count`` tasks and record its jobs in ``<root>/launcher-jobs.json``. Nothing is submitted when every run
    is done."""
    if kind not in LAUNCHERS:
        raise ConfigError(f"--launcher {kind!r}: use one of {', '.join(LAUNCHERS)}.")
    check_plan(plan.runs)
    write_manifest(plan.protocol, plan.runs, plan.root, plan.overrides, replace=replace, merge=merge_plan)
    pending = [spec for spec in plan.runs if status(spec) != "done"]
    if not pending:
        return Launch(kind, [], [], plan.root)
    count = task_count(len(pending), settings)
    shares = [shard(pending, i, count) for i in range(count)]
    executor = make_executor(kind, plan.root, settings, f"promptclip-{plan.protocol.name}")
    submitted_at = runs.now()
    try:
        jobs = executor.map_array(SweepTask(gpus_of(kind, settings), fail_fast, replace), shares)
    except Exception as err:  # noqa: BLE001  (sbatch refused the job: its message says why)
        raise PromptclipError(f"--launcher {kind}: submitting {count} tasks failed: {err}") from None
    records = [{"job": str(job.job_id), "task": i, "tasks": count, "runs": [s.id for s in share],
                "log": _relative(job.paths.stdout, plan.root), "stderr": _relative(job.paths.stderr, plan.root),
                "result": _relative(job.paths.result_pickle, plan.root)}
               for i, (job, share) in enumerate(zip(jobs, shares))]
    record_launch(plan.root, {"launcher": kind, "protocol": plan.protocol.name, "submitted_at": submitted_at,
                              "jobs": records})
    return Launch(kind, jobs, records, plan.root)


def _relative(path: Path, root: Path) -> str:
    return os.path.relpath(Path(path).resolve(), Path(root).resolve())


def record_launch(root: Path, entry: dict) -> None:
    """Add a launch to ``root/launcher-jobs.json``, under a lock so that two launches at once both stay."""
    from filelock import FileLock

    with FileLock(str(Path(root) / f".{JOBS_FILE}.lock")):
        data = read_launches(root)
        data["launches"].append(entry)
        atomic_write_json(Path(root) / JOBS_FILE, data)


def read_launches(root: Path) -> dict:
    """``root/launcher-jobs.json`` (``{"launches": []}`` when nothing was launched there)."""
    path = Path(root) / JOBS_FILE
    data = run_files.read_json(path, "the launcher's job list", ("launches",))
    if data is None:
        return {"launches": []}
    if not isinstance(data["launches"], list):
        raise runs.CorruptFile(f"{path} is damaged (launches is not a list). Delete it; --status then knows no jobs, "
                               f"and the runs themselves are unaffected.")
    return data


def wait(launch_: Launch, poll_s: float = 0.2) -> Tuple[SweepOutcome, Dict[str, str]]:
    """Wait for every job; their outcomes merged, and job id → why the task itself failed (with its log)."""
    outcome, broken = SweepOutcome(), {}
    for job, record in zip(launch_.jobs, launch_.records):
        while not job.done():  # submitit's own wait polls once a second
            time.sleep(poll_s)
        if launch_.kind == "local" and not job.paths.result_pickle.exists():  # killed: no result will come
            broken[record["job"]] = (f"the task stopped without a result (killed?) (log: "
                                     f"{launch_.root / record['log']})")
            continue
        try:
            part: SweepOutcome = job.result()
        except Exception as err:  # noqa: BLE001  (a killed or crashed task: its runs resume when launched again)
            broken[record["job"]] = f"{first_line(str(err))} (log: {launch_.root / record['log']})"
            continue
        outcome.finished += part.finished
        outcome.skipped += part.skipped
        outcome.busy += part.busy
        outcome.other.update(part.other)
        outcome.failed.update(part.failed)
    return outcome, broken


def first_line(text: str) -> str:
    return next((line for line in text.strip().splitlines() if line.strip()), text)


# ------------------------------------------------------------------------------------------------ --status
@dataclass
class RunStatus:
    """One run of a launched sweep: its state, the job that has it and that job's log."""

    run: str
    state: str  # done, running, submitted, failed, other (settings; left alone), not submitted
    job: Optional[str] = None
    log: Optional[Path] = None
    detail: str = ""


def launch_status(plan: SweepPlan) -> List[RunStatus]:
    """Every planned run's state, from its folder (done, held by a process, failed since it was submitted) and from
    the job of the latest launch that has it (still queued or running, or ended before the run finished)."""
    latest: Dict[str, Tuple[dict, dict]] = {}
    for entry in read_launches(plan.root)["launches"]:
        for record in entry.get("jobs", []):
            for run_id in record.get("runs", []):
                latest[run_id] = (entry, record)
    job_states: Dict[str, Tuple[bool, str]] = {}
    rows = []
    for spec in plan.runs:
        state = status(spec)
        entry, record = latest.get(spec.id, (None, None))
        job = record["job"] if record else None
        log_path = runs.inside(plan.root, record["log"], f"{JOBS_FILE}: job {job}'s log") if record else None
        row = RunStatus(spec.id, "", job, log_path)
        if state == "done":
            row.state = "done"
        elif state == "busy":
            row.state, row.detail = "running", run_files.describe_owner(spec.run_dir)
        elif state == "other":
            row.state, row.detail = "other", "its folder holds a run made with other settings (see --dry-run)"
        elif record is None:
            row.state = "not submitted"
        else:
            if job not in job_states:
                job_states[job] = job_state(entry["launcher"], plan.root, record)
            active, what = job_states[job]
            failure = _failure_since(spec, entry.get("submitted_at", ""))
            if failure is not None:
                row.state, row.detail = "failed", failure
            elif active:
                row.state, row.detail = "submitted", what
            else:
                row.state, row.detail = "failed", f"its task ended ({what}) before the run finished"
        rows.append(row)
    return rows


def _failure_since(spec: RunSpec, since: str) -> Optional[str]:
    """The error the sweep recorded in the run's ``failed.json`` at or after ``since`` (None: none since)."""
    try:
        recorded = run_files.read_json(spec.run_dir / runs.FAILED, "a run's failure record")
    except runs.CorruptFile as err:
        return str(err)
    if recorded is None or str(recorded.get("at", "")) < since:
        return None
    return str(recorded.get("error", "?"))


def job_state(kind: str, root: Path, record: dict) -> Tuple[bool, str]:
    """(whether the job may still run, what it is doing): its result file says how it ended; without one, a local
    job is active while its process lives, a SLURM job while the scheduler lists it as pending or running."""
    result = runs.inside(root, record["result"], f"{JOBS_FILE}: job {record['job']}'s result")
    if result.is_file():
        import pickle

        try:
            with result.open("rb") as f:
                tag = pickle.load(f)[0]
        except Exception:  # noqa: BLE001  (half written, or from another version: just say so)
            return False, "job ended; its result file cannot be read"
        return False, "job finished" if tag == "success" else "job failed"
    if kind == "local":
        return (True, "job running") if _pid_alive(record["job"]) else (False, "job process gone")
    submitit = _submitit()
    state = str(submitit.SlurmJob(folder=result.parent, job_id=record["job"]).state).split()[0].upper()
    return state in ACTIVE_SLURM_STATES, f"job {state}"


def _pid_alive(pid: str) -> bool:
    """Whether the local job's controller process (its job id is its pid) still runs (a zombie does not)."""
    try:
        fields = Path(f"/proc/{int(pid)}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] != "Z"
    except FileNotFoundError:
        return False
    except (OSError, ValueError, IndexError):
        try:
            os.kill(int(pid), 0)
        except (ProcessLookupError, ValueError):
            return False
        except PermissionError:
            return True
        return True


def status_text(rows: Sequence[RunStatus]) -> str:
    """One line per run (state, job, run, log) with a failed run's error below it, then the counts."""
    width = max([len(r.run) for r in rows] + [3])
    lines = [f"{'state':<13} {'job':<14} {'run':<{width}}  log"]
    for r in rows:
        lines.append(f"{r.state:<13} {r.job or '-':<14} {r.run:<{width}}  {r.log or '-'}")
        if r.state in ("failed", "other") and r.detail:
            lines.append(f"{'':<13} ! {first_line(r.detail)}")
    counts: Dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    lines.append(", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    return "\n".join(lines)
