"""A run folder's files: reading them with their fields checked, the folder's state for an identity, the one-writer
lock, and listing the runs under a folder. The names and the layout they follow are :mod:`promptclip.runs`'s.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .errors import PromptclipError
from .runs import (CHECKPOINT, CHECKPOINT_DIR, CONFIG, EVALS, FAILED, IDENTITY, LOCK, LOCK_OWNER, MANIFEST_PREFIX,
                   METRICS, PROMPTS, PROTOCOL_KINDS, REDO, RESULT, RUN_FILES, SWEEP_LOG, SWEEP_SPEC, TENSORBOARD_DIR,
                   VERSION_CHANGES, CorruptFile, Identity, PathLike, RunBusy, RunKey, inside, now, show_value)
from .utils import atomic_write_json, atomic_write_text

# ------------------------------------------------------------------------------------------------ reading files
def read_json(path: PathLike, what: str, required: Sequence[str] = ()) -> Optional[dict]:
    """A JSON object written by promptclip, or None when the file does not exist; a damaged one is a CorruptFile
    naming the file."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise CorruptFile(f"{path} ({what}) is damaged: not valid JSON ({err}).") from None
    if not isinstance(data, dict) or any(k not in data for k in required):
        raise CorruptFile(f"{path} ({what}) is damaged: expected a JSON object with {', '.join(required)}.")
    return data


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_scored(path: PathLike, what: str, key: str = "test") -> Optional[dict]:
    """A result file whose ``key`` metrics must hold a numeric accuracy (an evaluation, a validation), or None when
    the file does not exist; a wrong type is a CorruptFile naming the file and the field."""
    data = read_json(path, what, (key,))
    if data is None:
        return None
    metrics = data[key]
    if not isinstance(metrics, dict) or not _is_number(metrics.get("accuracy")):
        found = show_value(metrics.get("accuracy")) if isinstance(metrics, dict) else type(metrics).__name__
        raise CorruptFile(f"{path} ({what}) is damaged: {key}.accuracy is {found}, not a number. Rerun the command "
                          f"that made it (it redoes a damaged file).")
    return data


def read_result(run_dir: PathLike) -> Optional[dict]:
    """A finished run's ``result.json`` (None when unfinished), with the fields readers rely on checked for type."""
    path = Path(run_dir) / RESULT
    data = read_json(path, "a run's result", ("method", "dataset"))
    if data is None:
        return None
    wrong = [f"{k} is not text" for k in ("method", "dataset") if not isinstance(data[k], str)]
    if "test" in data and not (isinstance(data["test"], dict) and "accuracy" in data["test"]):
        wrong.append("its test metrics have no accuracy")
    elif "test" in data and not _is_number(data["test"]["accuracy"]):
        wrong.append(f"test.accuracy is {show_value(data['test']['accuracy'])}, not a number")
    wrong += [f"{k} is {show_value(data[k])}, not a number" for k in ("train_seconds", "train_loss")
              if data.get(k) is not None and not _is_number(data[k])]
    if wrong:
        raise CorruptFile(f"{path} (a run's result) is damaged: {'; '.join(wrong)}. {REDO}")
    return data


def result_key(result: dict, run_dir: PathLike) -> RunKey:
    """The key a run's ``result.json`` records; one written before results held their key has it derived from its
    own fields (its dataset then the data's name, not the folder's label, and no grid point)."""
    where = f"{Path(run_dir) / RESULT} (a run's result)"
    return RunKey.from_json(result["key"] if "key" in result else result, where)


def read_identity(run_dir: PathLike) -> Optional[Identity]:
    """A run's ``identity.json`` (None when absent), its fields checked for type."""
    path = Path(run_dir) / IDENTITY
    data = read_json(path, "a run's identity", ("fingerprint", "settings"))
    if data is None:
        return None
    settings, version, signature = data["settings"], data.get("version", 1), data.get("data", {})  # v1: no version
    wrong = []
    if not isinstance(settings, dict) or not all(isinstance(k, str) for k in settings):
        wrong.append(f"settings is {type(settings).__name__}, not an object of named settings")
    if not isinstance(data["fingerprint"], str):
        wrong.append(f"fingerprint is {show_value(data['fingerprint'])}, not text")
    if not isinstance(signature, dict):
        wrong.append(f"data is {show_value(signature)}, not an object")
    if wrong:
        raise CorruptFile(f"{path} (a run's identity) is damaged: {'; '.join(wrong)}. {REDO}")
    return Identity(dict(settings), data["fingerprint"], version if isinstance(version, int) else 0, signature)


def write_identity(run_dir: PathLike, identity: Identity, config_yaml: str) -> None:
    atomic_write_text(Path(run_dir) / CONFIG, config_yaml)
    atomic_write_json(Path(run_dir) / IDENTITY, {"fingerprint": identity.fingerprint, "settings": identity.settings,
                                                 "version": identity.version, "data": identity.data,
                                                 "created": now()})


# ------------------------------------------------------------------------------------------------ state
@dataclass
class RunState:
    """What a run folder holds for the requested identity.

    ``status``: ``new`` (nothing of value), ``done``, ``resume`` (same settings, unfinished), ``failed`` (same
    settings, stopped by a non-finite loss), ``other`` (another run's settings), ``corrupt`` (a file cannot be read).
    """

    status: str
    run_dir: Path
    result: Optional[dict] = None
    stored: Optional[Identity] = None
    problem: str = ""
    failure: Optional[dict] = None
    differences: List[str] = field(default_factory=list)


def _has_work(run_dir: Path) -> bool:
    return (run_dir / RESULT).exists() or (run_dir / CHECKPOINT).exists() or (run_dir / PROMPTS).exists()


def refuse_links(run_dir: PathLike, names: Sequence[str] = ()) -> None:
    """A CorruptFile naming the first of a run's files or folders (``names``, default all of them) that is a symbolic
    link: a run's files are never read or written through links, which could point anywhere."""
    run_dir = Path(run_dir)
    for name in names or (*RUN_FILES, CHECKPOINT_DIR, EVALS, TENSORBOARD_DIR, LOCK, LOCK_OWNER, SWEEP_SPEC,
                          SWEEP_LOG):
        if (run_dir / name).is_symlink():
            raise CorruptFile(f"{run_dir / name} is a symbolic link (to {os.readlink(run_dir / name)}): promptclip "
                              f"never reads or writes a run's files through links. Remove the link, or redo the run "
                              f"with --replace (which removes the link, never what it points to).")


def run_state(run_dir: PathLike, identity: Identity) -> RunState:
    """The state of ``run_dir`` for a run with ``identity`` (reads only)."""
    run_dir = Path(run_dir)
    try:
        refuse_links(run_dir)
        stored = read_identity(run_dir)
    except CorruptFile as err:
        return RunState("corrupt", run_dir, problem=str(err))
    if stored is None:
        if _has_work(run_dir):
            return RunState("other", run_dir, problem=f"{run_dir} holds a run without {IDENTITY} (made by an older "
                                                      f"promptclip, or by hand): its settings are unknown.")
        return RunState("new", run_dir)
    if stored.fingerprint != identity.fingerprint:
        if not _has_work(run_dir):  # stopped before its first checkpoint: nothing to keep
            return RunState("new", run_dir, stored=stored)
        try:
            failure = read_json(run_dir / FAILED, "a run's failure record")
        except CorruptFile:
            failure = None
        if stored.version != identity.version:
            changed = "; ".join(VERSION_CHANGES[v] for v in range(stored.version + 1, identity.version + 1)
                                if v in VERSION_CHANGES)
            return RunState("other", run_dir, stored=stored, failure=failure,
                            problem=f"{run_dir} holds a run made by an earlier promptclip (run identity version "
                                    f"{stored.version}, now {identity.version}), whose results this version's "
                                    f"would not equal{': ' + changed if changed else ''}.")
        return RunState("other", run_dir, stored=stored, failure=failure, differences=stored.differences(identity))
    try:
        result = read_result(run_dir)
        failure = read_json(run_dir / FAILED, "a run's failure record")
    except CorruptFile as err:
        return RunState("corrupt", run_dir, stored=stored, problem=str(err))
    if result is not None:
        return RunState("done", run_dir, result=result, stored=stored)
    if failure is not None:
        return RunState("failed", run_dir, stored=stored, failure=failure)
    return RunState("resume", run_dir, stored=stored)


def mismatch_message(state: RunState) -> str:
    what = state.problem or f"{state.run_dir} holds a run made with other settings (stored → requested):"
    lines = [what, *(f"  {line}" for line in state.differences[:20])]
    if len(state.differences) > 20:
        lines.append(f"  ... and {len(state.differences) - 20} more")
    lines.append("It is neither reused nor resumed. Give the new settings a folder of their own "
                 "(output.dir=NEW_FOLDER), or replace the old run with --replace (deletes its results and checkpoint).")
    return "\n".join(lines)


def clear(run_dir: PathLike) -> None:
    """Remove every file a run writes (never anything else the folder may hold, and never the lock)."""
    run_dir = Path(run_dir)
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for path in run_dir.glob("split_*.json"):
        path.unlink()
    for name in (CHECKPOINT_DIR, EVALS, TENSORBOARD_DIR):  # not wandb/: it may hold offline runs not yet synced
        if (run_dir / name).is_symlink():  # the link goes, never what it points to
            (run_dir / name).unlink()
        shutil.rmtree(run_dir / name, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ the lock
class RunLock:
    """One writer per run folder: an OS file lock (``filelock``), released by the kernel if the holder dies, so a
    lock left by a killed process is simply taken over. The holder's pid, host and start time sit beside it.

    :meth:`leave_nothing` makes the release also remove the lock file and the folders the lock created, where they
    are empty then (a run that failed before it began leaves no trace; what others put there stays)."""

    def __init__(self, run_dir: PathLike):
        self.run_dir = Path(run_dir)
        self._lock = None
        self._created: List[Path] = []  # the folders acquire() made, deepest first
        self._leave_nothing = False

    def acquire(self) -> "RunLock":
        from filelock import FileLock, Timeout

        created = []
        for folder in (self.run_dir, *self.run_dir.parents):
            if folder.exists():
                break
            created.append(folder)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        refuse_links(self.run_dir, (LOCK, LOCK_OWNER))
        lock = FileLock(str(self.run_dir / LOCK), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise RunBusy(f"{self.run_dir} is busy: {describe_owner(self.run_dir, wait=1.0)}. Wait for that process "
                          f"to finish, or stop it; a killed process's lock is taken over automatically.") from None
        self._lock, self._created, self._leave_nothing = lock, created, False
        atomic_write_json(self.run_dir / LOCK_OWNER, {"pid": os.getpid(), "host": socket.gethostname(), "since": now()})
        return self

    def leave_nothing(self) -> None:
        """On release, remove the lock file and the now empty folders this lock created."""
        self._leave_nothing = True

    def release(self) -> None:
        if self._lock is None:
            return
        (self.run_dir / LOCK_OWNER).unlink(missing_ok=True)
        if self._leave_nothing:  # removed while still held, so no one else holds a lock on it
            (self.run_dir / LOCK).unlink(missing_ok=True)
        self._lock.release()
        self._lock = None
        if self._leave_nothing:
            for folder in self._created:
                try:
                    folder.rmdir()
                except OSError:  # not empty: it holds something else now
                    break

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def describe_owner(run_dir: PathLike, wait: float = 0.0) -> str:
    """``pid N on host H since T`` of the lock's holder; ``wait`` covers a holder that has just taken the lock and
    not yet written its name."""
    deadline = time.monotonic() + wait
    while True:
        try:
            owner = read_json(Path(run_dir) / LOCK_OWNER, "lock owner", ("pid", "host", "since"))
        except CorruptFile:
            owner = None
        if owner is not None or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    if owner is None:
        return "another process holds its lock"
    return f"pid {owner['pid']} on host {owner['host']} since {owner['since']}"


def is_locked(run_dir: PathLike) -> bool:
    """Whether a process holds ``run_dir``'s lock now."""
    from filelock import FileLock, Timeout

    path = Path(run_dir) / LOCK
    if not path.exists():
        return False
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    lock.release()
    return False


def read_manifest(path: PathLike) -> dict:
    """A sweep manifest, with every folder and file it names checked to lie inside the sweep folder."""
    path = Path(path)
    data = read_json(path, "a sweep manifest", ("protocol", "kind", "runs"))
    if data is None:
        raise CorruptFile(f"{path} does not exist.")
    if path.name != f"{MANIFEST_PREFIX}{data['protocol']}.json" or data["kind"] not in PROTOCOL_KINDS:
        raise CorruptFile(f"{path} (a sweep manifest) is damaged: its protocol {show_value(data['protocol'])} or kind "
                          f"{show_value(data['kind'])} is not the one its file name and the protocol kinds allow; "
                          f"nothing "
                          f"is written under names read from it. Rerun the bench command to rewrite it.")
    root = path.parent
    try:
        for run in data["runs"]:
            run["path"] = inside(root, run["dir"], str(path))
            for evaluation in run.get("evaluations", []):
                evaluation["path"] = inside(root, evaluation["file"], str(path))
    except (KeyError, TypeError):
        raise CorruptFile(f"{path} (a sweep manifest) is damaged: a run entry lacks its dir or file. Rerun the "
                          f"bench command to rewrite it.") from None
    return data


# ------------------------------------------------------------------------------------------------ listing
@dataclass
class RunInfo:
    """One run folder as ``promptclip runs`` shows it."""

    path: Path
    status: str  # done, running, interrupted, failed, damaged
    detail: str = ""  # the lock's owner, the failure, or what is damaged
    settings: Dict[str, Any] = field(default_factory=dict)
    accuracy: Optional[float] = None
    epochs: str = ""  # "12/50" for a run that trains
    key: Optional[RunKey] = None  # a finished run's key (:func:`result_key`)


def _epochs(run_dir: Path, settings: Dict[str, Any]) -> str:
    total = settings.get("train.epochs")
    if not isinstance(total, int) or isinstance(total, bool) or total <= 0:
        return ""
    metrics = run_dir / METRICS
    done = sum(1 for line in metrics.read_text().splitlines() if line.strip()) if metrics.is_file() else 0
    return f"{min(done, total)}/{total}"


def describe_run(run_dir: PathLike) -> RunInfo:
    """Status, identity and accuracy of one run folder (reads only)."""
    run_dir = Path(run_dir)
    try:
        stored = read_identity(run_dir)
    except CorruptFile as err:
        return RunInfo(run_dir, "damaged", str(err))
    settings = stored.settings if stored else {}
    info = RunInfo(run_dir, "interrupted", settings=settings, epochs=_epochs(run_dir, settings))
    if is_locked(run_dir):
        info.status, info.detail = "running", describe_owner(run_dir)
        return info
    try:
        result = read_result(run_dir)
        failure = read_json(run_dir / FAILED, "a run's failure record")
        info.key = result_key(result, run_dir) if result is not None else None
    except CorruptFile as err:
        info.status, info.detail = "damaged", str(err)
        return info
    if result is not None:
        info.status = "done"
        info.accuracy = result.get("test", {}).get("accuracy")
    elif failure is not None:
        info.status, info.detail = "failed", str(failure.get("error", "")).split(". ")[0]
    elif stored is None:
        info.detail = f"no {IDENTITY}: made by an older promptclip, or by hand"
    return info


def find_runs(root: PathLike) -> List[RunInfo]:
    """Every run folder under ``root`` (a folder holding a run's identity, result or checkpoint), sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise PromptclipError(f"{root} is not a folder: give a folder of runs (output.root, e.g. runs).")
    markers = (IDENTITY, RESULT, CHECKPOINT_DIR)
    folders = sorted({p.parent for name in markers for p in root.rglob(name)})
    return [describe_run(folder) for folder in folders]
