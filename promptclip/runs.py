"""Run folders: their key and layout, their file names, and the identity of the settings that made them.

A run's *key* (:class:`RunKey`) is what names it, as every DomainBed record carries its args: method, backbone,
dataset, training classes, shots, seed and, in a tuned sweep, its grid point. The key gives the run's folder
(:meth:`RunKey.path`, the one layout) and has one JSON form (:meth:`RunKey.to_json`), which the sweep manifest, a sweep
worker's file, ``result.json`` and the evaluation files record and every reader reads back (:meth:`RunKey.from_json`),
so no folder name is ever parsed.

A run's *identity* is every resolved setting that can change its result (model and weights, data and draw, learner
and loss options, optimiser, schedule, epochs, precision, seed); progress bars, worker counts, devices and output
paths are not part of it. ``identity.json`` records it when training starts, and a run is reused or resumed only
for the same fingerprint and the same training data (its ``data`` signature, checked apart from the fingerprint
since a sweep plans fingerprints before any data is read). Reading a run folder's files, its state, the one-writer
lock and listing runs are :mod:`promptclip.run_files`. Nothing here imports torch at import time, so ``report``,
``bench --dry-run`` and the CLI's help stay fast; only resolving ``train.precision=auto`` asks torch for the device.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import ConfigError, PromptclipError
from .utils import atomic_write_json

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


REDO = "Redo that run: its training command with --replace."


def now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


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


_FOLDER_UNSAFE = re.compile(r"[^A-Za-z0-9._+@-]")


def grid_label(point: Mapping[str, Any]) -> str:
    """A grid point as one folder name: ``optim.lr=0.002,losses.dapt_inter.weight=0.1``. Values that do not read
    well in a folder name (lists, paths) have their other characters replaced and a hash of the exact point added,
    so two points never share a name."""
    point = dict(point)
    texts = {key: json.dumps(v, separators=(",", ":")) if not isinstance(v, str) else v for key, v in point.items()}
    label = ",".join(f"{key}={_FOLDER_UNSAFE.sub('_', text)}" for key, text in texts.items())
    if any(_FOLDER_UNSAFE.search(f"{key}{text}") for key, text in texts.items()) or len(label) > 120:
        digest = hashlib.sha256(json.dumps(point, sort_keys=True).encode()).hexdigest()[:8]
        label = f"{label[:100]}-{digest}"
    return safe_component(label, "grid point")


#: a grid point: its (dotted config key, value) pairs, in the grid's order (its folder name follows that order)
GridPoint = Tuple[Tuple[str, Any], ...]


@dataclass(frozen=True)
class RunKey:
    """What names a run: its folder is ``<root>/<method>/<backbone>/<dataset>/<subsample>/shots_<K>/seed_<S>``, a
    grid point's one level deeper (``.../shots_<K>/<grid label>/seed_<S>``); its JSON form is its fields by name,
    ``grid`` an object. ``grid`` takes a mapping or pairs and holds pairs; it is empty for a run outside a grid."""

    method: str
    backbone: str  # :func:`backbone_label`: ``ViT-B-16_openai``
    dataset: str  # the dataset's label in folders and reports (:func:`dataset_label`, or a protocol's)
    subsample: str  # the classes trained on: all, base, new
    shots: int  # as the run uses them: 0 for zero-shot, -1 for all
    seed: int
    grid: GridPoint = ()

    def __post_init__(self):
        object.__setattr__(self, "grid", tuple(dict(self.grid).items()))

    def __hash__(self) -> int:  # a grid value may be a list
        return hash(json.dumps(self.to_json(), sort_keys=True, default=str))

    @classmethod
    def of(cls, cfg, *, method: Optional[str] = None, dataset: Optional[str] = None,
           grid: Union[Mapping[str, Any], GridPoint] = ()) -> "RunKey":
        """The key of a run of ``cfg``, its shots as it uses them; a sweep names the ``method`` and ``dataset`` as its
        protocol does (a method entry's name, a dataset entry's label) and gives the run's grid point."""
        cfg = resolve(cfg)
        return cls(method or cfg.method_name, backbone_label(cfg.model.name, cfg.model.pretrained),
                   dataset or dataset_label(cfg), cfg.data.subsample, cfg.data.shots, cfg.seed, grid)

    @property
    def point(self) -> Dict[str, Any]:
        """The grid point as ``{dotted key: value}`` (``{}`` outside a grid)."""
        return dict(self.grid)

    @property
    def setting(self) -> str:
        """The grid point's folder name (:func:`grid_label`), ``""`` outside a grid."""
        return grid_label(self.point) if self.grid else ""

    def path(self, root: PathLike) -> Path:
        """The run's folder under ``root``: the one run-folder layout."""
        parts = [safe_component(self.method, "method"), safe_component(self.backbone, "model"),
                 safe_component(self.dataset, "dataset"), safe_component(self.subsample, "data.subsample"),
                 shots_label(self.shots), *([self.setting] if self.grid else [])]
        return Path(root).joinpath(*parts, f"seed_{int(self.seed)}")

    def to_json(self) -> Dict[str, Any]:
        return {"method": self.method, "backbone": self.backbone, "dataset": self.dataset,
                "subsample": self.subsample, "shots": self.shots, "seed": self.seed, "grid": self.point}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> "RunKey":
        """The key whose fields ``data`` holds (:meth:`to_json`'s, among others), checked for type; a CorruptFile
        naming ``where`` otherwise. A file written before keys named their backbone (a manifest entry, a result) has
        it derived from its ``model`` and ``pretrained``, as the run's folder was named; one without ``grid`` is no
        grid point."""
        if "backbone" not in data and isinstance(data.get("model"), str):
            data = {**data, "backbone": backbone_label(data["model"], data.get("pretrained"))}
        wrong = [f"{k} is {show_value(data.get(k))}, not text" for k in ("method", "backbone", "dataset", "subsample")
                 if not isinstance(data.get(k), str)]
        wrong += [f"{k} is {show_value(data.get(k))}, not a whole number" for k in ("shots", "seed")
                  if not isinstance(data.get(k), int) or isinstance(data.get(k), bool)]
        grid = data.get("grid") or {}
        wrong += [] if isinstance(grid, dict) else [f"grid is {show_value(grid)}, not an object"]
        if wrong:
            raise CorruptFile(f"{where} does not name its run: {'; '.join(wrong)}. Rewrite it with the command that "
                              f"made it.")
        return cls(data["method"], data["backbone"], data["dataset"], data["subsample"], data["shots"], data["seed"],
                   grid)


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
    """``output.dir`` when set, else the folder of the run's key under ``output.root``."""
    if cfg.output.dir:
        return Path(os.path.expanduser(cfg.output.dir))
    return RunKey.of(cfg).path(cfg.output.root)


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
