"""Protocol files → runs.

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
validator: types, choices, bounds, unknown keys with suggestions), then resolved into a :class:`Protocol`.

A run's config is built from, later layers winning: the method's presets, ``config``, the method's ``config``, the
dataset's ``data``, matching ``rules``, command-line overrides, command-line overrides scoped to the method
(``coop:train.epochs=1``). ``seed``, ``data.shots``, ``data.subsample`` and ``output.dir`` come from the protocol
itself; ``data.name`` from ``datasets``.
Runs live in ``<output.root>/<method>/<backbone>/<dataset>/<subsample>/shots_<K>/seed_<S>`` (:mod:`promptclip.runs`);
a dataset's aliases (``dtd``, ``DTD``) are its canonical name everywhere: folders, rules, ``{dataset}`` in presets.

A ``grid`` (the protocol's, for every method that trains; or a method's own, which replaces it) makes each
combination of its values a run of its own, in ``.../shots_<K>/<grid label>/seed_<S>`` (:func:`grid_label`), whose
prompts are also evaluated on the run's validation split (:mod:`promptclip.engine.validation`); the report chooses,
per method, backbone, dataset, classes and shots, the point with the best validation accuracy averaged over seeds.
The grid's values win over every other layer; a command-line override of a key the grid tunes is refused.

``hparams`` sets ``text.hparams`` of every method that has that option (the methods on features: Tip-Adapter's α/β,
GDA's α, LP++'s iteration): ``fixed``, the published defaults with no validation data read, or ``val``, each
reference's own search on the few-shot validation split (never on test). It sits with the protocol's ``config``:
a method's ``config``, a rule or the command line can still set ``text.hparams`` for one method.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union, get_args

from .. import runs
from ..config import (DEFAULT_TEXT, Config, bounded, from_dict, load_yaml, merge, parse_override, preset_dirs,
                      read_yaml_mapping, to_dict)
from ..errors import ConfigError
from ..registry import LEARNERS, suggest
from ..utils import atomic_write_json

log = logging.getLogger("promptclip")

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


@dataclass
class EvalSpec:
    """One evaluation of a run: its dataset label and class subset, the overrides for ``evaluate_run``, its file."""

    dataset: str
    subsample: str
    overrides: List[str]
    file: Path


@dataclass
class RunSpec:
    """One run of a protocol: its resolved config, folder and evaluations; a grid point also its grid values and
    the file its validation accuracy goes to."""

    id: str  # the run folder relative to the sweep root
    method: str
    dataset: str
    subsample: str
    shots: int
    seed: int
    config: Config
    run_dir: Path
    identity: runs.Identity
    evaluations: List[EvalSpec] = field(default_factory=list)
    grid: Dict[str, Any] = field(default_factory=dict)
    validation: Optional[Path] = None


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
    config key is checked against each method's config by :func:`expand`."""
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


# ------------------------------------------------------------------------------------------------ expansion
def _matches(rule: Rule, method: MethodEntry, method_name: str, dataset: str, shots: int, seed: int) -> bool:
    facts = {"method": {method_name, *method.presets}, "dataset": {dataset}, "shots": {shots}, "seed": {seed}}
    return all(facts[key] & set(values) for key, values in rule.when.items())


def _flatten(data: dict, prefix: str = "") -> List[str]:
    """A nested dict → ``key.sub=<json>`` overrides (JSON is YAML, so ``parse_override`` reads it back)."""
    out: List[str] = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={json.dumps(value)}")
    return out


def _build(layers: Sequence[dict], where: str) -> Config:
    data: dict = {"text": dict(DEFAULT_TEXT)}
    for layer in layers:
        data = merge(data, layer)
    try:
        return from_dict(Config, data)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def sweep_root(protocol: Protocol, overrides: Sequence[str] = ()) -> Path:
    """The folder the runs go under: ``output.root`` of the protocol's config and the overrides."""
    layers = [protocol.config, *(parse_override(text) for text in overrides)]
    return Path(_build(layers, f"{protocol.source}: config").output.root).expanduser()


def grid_points(grid: Grid) -> List[Dict[str, Any]]:
    """Every combination of the grid's values, the first key varying slowest; ``[{}]`` for no grid."""
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


_FOLDER_UNSAFE = re.compile(r"[^A-Za-z0-9._+@-]")


def grid_label(point: Dict[str, Any]) -> str:
    """A grid point as one folder name: ``optim.lr=0.002,losses.dapt_inter.weight=0.1``. Values that do not read
    well in a folder name (lists, paths) have their other characters replaced and a hash of the exact point added,
    so two points never share a name."""
    texts = {key: json.dumps(v, separators=(",", ":")) if not isinstance(v, str) else v for key, v in point.items()}
    label = ",".join(f"{key}={_FOLDER_UNSAFE.sub('_', text)}" for key, text in texts.items())
    if any(_FOLDER_UNSAFE.search(f"{key}{text}") for key, text in texts.items()) or len(label) > 120:
        digest = hashlib.sha256(json.dumps(point, sort_keys=True).encode()).hexdigest()[:8]
        label = f"{label[:100]}-{digest}"
    return runs.safe_component(label, "grid point")


def _method_grid(protocol: Protocol, method: MethodEntry, base: Config, cli_keys: Sequence[str], where: str) -> Grid:
    """The grid ``method`` is tuned over, with every key checked against its config: a key must be a config key
    (with a suggestion otherwise), must not add a loss or callback the method does not have, and must not also be
    overridden on the command line. The protocol's grid applies to methods that train by gradient steps (not to a
    ``training_free`` one, which has no optimiser to tune); a method's own ``grid`` always. A method fitted in closed
    form (the linear probe) tunes itself on val and takes none."""
    learner = LEARNERS.get(base.text.name)
    closed_form = learner.fits_in_closed_form
    if method.grid and closed_form:
        raise ConfigError(f"{where}: {base.text.name} is fitted in closed form and chooses its own settings on the "
                          f"validation split; it takes no grid. Remove its grid.")
    if method.grid is not None:
        grid = method.grid
    else:
        trains = runs.effective_shots(base) != 0 and not closed_form and not learner.training_free
        grid = protocol.grid if trains else {}
    for key, values in grid.items():
        here = f"{where}: grid key {key!r}"
        _build([to_dict(base), parse_override(f"{key}={json.dumps(values[0])}")], here)
        section, part = (key.split(".") + [""])[:2]
        if section in ("losses", "callbacks") and part not in getattr(base, section, {}):
            kind = {"losses": "loss", "callbacks": "callback"}[section]
            raise ConfigError(f"{here}: {base.method_name} has no {kind} {part!r} (its {section}: "
                              f"{', '.join(getattr(base, section, {})) or 'none'}); the grid would add one. Give "
                              f"the grid to the methods that have it: {{preset: ..., grid: {{{key}: [...]}}}}.")
        clash = next((k for k in cli_keys if k == key or k.startswith(key + ".") or key.startswith(k + ".")), None)
        if clash is not None:
            raise ConfigError(f"{here}: the override {clash} sets a key the grid tunes; change the grid instead "
                              f"(e.g. grid={{{key}: [...]}}).")
    return grid


def expand(protocol: Protocol, overrides: Sequence[str] = (), scoped: Optional[Dict[str, List[str]]] = None
           ) -> List[RunSpec]:
    """Every run of ``protocol`` (methods × datasets × shots × seeds × grid points), in that order, with resolved
    configs. A grid point's runs live in ``.../shots_<K>/<grid label>/seed_<S>``. A method that uses no training
    data (zero-shot) has one run per dataset and seed, at shots 0, whatever the protocol's shots."""
    scoped = scoped or {}
    cli = [parse_override(text) for text in overrides]
    root = sweep_root(protocol, overrides)
    method_names = set()
    specs: List[RunSpec] = []
    for method in protocol.methods:
        presets = [load_yaml(p) for p in method.presets]
        named = _build([*presets, protocol.config, method.config, *cli], f"{protocol.source}: {method.presets}")
        name = method.name or named.method_name
        method_names |= {name, *method.presets}
        mine_texts = [t for scope, texts in scoped.items() if scope in (name, *method.presets) for t in texts]
        mine = [parse_override(t) for t in mine_texts]
        cli_keys = [t.split("=", 1)[0].strip() for t in [*overrides, *mine_texts]]
        grid = _method_grid(protocol, method, named, cli_keys, f"{protocol.source}: {name}")
        named_method = {"method": name} if method.name else {}
        modes = _hparams_layer(protocol, named)
        # a method that never sees training data (zero-shot) runs once per dataset and seed, as its 0-shot row
        shot_counts = (method.shots or protocol.shots) if runs.effective_shots(named) != 0 else (0,)
        for dataset in protocol.datasets:
            for shots in shot_counts:
                for seed in method.seeds or protocol.seeds:
                    where = f"{protocol.source}: {name} {dataset.label} shots {shots} seed {seed}"
                    rule_layers: List[dict] = []
                    for rule in protocol.rules:
                        if _matches(rule, method, name, dataset.label, shots, seed):
                            rule_layers += [load_yaml(p.format(dataset=dataset.label)) for p in rule.presets]
                            rule_layers.append(rule.set)
                    owned = {"seed": seed, "data": {"shots": shots, "subsample": protocol.subsample},
                             **named_method}
                    for point in grid_points(grid):
                        specs.append(_spec(protocol, root, name, dataset, point, where, [
                            *presets, protocol.config, modes, method.config, {"data": dataset.data}, *rule_layers,
                            *cli, *mine, nested(point, f"{where}: grid"), owned]))
    _check(protocol, specs, method_names, scoped)
    return specs


def _hparams_layer(protocol: Protocol, cfg: Config) -> dict:
    """``{"text": {"hparams": mode}}`` for a method whose text learner has that option, when the protocol sets it."""
    has = cfg.text is not None and any(f.name == "hparams" for f in dataclasses.fields(cfg.text))
    return {"text": {"hparams": protocol.hparams}} if protocol.hparams and has else {}


def _spec(protocol: Protocol, root: Path, name: str, dataset: DatasetEntry, point: Dict[str, Any], where: str,
          layers: Sequence[dict]) -> RunSpec:
    """One run: its config from ``layers``, its folder (a grid point's one level above its seed), evaluations."""
    if point:
        where = f"{where} {grid_label(point)}"
    cfg = runs.resolve(_build(layers, where))
    run_dir = runs.run_path(root, name, runs.backbone_label(cfg.model.name, cfg.model.pretrained), dataset.label,
                            protocol.subsample, cfg.data.shots, cfg.seed)
    if point:
        run_dir = run_dir.parent / grid_label(point) / run_dir.name
    cfg = dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, dir=str(run_dir)))
    identity = runs.Identity.of(cfg)
    validation = None
    if point:
        from ..engine.validation import validation_file

        validation = validation_file(run_dir, cfg, identity.fingerprint)
    return RunSpec(str(run_dir.relative_to(root)), name, dataset.label, protocol.subsample, cfg.data.shots,
                   cfg.seed, cfg, run_dir, identity, _eval_specs(protocol, cfg, identity, dataset, where),
                   dict(point), validation)


def _eval_specs(protocol: Protocol, cfg: Config, identity: runs.Identity, dataset: DatasetEntry, where: str
                ) -> List[EvalSpec]:
    if protocol.evaluations and not cfg.text.transfers_to_new_classes:
        raise ConfigError(f"{where}: {cfg.text.name} classifies its training classes only (its weights are per "
                          f"training class); it cannot be evaluated on other classes or datasets. Remove it from this "
                          f"protocol.")
    specs = []
    for evaluation in protocol.evaluations:
        target = evaluation.dataset or dataset
        overrides = [f"data.subsample={evaluation.subsample}"]
        if evaluation.dataset is not None:  # another dataset: its data settings override the run's
            overrides += _flatten({"data": evaluation.dataset.data})
        specs.append(eval_spec(cfg, identity, target.label, evaluation.subsample, overrides))
    return specs


def eval_spec(cfg: Config, identity: runs.Identity, label: str, subsample: str, overrides: List[str]) -> EvalSpec:
    """An evaluation of the run ``cfg`` with ``overrides``, and the file :func:`evaluate_run` writes it to."""
    from ..engine.runner import evaluation_config

    evaluation = runs.eval_identity(evaluation_config(cfg, overrides), identity.fingerprint)
    return EvalSpec(label, subsample, overrides, runs.eval_file(cfg.output.dir, label, subsample, evaluation))


def _check(protocol: Protocol, runs: List[RunSpec], method_names: set, scoped: Dict[str, List[str]]) -> None:
    seen = set()
    for spec in runs:
        if spec.id in seen:
            raise ConfigError(f"{protocol.source}: two methods resolve to the run folder {spec.id}; give one of them "
                              f"a name, e.g. {{preset: ..., name: {spec.method}_2}}.")
        seen.add(spec.id)
    for scope in scoped:
        if scope not in method_names:
            raise ConfigError(f"Override scoped to {scope!r}, but the protocol's methods are "
                              f"{', '.join(sorted(method_names))}.{suggest(scope, method_names)}")


def _plan_differences(old: dict, new: dict) -> List[str]:
    """What a new manifest would change in an existing one: its kind, runs added, dropped or with other settings."""
    before = {r.get("id"): r.get("fingerprint") for r in old.get("runs", []) if isinstance(r, dict)}
    after = {r["id"]: r["fingerprint"] for r in new["runs"]}
    lines = [f"kind: {old.get('kind')} → {new['kind']}"] if old.get("kind") != new["kind"] else []
    lines += [f"other settings: {i}" for i in after if i in before and before[i] != after[i]]
    lines += [f"only in the new plan: {i}" for i in after if i not in before]
    lines += [f"only in the existing plan: {i}" for i in before if i not in after]
    return lines


def write_manifest(protocol: Protocol, specs: List[RunSpec], root: Path, overrides: Sequence[str],
                   replace: bool = False, merge: bool = False) -> Path:
    """``root/protocol-<name>.json``: the sweep's kind and every planned run and evaluation, for the report; a grid
    point's run also its grid values, their folder label and its validation file (what the report selects on).

    An existing manifest with another plan (other runs, or the same runs with other settings) is never silently
    replaced: that is an error listing the differences, unless ``merge`` (the runs of both, for one report; a run
    with other settings in both is still refused) or ``replace`` (the new plan, as ``bench --replace`` redoes the
    runs)."""
    root = Path(root)

    def rel(path: Path) -> str:
        return str(Path(path).relative_to(root))

    path = runs.manifest_path(root, protocol.name)
    manifest = {
        "protocol": protocol.name, "kind": protocol.kind, "source": protocol.source,
        "description": protocol.description, "overrides": list(overrides),
        **({"hparams": protocol.hparams} if protocol.hparams else {}),
        "runs": [{"id": r.id, "method": r.method, "dataset": r.dataset, "subsample": r.subsample, "shots": r.shots,
                  "seed": r.seed, "model": r.config.model.name, "pretrained": r.config.model.pretrained,
                  "dir": rel(r.run_dir), "fingerprint": r.identity.fingerprint,
                  "evaluations": [{"dataset": e.dataset, "subsample": e.subsample, "file": rel(e.file)}
                                  for e in r.evaluations],
                  **({"grid": r.grid, "setting": grid_label(r.grid), "validation": rel(r.validation)}
                     if r.grid else {})}
                 for r in specs],
    }
    try:
        existing = runs.read_json(path, "a sweep manifest", ("runs",)) if not replace else None
    except runs.CorruptFile as err:
        log.warning("%s Writing it anew.", err)
        existing = None
    differences = _plan_differences(existing, manifest) if existing is not None else []
    conflicts = [d for d in differences if not d.startswith("only in")]  # what no merge can reconcile
    if differences and (not merge or conflicts):
        shown = "\n  ".join(differences[:12]) + (f"\n  ... and {len(differences) - 12} more" if len(differences) > 12
                                                 else "")
        raise ConfigError(f"{path} holds another plan for this sweep folder (existing → new):\n  {shown}\n"
                          f"It is not replaced silently. Give the new plan a folder of its own (output.root=...), "
                          f"{'' if conflicts else 'add its runs to the existing plan with --merge, '}or replace the "
                          f"plan with --replace (which also redoes runs made with other settings).")
    if existing is not None and merge:
        known = {r["id"] for r in manifest["runs"]}
        manifest["runs"] = [r for r in existing["runs"] if r.get("id") not in known] + manifest["runs"]
        manifest["overrides"] = [*existing.get("overrides", []),
                                 *[o for o in manifest["overrides"] if o not in existing.get("overrides", [])]]
    atomic_write_json(path, manifest)
    return path
