"""Run folders: their layout, their files, the identity of the settings that made them, and the one-writer lock.

A run's *identity* is every resolved setting that can change its result (model and weights, data and draw, learner
and loss options, optimiser, schedule, epochs, precision, seed); progress bars, worker counts, devices and output
paths are not part of it. ``identity.json`` records it when training starts, and a run is reused or resumed only
for the same fingerprint and the same training data (its ``data`` signature, checked apart from the fingerprint
since a sweep plans fingerprints before any data is read). Nothing here imports torch at import time, so ``report``,
``bench --dry-run`` and the CLI's help stay fast; only resolving ``train.precision=auto`` asks torch for the device.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from .errors import ConfigError, PromptclipError
from .utils import atomic_write_json, atomic_write_text

PathLike = Union[str, Path]

# ------------------------------------------------------------------------------------------------ file names
CONFIG = "config.yaml"  # the resolved config, as given
IDENTITY = "identity.json"  # fingerprint + the settings it covers, written when training starts
RESULT = "result.json"  # written last: the run is finished
FAILED = "failed.json"  # why the run stopped (non-finite loss ...)
METRICS = "metrics.jsonl"
LOG = "log.txt"
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT = f"{CHECKPOINT_DIR}/last.pt"
ELAPSED = f"{CHECKPOINT_DIR}/elapsed.json"  # seconds spent by the earlier segments of an interrupted run
WEIGHTS_HASHES = "weights-sha256.json"  # in output.cache_dir: a local checkpoint's sha256 by (path, size, mtime)
EVALS = "evals"
PROMPTS = "prompts.safetensors"
PROMPTS_META = "prompts.json"
TENSORBOARD_DIR = "tensorboard"  # output.report_to=[tensorboard]: the run's event files
WANDB_RUN = "wandb-run.json"  # output.report_to=[wandb]: the W&B run id, so a resumed run continues it
#: an exported adapter (``promptclip export``): PEFT's file names
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_MODEL = "adapter_model.safetensors"
PEFT_TYPE = "PROMPTCLIP"  # adapter_config.json's peft_type: what tells a promptclip adapter from PEFT's own
ADAPTER_FORMAT = 1  # the layout of adapter_config.json around prompts.json's fields
CLASSIFIER = "linear_probe.safetensors"
LOCK = ".lock"
LOCK_OWNER = ".lock-owner.json"
SWEEP_SPEC = "sweep-run.json"
SWEEP_LOG = "sweep.log"
MANIFEST_PREFIX = "protocol-"
PROTOCOL_KINDS = ("few_shot", "base_to_new", "cross_dataset", "domain_generalization")  # a manifest's layout
#: every file a run writes (split files generated for a dataset without one are ``split_*.json``); the sweep's own
#: files in a run folder (SWEEP_SPEC, SWEEP_LOG) describe the request, not a result, and are not among them
RUN_FILES = (CONFIG, IDENTITY, RESULT, FAILED, METRICS, LOG, PROMPTS, PROMPTS_META, CLASSIFIER, WANDB_RUN)
#: bumped when the same settings start to give other results, so that no run of an older version is reused or
#: resumed; each version says what changed
IDENTITY_VERSION = 3
VERSION_CHANGES = {
    2: "DAPT's prototypes come from the first cached training view, the zero-shot ensemble on ImageNet is CoOp's 7 "
       "templates, MaPLe's couplings start as the reference's copies and VPT's prompt dropout is per image",
    3: "a local checkpoint is identified by its content (sha256), train.precision=auto by the precision it "
       "resolves to, and the training images by their sizes and modification times",
}
#: settings that never change a run's result
NOT_IDENTITY = ("method", "output", "model.cache_dir", "data.num_workers", "train.device", "train.checkpoint_every",
                "train.eval_batch_size", "train.evaluate")
#: settings an evaluation of saved prompts may change (everything else belongs to the training run)
EVAL_SETTINGS = ("model", "data", "train.precision", "train.device", "train.eval_batch_size", "output.cache_dir")


class RunMismatch(PromptclipError):
    """A run folder holds a run made with other settings."""


class RunBusy(PromptclipError):
    """Another process is writing this run folder."""


class CorruptFile(PromptclipError):
    """A file the toolkit wrote earlier cannot be read."""


def manifest_path(root: PathLike, protocol: str) -> Path:
    return Path(root) / f"{MANIFEST_PREFIX}{protocol}.json"


# ------------------------------------------------------------------------------------------------ names → paths
_UNSAFE = re.compile(r"[^A-Za-z0-9._+@=-]+")


def safe_component(name: str, what: str) -> str:
    """``name`` as one folder name, refusing anything that could leave its parent folder."""
    text = str(name)
    if not text or text in (".", "..") or "/" in text or "\\" in text or "\0" in text or text.startswith("~"):
        raise ConfigError(f"{what} {text!r} cannot be a folder name: use letters, digits, '.', '_' or '-' "
                          f"(no '/', '..' or '~').")
    return text


def inside(root: PathLike, relative: str, what: str) -> Path:
    """``root / relative``, refusing absolute paths and ``..`` that would leave ``root``."""
    root_path = Path(root).resolve()
    if not isinstance(relative, str) or not relative or os.path.isabs(relative):
        raise CorruptFile(f"{what}: {relative!r} is not a path inside {root}; the file was edited or comes from "
                          f"elsewhere. Rewrite it with the command that made it.")
    target = (root_path / relative).resolve()
    if target != root_path and root_path not in target.parents:
        raise CorruptFile(f"{what}: {relative!r} points outside {root}; refusing to read or write there. Rewrite "
                          f"the file with the command that made it.")
    return target


def _short_hash(text: str, n: int = 6) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def _local_path(value: Optional[str]) -> Optional[Path]:
    """``value`` as an absolute path when it names an existing local file or folder."""
    if not value:
        return None
    path = Path(os.path.expanduser(value))
    return path.resolve() if path.exists() else None


def canonical_dataset(name: str) -> str:
    """One name per benchmark for all its aliases (``dtd``, ``DTD`` → ``DescribableTextures``); others unchanged."""
    from .data.benchmarks import find_benchmark

    bench = find_benchmark(name)
    return bench.name if bench is not None else name


def dataset_label(cfg) -> str:
    """The dataset's folder name: the canonical benchmark name, or for an image folder, list file or description
    YAML its name plus a hash of its location (two folders called ``images`` stay apart)."""
    name = cfg.data.name
    if name.lower().endswith((".yaml", ".yml")):
        where = f"{_local_path(name) or name}|{_local_path(cfg.data.root) or cfg.data.root}"
        return f"{safe_component(Path(name).stem, 'dataset')}-{_short_hash(where)}"
    canonical = canonical_dataset(name)
    if canonical != name or not cfg.data.root or name.lower() not in ("imagefolder", "listfile"):
        return safe_component(canonical, "data.name")
    root = _local_path(cfg.data.root) or Path(os.path.expanduser(cfg.data.root)).absolute()
    return f"{safe_component(root.name or 'root', 'data.root folder')}-{_short_hash(str(root))}"


def backbone_label(model_name: str, pretrained: Optional[str]) -> str:
    """``ViT-B-16_openai``, ``ViT-B-16_random``, ``hf-hub_org_repo``, ``ViT-B-16_<file>-<hash>``."""
    name = model_name
    if name.startswith("local-dir:"):
        folder = _local_path(name[len("local-dir:"):]) or Path(name[len("local-dir:"):])
        name = f"local-dir_{folder.name}-{_short_hash(str(folder))}"
    if pretrained is None:
        weights = "random" if not model_name.startswith(("hf-hub:", "local-dir:")) else ""
    else:
        file = _local_path(pretrained)
        weights = f"{file.stem}-{_short_hash(str(file))}" if file is not None else pretrained
    label = _UNSAFE.sub("_", f"{name}_{weights}" if weights else name).strip("_")
    return safe_component(label.replace(":", "_"), "model")


def shots_label(shots: int) -> str:
    return f"shots_{shots}" if shots > 0 else "all_shots" if shots < 0 else "shots_0"


def run_path(root: PathLike, method: str, backbone: str, dataset: str, subsample: str, shots: int, seed: int) -> Path:
    """``root/<method>/<backbone>/<dataset>/<subsample>/shots_<K>/seed_<S>``: the one run-folder layout."""
    return Path(root).joinpath(safe_component(method, "method"), safe_component(backbone, "model"),
                               safe_component(dataset, "dataset"), safe_component(subsample, "data.subsample"),
                               shots_label(shots), f"seed_{int(seed)}")


# ------------------------------------------------------------------------------------------------ identity
def effective_shots(cfg) -> int:
    """The shots a run really uses: 0 for methods that never see training data (zero-shot), -1 for "all"."""
    learners = [c for c in (cfg.text, cfg.vision) if c is not None]
    if not any(getattr(c, "uses_training_data", True) for c in learners):
        return 0
    return cfg.data.shots if cfg.data.shots > 0 else -1


def resolve(cfg):
    """``cfg`` with the settings that did not take effect recorded as what ran (zero-shot: no shots)."""
    shots = effective_shots(cfg)
    if shots == cfg.data.shots:
        return cfg
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, shots=shots))


def default_run_dir(cfg) -> Path:
    if cfg.output.dir:
        return Path(os.path.expanduser(cfg.output.dir))
    cfg = resolve(cfg)
    return run_path(cfg.output.root, cfg.method_name, backbone_label(cfg.model.name, cfg.model.pretrained),
                    dataset_label(cfg), cfg.data.subsample, cfg.data.shots, cfg.seed)


def _flatten(data: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(data, dict) and data and not prefix.endswith("options."):
        out: Dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def within(key: str, names: Sequence[str]) -> bool:
    """Whether dotted ``key`` is one of ``names`` or inside one of them (``optim.lr`` is within ``optim``)."""
    return any(key == n or key.startswith(n + ".") for n in names)


def resolved_precision(cfg) -> str:
    """The precision a run of ``cfg`` uses on this machine: ``auto`` resolved as the engine does (fp32 on CPU, bf16
    or fp16 on a GPU), so ``auto`` and what it stands for are one setting. Imports torch only for ``auto``."""
    if cfg.train.precision != "auto":
        return cfg.train.precision
    from .devices import resolve_device, resolve_precision

    return resolve_precision("auto", resolve_device(cfg.train.device))


def weights_digest(path: Path, cache_dir: Optional[PathLike]) -> str:
    """The sha256 of a local checkpoint file, so new weights at the same path and of the same size are other weights.

    Hashing gigabytes at every start would be slow, so the digest is kept in ``cache_dir/weights-sha256.json`` by
    (path, size, mtime_ns) and computed again only when one of them changes."""
    stat = path.stat()
    key, stamp = str(path), [stat.st_size, stat.st_mtime_ns]
    cache = Path(os.path.expanduser(str(cache_dir))) / WEIGHTS_HASHES if cache_dir else None
    known: Dict[str, Any] = {}
    if cache is not None and cache.is_file():
        try:
            known = json.loads(cache.read_text())
        except (ValueError, UnicodeDecodeError):  # a damaged cache only costs hashing again
            known = {}
        known = known if isinstance(known, dict) else {}
    entry = known.get(key)
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    known[key] = {"stamp": stamp, "sha256": digest.hexdigest()}
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(cache, known)
        except OSError:  # a read-only cache folder: hash again next time
            pass
    return digest.hexdigest()


def identity_settings(cfg) -> Dict[str, Any]:
    """The flat ``{dotted key: value}`` settings a run's result depends on, normalised so that the same data and
    weights give the same settings however they were written: a local checkpoint by its sha256, ``precision: auto``
    by the precision it resolves to here."""
    cfg = resolve(cfg)
    flat = _flatten(dataclasses.asdict(cfg))
    settings = {k: v for k, v in flat.items() if not within(k, NOT_IDENTITY)}
    settings["data.name"] = canonical_dataset(cfg.data.name)
    if cfg.data.name.lower().endswith((".yaml", ".yml")):
        settings["data.name"] = str(_local_path(cfg.data.name) or cfg.data.name)
    root = _local_path(cfg.data.root)
    settings["data.root"] = str(root) if root is not None else cfg.data.root
    weights = _local_path(cfg.model.pretrained)
    if weights is not None and weights.is_file():
        settings["model.pretrained"] = f"{weights} (sha256 {weights_digest(weights, cfg.output.cache_dir)})"
    settings["train.precision"] = resolved_precision(cfg)
    if cfg.model.name.startswith("local-dir:"):
        settings["model.name"] = f"local-dir:{_local_path(cfg.model.name[len('local-dir:'):]) or cfg.model.name}"
    return dict(sorted(settings.items()))


def fingerprint(settings: Dict[str, Any]) -> str:
    text = json.dumps({"version": IDENTITY_VERSION, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Identity:
    settings: Dict[str, Any]
    fingerprint: str
    version: int = IDENTITY_VERSION  # the IDENTITY_VERSION of the promptclip that wrote it
    #: the training data's signature (:func:`promptclip.data.fewshot.content_signature`), known once the data is read
    #: and so kept out of the fingerprint; empty before then, and for runs that read no training data
    data: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, cfg) -> "Identity":
        settings = identity_settings(cfg)
        return cls(settings, fingerprint(settings))

    def differences(self, other: "Identity") -> List[str]:
        """``key: old → new`` for every setting that differs (``self`` is the stored one)."""
        keys = sorted(set(self.settings) | set(other.settings))
        missing = "(not set)"
        return [f"{k}: {show_value(self.settings.get(k, missing))} → {show_value(other.settings.get(k, missing))}"
                for k in keys if self.settings.get(k, missing) != other.settings.get(k, missing)]


def data_changes(stored: Identity, data: Dict[str, Any], run_dir: PathLike) -> Optional[str]:
    """Why ``run_dir``'s run was made on other training data than ``data`` (None when the same, or not recorded)."""
    if not stored.data or stored.data == data:
        return None
    changed = [f"{split}: {_count(stored.data.get(split))} → {_count(data.get(split))}"
               for split in sorted(set(stored.data) | set(data)) if stored.data.get(split) != data.get(split)]
    return (f"{run_dir}: the training images changed since this run was made ({'; '.join(changed)}; a file's "
            f"size or modification time, or which files the draw holds). Its result would not be this data's.")


def _count(part: Any) -> str:
    if not isinstance(part, dict):
        return "none"
    return f"{part.get('items', '?')} images, signature {str(part.get('sha256', '?'))[:12]}"


def show_value(value: Any) -> str:
    """A setting's value as it is shown in messages and row labels: text as it is, anything else as JSON."""
    return json.dumps(value, default=str) if not isinstance(value, str) else value


def eval_identity(cfg, run_fingerprint: str) -> Identity:
    """What an evaluation of a run's prompts depends on: the run, and the evaluation's model and data."""
    settings = {k: v for k, v in identity_settings(cfg).items()
                if within(k, EVAL_SETTINGS) and k != "data.shots"}
    settings["run"] = run_fingerprint
    return Identity(settings, fingerprint(settings))


def eval_file(run_dir: PathLike, label: str, subsample: str, identity: Identity) -> Path:
    """``run_dir/evals/<dataset>-<subsample>-<fingerprint>.json``: one file per distinct evaluation."""
    return Path(run_dir) / EVALS / f"{safe_component(label, 'dataset')}-{subsample}-{identity.fingerprint[:8]}.json"


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


REDO = "Redo that run: its training command with --replace."


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


def now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


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
