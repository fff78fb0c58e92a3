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

A run's config is built from, later layers winning: the method's presets, ``config``, the method's ``config``, the
dataset's ``data``, matching ``rules``, command-line overrides, command-line overrides scoped to the method
(``coop:train.epochs=1``). ``seed``, ``data.shots``, ``data.subsample`` and ``output.dir`` come from the protocol
itself; ``data.name`` from ``datasets``.
Runs live in ``<output.root>/<method>/<backbone>/<dataset>/<subsample>/shots_<K>/seed_<S>`` (:mod:`promptclip.runs`);
a dataset's aliases (``dtd``, ``DTD``) are its canonical name everywhere: folders, rules, ``{dataset}`` in presets.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import linear_probe, runs
from ..config import (DEFAULT_TEXT, Config, from_dict, load_yaml, merge, parse_override, preset_dirs,
                      read_yaml_mapping)
from ..errors import ConfigError
from ..registry import suggest
from ..utils import atomic_write_json

KINDS = ("few_shot", "base_to_new", "cross_dataset", "domain_generalization")
PROTOCOL_KEYS = ("kind", "description", "datasets", "shots", "seeds", "subsample", "methods", "config", "rules",
                 "evaluations")
WHEN_KEYS = ("method", "dataset", "shots", "seed")
#: keys the protocol sets itself, with the protocol key to use instead
OWNED = {"seed": "seeds", "data.shots": "shots", "data.subsample": "subsample", "data.name": "datasets",
         "output.dir": "the run layout"}


# ------------------------------------------------------------------------------------------------ the schema
@dataclass(frozen=True)
class DatasetEntry:
    """A dataset as the protocol names it: ``label`` (run folders, reports) and its ``data.*`` settings."""

    label: str
    data: Dict[str, Any]


@dataclass(frozen=True)
class MethodEntry:
    presets: Tuple[str, ...]
    name: Optional[str]  # overrides the presets' method name (run folders, reports)
    shots: Optional[Tuple[int, ...]]
    seeds: Optional[Tuple[int, ...]]
    config: Dict[str, Any]


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


@dataclass
class EvalSpec:
    """One evaluation of a run: its dataset label and class subset, the overrides for ``evaluate_run``, its file."""

    dataset: str
    subsample: str
    overrides: List[str]
    file: Path


@dataclass
class RunSpec:
    """One run of a protocol: its resolved config, folder and evaluations."""

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


# ------------------------------------------------------------------------------------------------ validation
def _error(where: str, message: str) -> ConfigError:
    return ConfigError(f"{where}: {message}")


def _ints(value: Any, where: str) -> Tuple[int, ...]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise _error(where, f"must be an integer or a non-empty list of integers, got {value!r}.")
    return tuple(values)


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _error(where, f"must be a mapping, got {value!r}.")
    return value


def _strings(value: Any, where: str) -> Tuple[str, ...]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) and v for v in values):
        raise _error(where, f"must be a name or a list of names, got {value!r}.")
    return tuple(values)


def _unknown_keys(data: dict, allowed: Sequence[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            raise _error(where, f"unknown key {key!r}.{suggest(str(key), allowed)} Valid keys: {', '.join(allowed)}.")


def nested(settings: Dict[str, Any], where: str) -> dict:
    """``{"optim.lr": 0.1, "train": {"epochs": 5}}`` → a nested config dict; refuses keys the protocol owns."""
    out: dict = {}
    for key, value in _mapping(settings, where).items():
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


def _dataset(value: Any, where: str) -> DatasetEntry:
    if isinstance(value, str) and value:
        return DatasetEntry(_label(value, where), {"name": value})
    entry = _mapping(value, where)
    _unknown_keys(entry, ("name", "data"), where)
    if not isinstance(entry.get("name"), str) or not entry["name"]:
        raise _error(where, "a dataset needs a name (its label in run folders and reports).")
    data = _mapping(entry.get("data"), f"{where}.data")
    return DatasetEntry(_label(entry["name"], where), {"name": entry["name"], **copy.deepcopy(data)})


def _method(value: Any, where: str) -> MethodEntry:
    if isinstance(value, str) and value:
        return MethodEntry((value,), None, None, None, {})
    entry = _mapping(value, where)
    _unknown_keys(entry, ("preset", "name", "shots", "seeds", "config"), where)
    if "preset" not in entry:
        raise _error(where, "a method needs a preset (e.g. {preset: coop}).")
    name = entry.get("name")
    if name is not None and not isinstance(name, str):
        raise _error(f"{where}.name", f"must be a name usable as a folder, got {name!r}.")
    if name is not None:
        try:
            runs.safe_component(name, "method name")
        except ConfigError as err:
            raise _error(f"{where}.name", str(err)) from None
    return MethodEntry(_strings(entry["preset"], f"{where}.preset"), name,
                       _ints(entry["shots"], f"{where}.shots") if "shots" in entry else None,
                       _ints(entry["seeds"], f"{where}.seeds") if "seeds" in entry else None,
                       nested(entry.get("config"), f"{where}.config"))


def _rule(value: Any, where: str) -> Rule:
    entry = _mapping(value, where)
    _unknown_keys(entry, ("when", "set", "presets"), where)
    if "set" not in entry and "presets" not in entry:
        raise _error(where, "a rule needs `set` (config keys) or `presets` (applied when `when` matches).")
    when = _mapping(entry.get("when"), f"{where}.when")
    _unknown_keys(when, WHEN_KEYS, f"{where}.when")
    conditions = {key: (_ints(v, f"{where}.when.{key}") if key in ("shots", "seed") else
                        _strings(v, f"{where}.when.{key}")) for key, v in when.items()}
    if "dataset" in conditions:
        conditions["dataset"] = tuple(runs.canonical_dataset(d) for d in conditions["dataset"])
    presets = _strings(entry["presets"], f"{where}.presets") if "presets" in entry else ()
    return Rule(conditions, nested(entry.get("set"), f"{where}.set"), presets)


def _evaluations(value: Any, where: str) -> List[Evaluation]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _error(where, f"must be a list of evaluations, got {value!r}.")
    out: List[Evaluation] = []
    for i, item in enumerate(value):
        here = f"{where}[{i}]"
        entry = _mapping(item, here)
        _unknown_keys(entry, ("datasets", "subsample"), here)
        subsample = entry.get("subsample", "all")
        if subsample not in ("all", "base", "new"):
            raise _error(f"{here}.subsample", f"must be all, base or new, not {subsample!r}.")
        if "datasets" in entry:
            names = entry["datasets"] if isinstance(entry["datasets"], list) else [entry["datasets"]]
            out += [Evaluation(_dataset(d, f"{here}.datasets[{j}]"), subsample) for j, d in enumerate(names)]
        elif "subsample" in entry:
            out.append(Evaluation(None, subsample))
        else:
            raise _error(here, "say what to evaluate on: `datasets` (other datasets) and/or `subsample` (new).")
    return out


def parse_protocol(data: dict, name: str, source: str) -> Protocol:
    """Validate a protocol mapping; every error names the file and the key."""
    where = source
    data = _mapping(data, where)
    _unknown_keys(data, PROTOCOL_KEYS, where)
    for key in ("kind", "datasets", "methods"):
        if key not in data:
            raise _error(where, f"`{key}` is missing.")
    if data["kind"] not in KINDS:
        raise _error(f"{where}: kind", f"must be one of {', '.join(KINDS)}, not {data['kind']!r}.")
    subsample = data.get("subsample", "all")
    if subsample not in ("all", "base"):
        raise _error(f"{where}: subsample", f"runs train on all or base classes, not {subsample!r}.")
    for key in ("datasets", "methods", "rules"):
        if not isinstance(data.get(key, []), list):
            raise _error(f"{where}: {key}", f"must be a list, got {data[key]!r}.")
    return Protocol(
        name=name, kind=data["kind"], description=str(data.get("description", "")),
        datasets=[_dataset(d, f"{where}: datasets[{i}]") for i, d in enumerate(data["datasets"])],
        shots=list(_ints(data.get("shots", [16]), f"{where}: shots")),
        seeds=list(_ints(data.get("seeds", [1]), f"{where}: seeds")),
        subsample=subsample,
        methods=[_method(m, f"{where}: methods[{i}]") for i, m in enumerate(data["methods"])],
        config=nested(data.get("config"), f"{where}: config"),
        rules=[_rule(r, f"{where}: rules[{i}]") for i, r in enumerate(data.get("rules", []))],
        evaluations=_evaluations(data.get("evaluations"), f"{where}: evaluations"),
        source=source,
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
    return Path(_build(layers, f"{protocol.source}: config").output.root)


def expand(protocol: Protocol, overrides: Sequence[str] = (), scoped: Optional[Dict[str, List[str]]] = None
           ) -> List[RunSpec]:
    """Every run of ``protocol`` (methods × datasets × shots × seeds), in that order, with resolved configs."""
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
        mine = [parse_override(t) for scope, texts in scoped.items() if scope in (name, *method.presets)
                for t in texts]
        named_method = {"method": name} if method.name else {}
        for dataset in protocol.datasets:
            for shots in method.shots or protocol.shots:
                for seed in method.seeds or protocol.seeds:
                    where = f"{protocol.source}: {name} {dataset.label} shots {shots} seed {seed}"
                    rule_layers: List[dict] = []
                    for rule in protocol.rules:
                        if _matches(rule, method, name, dataset.label, shots, seed):
                            rule_layers += [load_yaml(p.format(dataset=dataset.label)) for p in rule.presets]
                            rule_layers.append(rule.set)
                    owned = {"seed": seed, "data": {"shots": shots, "subsample": protocol.subsample},
                             **named_method}
                    cfg = _build([*presets, protocol.config, method.config, {"data": dataset.data}, *rule_layers,
                                  *cli, *mine, owned], where)
                    cfg = runs.resolve(cfg)
                    run_dir = runs.run_path(root, name, runs.backbone_label(cfg.model.name, cfg.model.pretrained),
                                            dataset.label, protocol.subsample, cfg.data.shots, seed)
                    cfg = dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, dir=str(run_dir)))
                    identity = runs.Identity.of(cfg)
                    specs.append(RunSpec(str(run_dir.relative_to(root)), name, dataset.label, protocol.subsample,
                                         cfg.data.shots, seed, cfg, run_dir, identity,
                                         _eval_specs(protocol, cfg, identity, dataset, where)))
    _check(protocol, specs, method_names, scoped)
    return specs


def _eval_specs(protocol: Protocol, cfg: Config, identity: runs.Identity, dataset: DatasetEntry, where: str
                ) -> List[EvalSpec]:
    if protocol.evaluations and linear_probe.is_linear_probe(cfg):
        raise ConfigError(f"{where}: a linear probe classifies its training classes only; it cannot be evaluated on "
                          f"other classes or datasets. Remove it from this protocol.")
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
    from ..engine.run import evaluation_config

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


def write_manifest(protocol: Protocol, specs: List[RunSpec], root: Path, overrides: Sequence[str]) -> Path:
    """``root/protocol-<name>.json``: the sweep's kind and every planned run and evaluation, for the report."""
    root = Path(root)

    def rel(path: Path) -> str:
        return str(Path(path).relative_to(root))

    path = runs.manifest_path(root, protocol.name)
    atomic_write_json(path, {
        "protocol": protocol.name, "kind": protocol.kind, "source": protocol.source,
        "description": protocol.description, "overrides": list(overrides),
        "runs": [{"id": r.id, "method": r.method, "dataset": r.dataset, "subsample": r.subsample, "shots": r.shots,
                  "seed": r.seed, "model": r.config.model.name, "pretrained": r.config.model.pretrained,
                  "dir": rel(r.run_dir), "fingerprint": r.identity.fingerprint,
                  "evaluations": [{"dataset": e.dataset, "subsample": e.subsample, "file": rel(e.file)}
                                  for e in r.evaluations]}
                 for r in specs],
    })
    return path
