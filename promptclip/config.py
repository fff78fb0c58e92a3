"""Typed configuration: dataclasses, YAML presets with ``inherit``, dotted overrides, validation with suggestions.

A run's config is built from presets (``configs/**/<name>.yaml`` or a path) merged left to right, then overrides such
as ``optim.lr=0.01``. ``text`` and ``vision`` hold the chosen learner's own options dataclass; ``losses`` and
``callbacks`` map names to theirs. Unknown keys are errors that name the nearest valid key.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Union, get_args, get_origin, get_type_hints

import yaml

from .devices import Precision
from .errors import ConfigError, UnregisteredInConfig
from .plugins import load_plugins
from .registry import CALLBACKS, DATASETS, LEARNERS, LOSSES, reader_options, refuse_unknown_options, suggest

#: the presets shipped with promptclip: inside the package when installed from a wheel (setup.cfg maps the
#: repository's configs/ there), the repository's configs/ in a source checkout
_PACKAGED_PRESETS = Path(__file__).resolve().parent / "configs"
CONFIG_DIR = _PACKAGED_PRESETS if _PACKAGED_PRESETS.is_dir() else Path(__file__).resolve().parent.parent / "configs"
#: os.pathsep-separated folders of the user's own presets (and protocols/), searched before the shipped ones
PRESETS_ENV = "PROMPTCLIP_PRESETS"


@dataclass(frozen=True)
class Bounds:
    """The interval a number must lie in: ``ge``/``gt`` below, ``le``/``lt`` above (None: open)."""

    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None

    def __contains__(self, x: float) -> bool:
        return ((self.ge is None or x >= self.ge) and (self.gt is None or x > self.gt)
                and (self.le is None or x <= self.le) and (self.lt is None or x < self.lt))

    def __str__(self) -> str:
        """``>= 1``, ``> 0``, or an interval such as ``in [0, 1)``."""
        if (self.ge, self.gt) != (None, None) and (self.le, self.lt) != (None, None):
            low = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}"
            high = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})"
            return f"in {low}, {high}"
        return " and ".join(f"{op} {v:g}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le),
                                                        ("<", self.lt)) if v is not None)


def bounded(default: Any = MISSING, *, default_factory: Any = MISSING, **bounds: float):
    """A dataclass field whose numbers (or list items) must lie within ``bounds`` (ge, gt, le, lt) when built."""
    return field(default=default, default_factory=default_factory, metadata={"bounds": Bounds(**bounds)})


@dataclass
class ModelConfig:
    #: open_clip model name, ``hf-hub:org/repo``, ``local-dir:/path``, or a tiny config (tiny-vit, tiny-rn)
    name: str = "ViT-B-16"
    #: open_clip pretrained tag (openai, laion2b_s34b_b88k, ...), a local checkpoint file, or null for random weights
    pretrained: Optional[str] = "openai"
    cache_dir: Optional[str] = None


@dataclass
class DataConfig:
    #: registered dataset name (imagefolder, DescribableTextures, ...) or a dataset description YAML
    name: str = "imagefolder"
    #: data root (for imagefolder: the image folder itself)
    root: Optional[str] = None
    #: images per class for training (0 or negative: the whole training split)
    shots: int = 16
    #: classes to use: all, base or new
    subsample: Literal["all", "base", "new"] = "all"
    #: augment training images (RandomResizedCrop + flip, CLIP's recipe); false trains on the test transform
    augment: bool = True
    #: reader options (e.g. template for imagefolder); keys the reader does not take are errors
    options: Dict[str, Any] = field(default_factory=dict)
    num_workers: int = bounded(0, ge=0)

    def __post_init__(self):
        """Refuse unknown reader options now, before anything runs (a dataset name nothing registered, or a YAML
        description, is checked when the dataset is read)."""
        if self.options and self.name in DATASETS:
            known = reader_options(DATASETS.get(self.name))
            if known is not None:
                refuse_unknown_options(self.options, known, f"data.options of dataset {self.name!r}")


@dataclass
class OptimConfig:
    #: sgd; adam (weight decay as L2 in the gradient, as Dassl's Adam); adamw (decoupled weight decay)
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = bounded(0.002, gt=0)
    momentum: float = bounded(0.9, ge=0, le=1)
    weight_decay: float = bounded(5e-4, ge=0)
    #: adam's and adamw's (beta1, beta2) and epsilon
    betas: List[float] = bounded(default_factory=lambda: [0.9, 0.999], ge=0, lt=1)
    eps: float = bounded(1e-8, gt=0)
    scheduler: Literal["cosine", "constant"] = "cosine"
    #: the cosine's unit: epoch (Dassl's per-epoch step) or step (one per optimiser step, as CLIP-LoRA's)
    schedule_unit: Literal["epoch", "step"] = "epoch"
    #: where the cosine ends (CosineAnnealingLR's eta_min)
    min_lr: float = bounded(0.0, ge=0)
    #: epochs at the constant warm-up lr before the schedule starts (the reference's "constant" warm-up)
    warmup_epochs: int = bounded(1, ge=0)
    warmup_lr: float = bounded(1e-5, gt=0)


@dataclass
class TrainConfig:
    epochs: int = bounded(50, ge=0)
    batch_size: int = bounded(32, ge=1)
    eval_batch_size: int = bounded(100, ge=1)
    #: gradient accumulation: optimizer step every accum_steps batches
    accum_steps: int = bounded(1, ge=1)
    #: auto: fp32 on CPU, bf16 autocast on a GPU that has bf16, else fp16 with a grad scaler; fp32; bf16 (autocast;
    #: on a CPU often several times slower than fp32: measure first); fp16 (GPU only, with a grad scaler).
    #: Prompt parameters stay fp32 in every case.
    precision: Precision = "auto"
    #: auto, cpu, cuda, cuda:1 ...
    device: str = "auto"
    #: save a resumable checkpoint every N epochs (0: never)
    checkpoint_every: int = bounded(1, ge=0)
    #: evaluate on the test split after training
    evaluate: bool = True
    #: cap on optimizer steps per epoch (0: no cap); useful for benchmarks and smoke runs
    max_steps_per_epoch: int = bounded(0, ge=0)

    # -- training views (engine/cache.py TrainingViews, data/loaders.py view_seeds) --
    #: augmented views per training image: 0 draws a fresh view every epoch (the reference); K > 0 reuses K views
    #: (view = epoch mod K), so methods that leave the image tower frozen encode each image K times in all. K > 0
    #: changes the training distribution (the practice of cached-feature few-shot methods: ZS-LP's preset sets 20, as
    #: its reference trains on 20 views)
    views: int = bounded(0, ge=0)


def default_cache_dir() -> str:
    """``$PROMPTCLIP_CACHE``, else the user's cache folder as the HF hub finds it (``$XDG_CACHE_HOME`` or
    ``~/.cache``) + ``/promptclip``: never a hidden folder in the current directory."""
    if os.environ.get("PROMPTCLIP_CACHE"):
        return os.environ["PROMPTCLIP_CACHE"]
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                        "promptclip")


@dataclass
class OutputConfig:
    #: runs go under root/<method>/<backbone>/<dataset>/<subsample>/shots_<K>/seed_<S> unless dir is given
    root: str = "runs"
    dir: Optional[str] = None
    #: few-shot draws and feature caches (default: $PROMPTCLIP_CACHE, else ~/.cache/promptclip)
    cache_dir: str = field(default_factory=default_cache_dir)
    #: store the frozen features of training views in cache_dir (false: compute them each time; the same results
    #: without the disk space, about 2 KB per image and view at ViT-B/16)
    cache_views: bool = True
    #: bound on the feature cache's size in GB: least recently used entries go first (null: no bound)
    cache_max_gb: Optional[float] = bounded(None, gt=0)
    #: also log the run to these tools (not part of the run's identity); each needs its extra installed
    report_to: List[Literal["tensorboard", "wandb"]] = field(default_factory=list)


@dataclass
class Config:
    #: a name for reports and run folders (defaults to the learner names)
    method: str = ""
    seed: int = bounded(1, ge=0)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    text: Any = field(default=None, metadata={"registry": "learner"})
    vision: Any = field(default=None, metadata={"registry": "learner"})
    losses: Dict[str, Any] = field(default_factory=dict, metadata={"registry": "loss"})
    #: method-owned hooks at epoch and training end (e.g. PromptSRC's prompt averaging), name → options
    callbacks: Dict[str, Any] = field(default_factory=dict, metadata={"registry": "callback"})
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    @property
    def method_name(self) -> str:
        if self.method:
            return self.method
        return self.text.name + (f"+{self.vision.name}" if self.vision is not None else "")


# ------------------------------------------------------------------------------------------------ conversion
def _registry(kind: str):
    return {"learner": LEARNERS, "loss": LOSSES, "callback": CALLBACKS}[kind]


def _number(value: Any, tp: type, path: str, bounds: Optional[Bounds]) -> Any:
    """``value`` as an int or float within ``bounds``; a string that ``float()`` reads counts as a number."""
    if isinstance(value, str):
        try:
            value = int(value) if tp is int and value.strip().lstrip("+-").isdigit() else float(value)
        except ValueError:
            pass
    within = f" {bounds}" if bounds else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or (tp is int and isinstance(value, float) and not value.is_integer()):
        raise ConfigError(f"{path} must be {'an integer' if tp is int else 'a number'}{within}, got {value!r}.")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{path} must be a finite number{within}, got {value!r}.")
    if bounds and value not in bounds:
        raise ConfigError(f"{path} must be {bounds}, got {value!r}.")
    return tp(value)


def _coerce(value: Any, tp: Any, path: str, bounds: Optional[Bounds] = None) -> Any:
    """Check ``value`` against the type ``tp`` (and numbers against ``bounds``); convert dicts to dataclasses.
    ``path`` names the key in errors."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{path} must be one of {', '.join(map(str, choices))}, not {value!r}."
                              f"{suggest(str(value), choices)}")
        return value
    if origin is Union:
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(value, option, path, bounds)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (list, List) or tp is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {value!r}.")
        (item_type,) = get_args(tp) or (Any,)
        return [_coerce(v, item_type, f"{path}[{i}]", bounds) for i, v in enumerate(value)]
    if origin in (dict, Dict) or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {value!r}.")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {value!r}.")
        return value
    if tp in (int, float):
        return _number(value, tp, path, bounds)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string, got {value!r}.")
        return value
    return value


def registered_config(kind: str, value: Any, path: str, name: Optional[str] = None):
    """Options dataclass of the registered learner/loss named by ``value['name']`` (or ``name``)."""
    if value is None:
        return None
    if dataclasses.is_dataclass(value):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{path} must be a mapping of options, got {value!r}.")
    key = name if name is not None else value.get("name")
    if not key:
        raise ConfigError(f"{path}.name is missing: which {kind} should be used? "
                          f"Known: {', '.join(_registry(kind).names())}.")
    try:
        options = _registry(kind).config(key)
    except LookupError as err:
        raise UnregisteredInConfig(f"{path}: {err}") from None
    return from_dict(options, value, path, context=f"{kind} {key!r}")


@functools.lru_cache(maxsize=None)
def _field_types(cls) -> tuple:
    hints = get_type_hints(cls)
    return tuple((f.name, hints[f.name], f.metadata.get("bounds")) for f in dataclasses.fields(cls))


def check_types(obj) -> None:
    """Check an options dataclass's values against their types and bounds, as :func:`from_dict` does, so options
    built in Python (``VPTConfig(placement="middle")``) are refused by the same rule as options read from YAML."""
    for name, tp, bounds in _field_types(type(obj)):
        value = getattr(obj, name)
        if not dataclasses.is_dataclass(value):
            _coerce(value, tp, name, bounds)


def from_dict(cls, data: Optional[dict], path: str = "", context: str = ""):
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys with the nearest valid one."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'} must be a mapping, got {data!r}.")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in fields:
            where = f" of {context}" if context else ""
            hint = suggest(full, [f"{path}.{f}" if path else f for f in fields])
            raise ConfigError(f"Unknown config key {full!r}{where}.{hint} "
                              f"Valid keys here: {', '.join(fields)}.")
        registry = fields[key].metadata.get("registry")
        if registry and key in ("losses", "callbacks"):
            if not isinstance(value, dict):
                raise ConfigError(f"{full} must map {registry} names to options, got {value!r}.")
            kwargs[key] = {name: registered_config(registry, opts or {}, f"{full}.{name}", name=name)
                           for name, opts in value.items()}
        elif registry:
            kwargs[key] = registered_config(registry, value, full)
        else:
            kwargs[key] = _coerce(value, hints[key], full, fields[key].metadata.get("bounds"))
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{path or 'config'}: {err}") from None


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


# ------------------------------------------------------------------------------------------- presets, overrides
def preset_dirs() -> List[Path]:
    """Where presets are looked up, first match winning: the folders in $PROMPTCLIP_PRESETS, then the shipped ones."""
    user = [Path(p).expanduser() for p in os.environ.get(PRESETS_ENV, "").split(os.pathsep) if p]
    return [*user, CONFIG_DIR]


def _presets() -> Dict[str, Path]:
    """``methods/coop`` → its file, for every preset (protocols are not presets)."""
    found: Dict[str, Path] = {}
    for folder in preset_dirs():
        for path in sorted(folder.rglob("*.yaml")):
            rel = path.relative_to(folder).with_suffix("").as_posix()
            if not rel.startswith("protocols/"):
                found.setdefault(rel, path)
    return found


def preset_names() -> List[str]:
    return sorted(_presets())


def _protocol_error(path: Path) -> ConfigError:
    name = path.stem if path.parent.name == "protocols" else path
    return ConfigError(f"{path} is a benchmark protocol, not a run preset: run it with promptclip bench {name}.")


def find_preset(name: str) -> Path:
    """A preset by path, by path under a preset folder (``methods/coop``), or by unique file stem (``coop``)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    presets = _presets()
    key = name[:-len(".yaml")] if name.endswith(".yaml") else name
    if key in presets:
        return presets[key]
    matches = [rel for rel in presets if rel.rsplit("/", 1)[-1] == key] if "/" not in key else []
    if len(matches) == 1:
        return presets[matches[0]]
    if len(matches) > 1:
        raise ConfigError(f"Preset {name!r} is ambiguous: {', '.join(matches)}. Give the folder too.")
    protocol = next((d / "protocols" / f"{key}.yaml" for d in preset_dirs()
                     if (d / "protocols" / f"{key}.yaml").is_file()), None)
    if protocol is not None:
        raise _protocol_error(protocol)
    raise ConfigError(f"No config file or preset {name!r}.{suggest(name, presets)} "
                      f"Presets: {', '.join(sorted(presets))}.")


def merge(base: dict, update: dict) -> dict:
    """Deep merge: mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("text", "vision"):
            out[key] = merge(out[key], value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            same_learner = value.get("name", out[key].get("name")) == out[key].get("name")
            out[key] = merge(out[key], value) if same_learner else copy.deepcopy(value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml_mapping(path: Path, what: str) -> dict:
    """A YAML file (read with ``safe_load``) that must hold a mapping of ``what``."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of {what}.")
    return data


def load_yaml(name: str, _seen: Sequence[Path] = ()) -> dict:
    """A preset as a dict, with its ``inherit`` list (other presets, applied first) resolved."""
    path = find_preset(name).resolve()
    if path in _seen:
        raise ConfigError(f"Presets inherit from each other in a loop: {' → '.join(map(str, _seen))} → {path}.")
    data = read_yaml_mapping(path, "config keys")
    if "kind" in data and "methods" in data:
        raise _protocol_error(path)
    parents = data.pop("inherit", []) or []
    out: dict = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        out = merge(out, load_yaml(parent, (*_seen, path)))
    return merge(out, data)


def parse_override(text: str) -> dict:
    """``a.b=value`` → ``{"a": {"b": value}}`` with the value read as YAML (numbers, null, lists...)."""
    if "=" not in text:
        raise ConfigError(f"Override {text!r} must look like key.sub=value (e.g. optim.lr=0.01).")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


DEFAULT_TEXT = {"name": "coop"}


def build_config(presets: Sequence[str] = (), overrides: Sequence[str] = (), base: Optional[dict] = None) -> Config:
    """Config from presets merged in order, then ``key=value`` overrides."""
    load_plugins()
    data: dict = {"text": dict(DEFAULT_TEXT)}
    if base:
        data = merge(data, base)
    for name in presets:
        data = merge(data, load_yaml(name))
    for text in overrides:
        data = merge(data, parse_override(text))
    return from_dict(Config, data)


def load_resolved(path: Union[str, Path]) -> Config:
    """A run's saved ``config.yaml``."""
    load_plugins()
    return from_dict(Config, yaml.safe_load(Path(path).read_text()))
