"""Protocol files: their typed schema, their checks, and their resolution into a :class:`Protocol`.

A protocol (``configs/protocols/<name>.yaml`` or any YAML path) says which methods to run on which datasets with
how many shots and seeds, with which settings, and what to evaluate each run's prompts on afterwards::

    kind: few_shot                 # few_shot | base_to_new | cross_dataset | domain_generalization (report layout)
    description: CoOp's few-shot protocol
    datasets: [Caltech101, {name: digits, data: {name: imagefolder, root: /data/digits}}]
    shots: [1, 2, 4, 8, 16]
    seeds: [1, 2, 3]
    subsample: all                 # classes to train on: all | base
    methods:
      - coop                                        # a preset (configs/methods/coop.yaml)
      - {preset: zeroshot, shots: [0], seeds: [1]}  # shots/seeds of this method only
      - {preset: maple, name: maple_d1, config: {text.depth: 1}}
    config: {model.name: ViT-B-16, output.root: runs/few_shot}   # every run
    rules:                                                       # in order; later rules win
      - {when: {method: coop, shots: 1}, set: {train.epochs: 50}}
      - {when: {method: dapt, dataset: DescribableTextures}, presets: [dapt/{dataset}]}
    evaluations:                   # after training, each run's prompts are evaluated on
      - {subsample: new}           #   its own dataset's new classes
      - {datasets: [ImageNetV2, ImageNetA]}   # other datasets (all classes)
    grid: {optim.lr: [0.002, 0.02]}   # every combination is a run; the report chooses per dataset on val
    hparams: fixed                 # methods on features (text.hparams): fixed published defaults | val search

The file is checked by :func:`promptclip.config.from_dict` against :class:`ProtocolFile` (the run configs'
validator: types, choices, bounds, unknown keys with suggestions), then resolved into a :class:`Protocol`;
:mod:`.protocols` plans its runs.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union, get_args

from .. import runs
from ..config import bounded, from_dict, merge, parse_override, preset_dirs, read_yaml_mapping
from ..errors import ConfigError
from ..registry import suggest

#: keys the protocol sets itself, with the protocol key to use instead
OWNED = {"seed": "seeds", "data.shots": "shots", "data.subsample": "subsample", "data.name": "datasets",
         "output.dir": "the run layout"}


# ------------------------------------------------------------------------------------------------ the file's schema
#: a protocol's report layout
Kind = Literal[runs.PROTOCOL_KINDS]  # type: ignore[valid-type]  (the kinds a report lays out, owned by runs)
KINDS = get_args(Kind)
Names = Union[List[str], str]  # one name or a list of them
Ints = Union[List[int], int]


@dataclass
class DatasetFile:
    """A dataset entry: a registered name, or ``{name: LABEL, data: {...data.* settings}}``."""

    #: the dataset's label in run folders and reports (a registered dataset's aliases become its canonical name)
    name: Optional[str] = None
    #: ``data.*`` settings of this dataset's runs
    data: Dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodFile:
    """A method entry: a preset name, or ``{preset, name, shots, seeds, config, grid}``."""

    preset: Optional[Names] = None
    #: the method's name in run folders and reports (default: the presets' method name)
    name: Optional[str] = None
    #: this method's shots and seeds instead of the protocol's
    shots: Optional[Ints] = None
    seeds: Optional[Ints] = bounded(None, ge=0)
    config: Dict[str, Any] = field(default_factory=dict)
    #: this method's grid instead of the protocol's (``grid: {}``: no tuning for this method)
    grid: Optional[Dict[str, Any]] = None


@dataclass
class WhenFile:
    method: Optional[Names] = None
    dataset: Optional[Names] = None
    shots: Optional[Ints] = None
    seed: Optional[Ints] = None


@dataclass
class RuleFile:
    when: WhenFile = field(default_factory=WhenFile)
    set: Dict[str, Any] = field(default_factory=dict)
    presets: Optional[Names] = None


@dataclass
class EvaluationFile:
    #: other datasets to evaluate on (all their classes); none: the run's own dataset
    datasets: Optional[Union[List[Union[DatasetFile, str]], DatasetFile, str]] = None
    #: the classes to evaluate on (default all)
    subsample: Optional[Literal["all", "base", "new"]] = None


@dataclass
class ProtocolFile:
    """A protocol file as written; :func:`parse_protocol` checks it with :func:`promptclip.config.from_dict` (types,
    choices, bounds, unknown keys with suggestions) and then resolves it into a :class:`Protocol`."""

    kind: Optional[Kind] = None
    description: str = ""
    datasets: Optional[List[Union[DatasetFile, str]]] = None
    shots: Ints = field(default_factory=lambda: [16])
    seeds: Ints = bounded(default_factory=lambda: [1], ge=0)
    #: the classes runs train on
    subsample: Literal["all", "base"] = "all"
    methods: Optional[List[Union[MethodFile, str]]] = None
    config: Dict[str, Any] = field(default_factory=dict)
    rules: List[RuleFile] = field(default_factory=list)
    evaluations: List[EvaluationFile] = field(default_factory=list)
    #: config key → values to try; every combination is a run of its own, chosen per dataset on the val split
    grid: Dict[str, Any] = field(default_factory=dict)
    #: text.hparams of every method that has it: fixed (published defaults) or val (the reference's search on val)
    hparams: Optional[Literal["fixed", "val"]] = None


PROTOCOL_KEYS = tuple(f.name for f in dataclasses.fields(ProtocolFile))
WHEN_KEYS = tuple(f.name for f in dataclasses.fields(WhenFile))


# ------------------------------------------------------------------------------------------------ resolved
@dataclass(frozen=True)
class DatasetEntry:
    """A dataset as the protocol names it: ``label`` (run folders, reports) and its ``data.*`` settings."""

    label: str
    data: Dict[str, Any]


Grid = Dict[str, Tuple[Any, ...]]  # config key → the values to try


@dataclass(frozen=True)
class MethodEntry:
    presets: Tuple[str, ...]
    name: Optional[str]  # overrides the presets' method name (run folders, reports)
    shots: Optional[Tuple[int, ...]]
    seeds: Optional[Tuple[int, ...]]
    config: Dict[str, Any]
    grid: Optional[Grid] = None  # None: the protocol's grid


@dataclass(frozen=True)
class Rule:
    when: Dict[str, Tuple[Any, ...]]
    set: Dict[str, Any]
    presets: Tuple[str, ...]


@dataclass(frozen=True)
class Evaluation:
    """Evaluate a run's prompts on ``dataset`` (None: the run's own) with classes ``subsample``."""

    dataset: Optional[DatasetEntry]
    subsample: str


@dataclass
class Protocol:
    name: str
    kind: str
    description: str
    datasets: List[DatasetEntry]
    shots: List[int]
    seeds: List[int]
    subsample: str
    methods: List[MethodEntry]
    config: Dict[str, Any]
    rules: List[Rule]
    evaluations: List[Evaluation]
    source: str
    grid: Grid = field(default_factory=dict)
    hparams: Optional[str] = None


# ------------------------------------------------------------------------------------------------ validation
def _error(where: str, message: str) -> ConfigError:
    return ConfigError(f"{where}: {message}")


def _listed(value: Any, where: str) -> Tuple[Any, ...]:
    """A checked one-or-list value as a non-empty tuple."""
    values = tuple(value) if isinstance(value, list) else (value,)
    if not values:
        raise _error(where, "must not be an empty list.")
    return values


def _names(value: Any, where: str) -> Tuple[str, ...]:
    values = _listed(value, where)
    if not all(values):
        raise _error(where, f"names must not be empty, got {value!r}.")
    return values


def nested(settings: Dict[str, Any], where: str) -> dict:
    """``{"optim.lr": 0.1, "train": {"epochs": 5}}`` → a nested config dict; refuses keys the protocol owns."""
    if not isinstance(settings, dict):
        raise _error(where, f"must be a mapping, got {settings!r}.")
    out: dict = {}
    for key, value in settings.items():
        out = merge(out, parse_override(f"{key}={json.dumps(value)}"))
    for owned, instead in OWNED.items():
        node: Any = out
        for part in owned.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            raise _error(where, f"{owned} is set by the protocol: use {instead} instead.")
    return out


def _label(name: str, where: str) -> str:
    try:
        return runs.safe_component(runs.canonical_dataset(name), "dataset name")
    except ConfigError as err:
        raise _error(where, str(err)) from None


def _dataset(entry: Union[DatasetFile, str], where: str) -> DatasetEntry:
    entry = DatasetFile(entry) if isinstance(entry, str) else entry
    if not entry.name:
        raise _error(where, "a dataset needs a name (its label in run folders and reports).")
    return DatasetEntry(_label(entry.name, where), {"name": entry.name, **copy.deepcopy(entry.data)})


def _method(entry: Union[MethodFile, str], where: str) -> MethodEntry:
    entry = MethodFile(preset=entry) if isinstance(entry, str) else entry
    if entry.preset is None:
        raise _error(where, "a method needs a preset (e.g. {preset: coop}).")
    if entry.name is not None:
        try:
            runs.safe_component(entry.name, "method name")
        except ConfigError as err:
            raise _error(f"{where}.name", str(err)) from None
    return MethodEntry(_names(entry.preset, f"{where}.preset"), entry.name,
                       _listed(entry.shots, f"{where}.shots") if entry.shots is not None else None,
                       _listed(entry.seeds, f"{where}.seeds") if entry.seeds is not None else None,
                       nested(entry.config, f"{where}.config"),
                       _grid(entry.grid, f"{where}.grid") if entry.grid is not None else None)


def _rule(entry: RuleFile, where: str) -> Rule:
    if not entry.set and entry.presets is None:
        raise _error(where, "a rule needs `set` (config keys) or `presets` (applied when `when` matches).")
    conditions = {key: _listed(getattr(entry.when, key), f"{where}.when.{key}") for key in WHEN_KEYS
                  if getattr(entry.when, key) is not None}
    if "dataset" in conditions:
        conditions["dataset"] = tuple(runs.canonical_dataset(d) for d in conditions["dataset"])
    presets = _names(entry.presets, f"{where}.presets") if entry.presets is not None else ()
    return Rule(conditions, nested(entry.set, f"{where}.set"), presets)


def _evaluations(entries: List[EvaluationFile], where: str) -> List[Evaluation]:
    out: List[Evaluation] = []
    for i, entry in enumerate(entries):
        here = f"{where}[{i}]"
        subsample = entry.subsample or "all"
        if entry.datasets is not None:
            out += [Evaluation(_dataset(d, f"{here}.datasets[{j}]"), subsample)
                    for j, d in enumerate(_listed(entry.datasets, f"{here}.datasets"))]
        elif entry.subsample is not None:
            out.append(Evaluation(None, subsample))
        else:
            raise _error(here, "say what to evaluate on: `datasets` (other datasets) and/or `subsample` (new).")
    return out


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _grid(grid: Dict[str, Any], where: str) -> Grid:
    """Each key's values as a tuple; keys the protocol owns and repeated values are refused. Whether a key is a
    config key is checked against each method's config by :func:`.protocols.expand`."""
    out: Grid = {}
    for key, values in grid.items():
        here = f"{where}.{key}"
        if not isinstance(values, list) or not values:
            raise _error(here, f"must be a non-empty list of the values to try (one value: [{_value_text(values)}]), "
                               f"got {values!r}.")
        nested({key: values[0]}, f"{where}")
        texts = [_value_text(v) for v in values]
        repeated = next((t for i, t in enumerate(texts) if t in texts[:i]), None)
        if repeated is not None:
            raise _error(here, f"lists {repeated} twice: each value is one run, give it once.")
        out[str(key)] = tuple(values)
    return out


def parse_protocol(data: dict, name: str, source: str) -> Protocol:
    """Validate a protocol mapping with the run configs' typed validator (:class:`ProtocolFile`), then resolve it;
    every error names the file and the key."""
    if not isinstance(data, dict):
        raise _error(source, f"must hold a mapping of protocol keys ({', '.join(PROTOCOL_KEYS)}), got {data!r}.")
    try:
        spec = from_dict(ProtocolFile, data, context="a protocol")
    except ConfigError as err:
        raise _error(source, str(err)) from None
    for key in ("kind", "datasets", "methods"):
        if getattr(spec, key) is None:
            raise _error(source, f"`{key}` is missing.")
    return Protocol(
        name=name, kind=spec.kind, description=spec.description,
        datasets=[_dataset(d, f"{source}: datasets[{i}]") for i, d in enumerate(spec.datasets)],
        shots=list(_listed(spec.shots, f"{source}: shots")),
        seeds=list(_listed(spec.seeds, f"{source}: seeds")),
        subsample=spec.subsample,
        methods=[_method(m, f"{source}: methods[{i}]") for i, m in enumerate(spec.methods)],
        config=nested(spec.config, f"{source}: config"),
        rules=[_rule(r, f"{source}: rules[{i}]") for i, r in enumerate(spec.rules)],
        evaluations=_evaluations(spec.evaluations, f"{source}: evaluations"),
        source=source,
        grid=_grid(spec.grid, f"{source}: grid"),
        hparams=spec.hparams,
    )


def find_protocol(name: str) -> Path:
    """A protocol file by path, or by name in the ``protocols/`` folder of a preset folder (yours first)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    folders = [d / "protocols" for d in preset_dirs()]
    candidate = next((f / f"{name}.yaml" for f in folders if (f / f"{name}.yaml").is_file()), None)
    if candidate is not None:
        return candidate
    known = sorted({p.stem for f in folders for p in f.glob("*.yaml")})
    raise ConfigError(f"No protocol file or protocol named {name!r}.{suggest(name, known)} "
                      f"Protocols: {', '.join(known)}.")


def split_overrides(overrides: Sequence[str]) -> Tuple[dict, List[str], Dict[str, List[str]]]:
    """Command-line overrides → (protocol keys, config overrides for every run, config overrides per method).

    ``seeds=[1]`` changes the protocol; ``optim.lr=0.1`` every run's config; ``coop:train.epochs=1`` coop's runs.
    """
    protocol: dict = {}
    common: List[str] = []
    scoped: Dict[str, List[str]] = {}
    for text in overrides:
        key = text.split("=", 1)[0]
        if ":" in key:
            method, rest = text.split(":", 1)
            scoped.setdefault(method.strip(), []).append(rest)
        elif key.strip() in PROTOCOL_KEYS:
            protocol.update(parse_override(text))
        else:
            common.append(text)
    for text in common + [t for ts in scoped.values() for t in ts]:
        key = text.split("=", 1)[0].strip()
        if key in OWNED:
            raise ConfigError(f"Override {text!r}: {key} is set by the protocol; use {OWNED[key]} instead "
                              f"(e.g. seeds=[1] shots=[16]).")
    return protocol, common, scoped


def load_protocol(name: str, protocol_overrides: Optional[dict] = None) -> Protocol:
    """Read and validate a protocol file, with top-level keys replaced by ``protocol_overrides``."""
    path = find_protocol(name)
    data = read_yaml_mapping(path, "protocol keys (kind, datasets, methods, ...)")
    data.update(protocol_overrides or {})
    return parse_protocol(data, path.stem, str(path))
