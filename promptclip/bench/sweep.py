"""The resumable sweep: run a protocol's runs one after another (or N at a time, one per GPU) and their evaluations.

A run whose ``result.json`` (made with the protocol's settings) and evaluation files exist is skipped; an interrupted
one resumes from its checkpoint (the engine does that), so rerunning the same command after a kill, a crash or a
pre-empted job finishes the sweep. A folder holding a run made with other settings is never counted as done: it is
reported and left alone unless ``replace``. A run another process is writing (its lock is held, on this machine or
another sharing the file system) is skipped as busy, so several workers may share one sweep.
``--shard i/n`` takes every n-th run starting at i (0-based), so n jobs (a SLURM array) share a sweep without
overlapping, provided they use the same protocol and overrides.

Before anything runs, every planned run's config is checked against its backbone's architecture, read from the
model config without loading weights (:func:`plan_problems`): a sweep that cannot finish is refused with every
problem of every run. A run that fails anyway is recorded in its folder (``failed.json``, stage ``sweep``) and the
sweep goes on with the others (unless ``fail_fast``); rerunning the command retries it.

A grid point's run (a protocol with ``grid``) is also evaluated on its validation split; before it trains, its
dataset is checked to have a val split apart from its test split, so a grid on ImageNet fails at once, not after
training. :func:`plan_sweep` and :func:`run_planned` are what ``promptclip bench`` calls: the library writes the
sweep's manifest, the command line only parses arguments.

With ``gpus > 0`` each run is a subprocess (``python -m promptclip.bench.sweep RUN_DIR/sweep-run.json``) with
``CUDA_VISIBLE_DEVICES`` set to one GPU; its log goes to ``RUN_DIR/sweep.log``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from tqdm.auto import tqdm

from .. import run_files, runs
from ..config import Config, from_dict, to_dict
from ..engine.runner import data_change, evaluate_run, run
from ..engine.trainer import duration, show_bars
from ..engine.validation import require_validation_split, validate_run, validation_file
from ..errors import ConfigError, PromptclipError
from ..model import config_problems
from ..utils import atomic_write_json
from ..architecture import Architecture
from .protocol_files import Protocol, load_protocol, split_overrides
from .protocols import EvalSpec, RunSpec, eval_spec, expand, sweep_root, write_manifest

log = logging.getLogger("promptclip")
BUSY_EXIT = 75  # a worker's exit code when another process is writing its run (EX_TEMPFAIL)


def parse_shard(text: str) -> Tuple[int, int]:
    """``"2/8"`` → ``(2, 8)``; the index is 0-based (SLURM's ``--array=0-7``)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must look like i/n (e.g. 0/4), not {text!r}.") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard {text}: need n >= 1 and 0 <= i < n (i is 0-based).")
    return index, count


def shard(runs: Sequence[RunSpec], index: int, count: int) -> List[RunSpec]:
    """Every ``count``-th run starting at ``index``: deterministic, disjoint, together all runs."""
    return list(runs[index::count])


@dataclass
class SweepPlan:
    """A protocol's runs as ``bench`` resolved them: all of them (the manifest lists every one) and those this
    process runs (its shard)."""

    protocol: Protocol
    runs: List[RunSpec]
    selected: List[RunSpec]
    root: Path
    overrides: List[str]


def plan_sweep(name: str, overrides: Sequence[str] = (), shard_text: Optional[str] = None) -> SweepPlan:
    """Load the protocol ``name`` with command-line ``overrides`` (protocol keys, config keys, ``METHOD:key=value``)
    and expand it; ``shard_text`` (``i/n``) selects this process's share."""
    protocol_keys, common, scoped = split_overrides(overrides)
    protocol = load_protocol(name, protocol_keys)
    specs = expand(protocol, common, scoped)
    selected = shard(specs, *parse_shard(shard_text)) if shard_text else specs
    return SweepPlan(protocol, specs, selected, sweep_root(protocol, common), list(overrides))


def plan_problems(specs: Sequence[RunSpec]) -> Tuple[Dict[str, List[str]], List[str]]:
    """``(run id → what its backbone cannot run, models whose architecture is unknown here)``: every run's config
    checked against its backbone's layer counts and towers, read from the model config (nothing is loaded). A model
    whose config is not on this machine (an uncached ``hf-hub:`` model, a missing ``local-dir:``) is not checked."""
    architectures: Dict[Tuple[str, Optional[str]], Optional[Architecture]] = {}
    problems: Dict[str, List[str]] = {}
    for spec in specs:
        key = (spec.config.model.name, spec.config.model.cache_dir)
        if key not in architectures:
            architectures[key] = Architecture.of(*key)
        arch = architectures[key]
        found = config_problems(spec.config, arch) if arch is not None else []
        if found:
            problems[spec.id] = found
    return problems, sorted({name for (name, _), arch in architectures.items() if arch is None})


def problems_text(problems: Dict[str, List[str]], total: int) -> str:
    """How many runs cannot run, one line per run (``maple/…: text.depth=9 > 2 text layers (use 1..2); …``), and
    the way out."""
    lines = "\n".join(f"  {run_id}: {'; '.join(found)}" for run_id, found in problems.items())
    return (f"{len(problems)} of {total} planned runs cannot run on their backbones:\n{lines}\nLower those settings "
            f"(e.g. METHOD:text.depth=2), or use a deeper backbone (offline: model.name=tiny-vit-deep, 12 layers per "
            f"tower).")


def check_plan(specs: Sequence[RunSpec]) -> None:
    """Refuse a sweep some of whose runs cannot run on their backbones, listing every problem of every run."""
    problems, _ = plan_problems(specs)
    if problems:
        raise ConfigError(f"Nothing was started: {problems_text(problems, len(specs))}")


def run_planned(plan: SweepPlan, gpus: int = 0, fail_fast: bool = False, progress: bool = True,
                on_epoch_end: Optional[Callable[[int], None]] = None, replace: bool = False,
                merge: bool = False) -> "SweepOutcome":
    """Check every planned run against its backbone, write the sweep's manifest (every planned run, for the
    report; another plan already there is refused unless ``merge`` or ``replace``), then run the selected runs not
    done yet."""
    check_plan(plan.runs)
    write_manifest(plan.protocol, plan.runs, plan.root, plan.overrides, replace=replace, merge=merge)
    return run_sweep(plan.selected, gpus=gpus, fail_fast=fail_fast, progress=progress, on_epoch_end=on_epoch_end,
                     replace=replace)


def record_failure(spec: RunSpec, error: str) -> None:
    """``RUN_DIR/failed.json`` for a run that failed in the sweep; a retried run that succeeds removes it."""
    atomic_write_json(spec.run_dir / runs.FAILED, {"error": error, "at": runs.now(), "stage": "sweep"})


def error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def status(spec: RunSpec) -> str:
    """done (result, evaluations and, for a grid point, validation exist), evaluate (result only), resume
    (interrupted), todo, busy (another process is writing it), failed (a non-finite loss), other (a run with other
    settings), corrupt."""
    if run_files.is_locked(spec.run_dir):
        return "busy"
    state = run_files.run_state(spec.run_dir, spec.identity)
    if state.status == "done":
        if _data_change(spec, state) is not None:
            return "other"  # finished on training images that have changed since: never counted as done
        files = [(e.file, "test") for e in spec.evaluations]
        files += [(spec.validation, "val")] if spec.validation is not None else []
        return "done" if all(_evaluation_done(path, key) for path, key in files) else "evaluate"
    return {"new": "todo"}.get(state.status, state.status)


def _evaluation_done(path: Path, key: str) -> bool:
    try:
        return run_files.read_scored(path, "an evaluation result", key) is not None
    except runs.CorruptFile:
        return False


def config_changes(spec: RunSpec) -> List[str]:
    """``key: stored → requested`` for a folder holding a run made with other settings (or why it is unknown)."""
    state = run_files.run_state(spec.run_dir, spec.identity)
    if state.status == "done":
        changed = _data_change(spec, state)
        return [changed] if changed is not None else []
    if state.status != "other":
        return []
    return state.differences or [state.problem]


def _data_change(spec: RunSpec, state: run_files.RunState) -> Optional[str]:
    """Why a finished run's training images are no longer the ones it read (None: the same, or not recorded), as
    ``train`` checks before reusing a result."""
    try:
        return data_change(spec.config, spec.run_dir, state.stored)
    except PromptclipError as err:
        return f"{spec.run_dir}: its training data cannot be read now, so its result cannot be checked: {err}"


def summary_line(spec: RunSpec, result: dict, evaluations: Sequence[Tuple[EvalSpec, dict]], seconds: float,
                 validation: Optional[dict] = None) -> str:
    """``coop DescribableTextures all shots 16 seed 1: 63.20% | new 55.10% (3m12s)``; a grid point's run names its
    values and its validation accuracy."""
    parts = [f"{result['test']['accuracy']:.2f}%" if "test" in result else "no test"]
    parts += [f"{e.dataset}{'' if e.subsample == 'all' else ' ' + e.subsample} {r['test']['accuracy']:.2f}%"
              for e, r in evaluations]
    parts += [f"val {validation['val']['accuracy']:.2f}%"] if validation is not None else []
    key = spec.key
    point = f" {key.setting}" if key.grid else ""
    return (f"{key.method} {key.dataset} {key.subsample} shots {key.shots}{point} seed {key.seed}: "
            f"{' | '.join(parts)} ({duration(seconds)})")


def run_one(spec: RunSpec, progress: bool = True, on_epoch_end: Optional[Callable[[int], None]] = None,
            replace: bool = False) -> Tuple[dict, List[Tuple[EvalSpec, dict]], Optional[dict]]:
    """Train and evaluate one run (or read it back), then its evaluations and, for a grid point, its validation
    (each read back if done). A grid point's dataset is checked to have a val split before anything trains."""
    if spec.validation is not None and not (spec.run_dir / runs.RESULT).is_file():
        require_validation_split(spec.config, spec.run_dir)
    result = run(spec.config, progress=progress, on_epoch_end=on_epoch_end, replace=replace, key=spec.key)
    evaluations = [(e, evaluate_run(spec.run_dir, e.overrides, progress=progress, label=e.dataset))
                   for e in spec.evaluations]
    validation = validate_run(spec.run_dir, progress=progress) if spec.validation is not None else None
    return result, evaluations, validation


@dataclass
class SweepOutcome:
    finished: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)  # done before this call
    busy: List[str] = field(default_factory=list)  # another process is writing them
    other: Dict[str, List[str]] = field(default_factory=dict)  # run id → differing settings (left alone)
    failed: Dict[str, str] = field(default_factory=dict)  # run id → error (also in the run's failed.json)


class _Bar:
    """The sweep's progress bar: done / running / left, with a time estimate from the runs done in this call."""

    def __init__(self, total: int, done: int, progress: bool):
        self.bar = tqdm(total=total, initial=done, desc="sweep", unit="run", disable=not show_bars(progress),
                        dynamic_ncols=True)
        self.total, self.done = total, done

    def show(self, running: int) -> None:
        self.bar.set_postfix_str(f"done {self.done}, running {running}, left {self.total - self.done - running}")

    def finish_one(self, line: str, running: int) -> None:
        self.done += 1
        self.write(line)
        self.bar.update(1)
        self.show(running)

    def write(self, line: str) -> None:
        if self.bar.disable:
            log.info("%s", line)
        else:
            self.bar.write(line)

    def close(self) -> None:
        self.bar.close()


def run_sweep(specs: Sequence[RunSpec], gpus: int = 0, fail_fast: bool = False, progress: bool = True,
              on_epoch_end: Optional[Callable[[int], None]] = None, replace: bool = False) -> SweepOutcome:
    """Run every run of ``specs`` not finished yet; sequentially in this process, or ``gpus`` at a time.

    Folders holding runs with other settings are listed in the outcome and left alone unless ``replace``. A failed
    run is recorded (:func:`record_failure`) and the others go on, unless ``fail_fast`` (no further run starts)."""
    outcome = SweepOutcome()
    states = {spec.id: status(spec) for spec in specs}
    outcome.skipped = [spec.id for spec in specs if states[spec.id] == "done"]
    outcome.busy = [spec.id for spec in specs if states[spec.id] == "busy"]
    if not replace:
        outcome.other = {spec.id: config_changes(spec) for spec in specs if states[spec.id] == "other"}
    todo = [spec for spec in specs if states[spec.id] not in ("done", "busy") and spec.id not in outcome.other]
    # --replace redoes only the folders that hold other settings or unknown ones: run(replace=True) redoes any run,
    # and an interrupted run, or a finished one missing an evaluation, must resume or be evaluated, not redone
    replacing = {spec.id for spec in todo if replace and states[spec.id] in ("other", "corrupt")}
    bar = _Bar(len(specs), len(outcome.skipped), progress)
    for run_id, changes in outcome.other.items():
        bar.write(f"NOT RUN {run_id}: its folder holds a run made with other settings ({'; '.join(changes[:4])}"
                  f"{'; ...' if len(changes) > 4 else ''}).")
    for run_id in outcome.busy:
        bar.write(f"BUSY {run_id}: {run_files.describe_owner(next(s.run_dir for s in specs if s.id == run_id))}.")
    bar.write(f"{len(specs)} runs: {len(outcome.skipped)} finished, {len(todo)} to run"
              f"{f', {gpus} at a time' if gpus else ''}"
              f"{f', {len(outcome.busy)} busy elsewhere' if outcome.busy else ''}"
              f"{f', {len(outcome.other)} with other settings' if outcome.other else ''}.")
    try:
        if gpus:
            _run_parallel(todo, gpus, fail_fast, bar, outcome, replacing)
        else:
            _run_sequential(todo, fail_fast, progress, on_epoch_end, bar, outcome, replacing)
    finally:
        bar.close()
    return outcome


def _run_sequential(todo: Sequence[RunSpec], fail_fast: bool, progress: bool,
                    on_epoch_end: Optional[Callable[[int], None]], bar: _Bar, outcome: SweepOutcome,
                    replacing: Set[str]) -> None:
    for spec in todo:
        if status(spec) == "done":  # another worker finished it since the plan was made: not this one's work
            outcome.skipped.append(spec.id)
            bar.finish_one(f"done elsewhere {spec.id}", running=0)
            continue
        bar.show(running=1)
        started = time.time()
        try:
            result, evaluations, validation = run_one(spec, progress, on_epoch_end, spec.id in replacing)
        except runs.RunBusy as err:  # another worker took it since the plan was made
            outcome.busy.append(spec.id)
            bar.write(f"BUSY {spec.id}: {err}")
            continue
        except Exception as err:  # noqa: BLE001  (a failed run is recorded; the others go on)
            outcome.failed[spec.id] = error_text(err)
            record_failure(spec, error_text(err))
            with (spec.run_dir / runs.SWEEP_LOG).open("a") as log_file:
                log_file.write(f"{runs.now()} FAILED\n{traceback.format_exc()}")
            bar.write(f"FAILED {spec.id}: {first_line(error_text(err))}")
            if fail_fast:
                break
            continue
        (spec.run_dir / runs.FAILED).unlink(missing_ok=True)
        outcome.finished.append(spec.id)
        bar.finish_one(summary_line(spec, result, evaluations, time.time() - started, validation), running=0)


def visible_gpus(count: int) -> List[str]:
    """The first ``count`` GPU ids this process may use (from CUDA_VISIBLE_DEVICES when set)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [g.strip() for g in visible.split(",") if g.strip()] if visible else [str(i) for i in range(count)]
    if len(ids) < count:
        raise ConfigError(f"--gpus {count}, but CUDA_VISIBLE_DEVICES lists only {len(ids)}: {visible}.")
    return ids[:count]


def write_spec(spec: RunSpec, replace: bool = False) -> Path:
    """The file a worker process reads: the run's key, the resolved config and the evaluations."""
    path = spec.run_dir / runs.SWEEP_SPEC
    atomic_write_json(path, {"id": spec.id, **spec.key.to_json(), "config": to_dict(spec.config), "replace": replace,
                             "evaluations": [{"dataset": e.dataset, "subsample": e.subsample,
                                              "overrides": e.overrides} for e in spec.evaluations]})
    return path


def read_spec(path: Path) -> Tuple[RunSpec, bool]:
    """A worker's run (and whether to replace a run with other settings); it must live in the spec's folder."""
    path = Path(path)
    data = run_files.read_json(path, "a sweep worker's run", ("id", "config", "evaluations"))
    if data is None:
        raise runs.CorruptFile(f"{path} does not exist.")
    cfg: Config = from_dict(Config, data["config"])
    run_dir = path.parent
    if not cfg.output.dir or Path(cfg.output.dir).resolve() != run_dir.resolve():
        raise runs.CorruptFile(f"{path} names the run folder {cfg.output.dir!r}, not its own folder {run_dir}; "
                               f"refusing to write elsewhere. Rerun the bench command to rewrite it.")
    identity = runs.Identity.of(cfg)
    evaluations = [eval_spec(cfg, identity, runs.safe_component(e["dataset"], "evaluation dataset"),
                             e["subsample"], list(e["overrides"])) for e in data["evaluations"]]
    key = runs.RunKey.from_json(data, f"{path} (a sweep worker's run)")
    validation = validation_file(run_dir, cfg, identity.fingerprint) if key.grid else None
    return RunSpec(data["id"], key, cfg, run_dir, identity, evaluations, validation), bool(data.get("replace", False))


def _run_parallel(todo: Sequence[RunSpec], gpus: int, fail_fast: bool, bar: _Bar, outcome: SweepOutcome,
                  replacing: Set[str]) -> None:
    free = visible_gpus(gpus)
    pending = list(todo)
    running: Dict[subprocess.Popen, Tuple[RunSpec, str, float, str]] = {}
    with _terminate_as_exit():
        _supervise(pending, running, free, fail_fast, bar, outcome, replacing)


@contextlib.contextmanager
def _terminate_as_exit():
    """While workers run, SIGTERM (a cluster's scancel, a ``kill``) unwinds this process like Ctrl-C, so that the
    workers it started are stopped with it instead of outliving it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _supervise(pending: List[RunSpec], running: Dict[subprocess.Popen, Tuple[RunSpec, str, float, str]],
               free: List[str], fail_fast: bool, bar: _Bar, outcome: SweepOutcome, replacing: Set[str]) -> None:
    try:
        while pending or running:
            while pending and free and not (outcome.failed and fail_fast):
                spec, gpu = pending.pop(0), free.pop(0)
                spec_file = write_spec(spec, spec.id in replacing)
                env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
                with (spec.run_dir / runs.SWEEP_LOG).open("a") as log_file:
                    process = subprocess.Popen([sys.executable, "-m", "promptclip.bench.sweep", str(spec_file)],
                                               env=env, stdout=log_file, stderr=subprocess.STDOUT)
                running[process] = (spec, gpu, time.time(), runs.now())
                bar.show(len(running))
            if not running:
                break
            time.sleep(0.2)
            for process in [p for p in running if p.poll() is not None]:
                spec, gpu, started, started_at = running.pop(process)
                free.append(gpu)
                if process.returncode == 0 and status(spec) == "done":
                    outcome.finished.append(spec.id)
                    evaluations = [(e, run_files.read_json(e.file, "an evaluation result")) for e in spec.evaluations]
                    validation = run_files.read_json(spec.validation, "a validation result") if spec.validation \
                        else None
                    bar.finish_one(summary_line(spec, run_files.read_result(spec.run_dir), evaluations,
                                                time.time() - started, validation), len(running))
                elif process.returncode == BUSY_EXIT:
                    outcome.busy.append(spec.id)
                    bar.write(f"BUSY {spec.id}: {run_files.describe_owner(spec.run_dir)}.")
                else:
                    outcome.failed[spec.id] = _worker_failure(spec, process.returncode, started_at)
                    bar.write(f"FAILED {spec.id}: {first_line(outcome.failed[spec.id])}")
    finally:
        for process in running:  # interrupted: stop the runs this sweep started; they resume next time
            process.terminate()
        for process in running:
            process.wait()


def _worker_failure(spec: RunSpec, code: int, started: str) -> str:
    """A failed worker's error: what it recorded in ``failed.json`` since ``started``, or (killed, crashed) its exit
    code, recorded."""
    log_path = spec.run_dir / runs.SWEEP_LOG
    try:
        recorded = run_files.read_json(spec.run_dir / runs.FAILED, "a run's failure record")
    except runs.CorruptFile:
        recorded = None
    if recorded is not None and recorded.get("stage") == "sweep" and str(recorded.get("at", "")) >= started:
        return f"{recorded.get('error', '?')} (log: {log_path})"
    error = f"the worker stopped with exit code {code}; see {log_path}"
    record_failure(spec, error)
    return error


def worker_main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one written run spec (the ``gpus > 0`` worker); exit code BUSY_EXIT when another process holds it. A
    failure is recorded in the run's ``failed.json`` (exit code 1); success removes an earlier one."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print(f"usage: python -m promptclip.bench.sweep RUN_DIR/{runs.SWEEP_SPEC}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    spec, replace = read_spec(Path(argv[0]))
    started = time.time()
    try:
        result, evaluations, validation = run_one(spec, progress=False, replace=replace)
    except runs.RunBusy as err:
        log.warning("%s", err)
        return BUSY_EXIT
    except Exception as err:  # noqa: BLE001  (recorded for the sweep that started this worker)
        record_failure(spec, error_text(err))
        log.error("FAILED %s: %s\n%s", spec.id, error_text(err), traceback.format_exc())
        return 1
    (spec.run_dir / runs.FAILED).unlink(missing_ok=True)
    log.info("%s", summary_line(spec, result, evaluations, time.time() - started, validation))
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
