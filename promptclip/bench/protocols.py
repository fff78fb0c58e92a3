"""A protocol's runs: every run's resolved config, key, folder and evaluations, and the sweep's manifest.

A protocol file is read and checked by :mod:`.protocol_files`; :func:`expand` plans its runs.

A run's config is built from, later layers winning: the method's presets, ``config``, the method's ``config``, the
dataset's ``data``, matching ``rules``, command-line overrides, command-line overrides scoped to the method
(``coop:train.epochs=1``). ``seed``, ``data.shots``, ``data.subsample`` and ``output.dir`` come from the protocol
itself; ``data.name`` from ``datasets``.
Each run's :class:`promptclip.runs.RunKey` (method, backbone, dataset label, subsample, shots, seed, grid point) names
its folder, ``<output.root>/<method>/<backbone>/<dataset>/<subsample>/shots_<K>/seed_<S>``, and is what the manifest
records; a dataset's aliases (``dtd``, ``DTD``) are its canonical name everywhere: folders, rules, ``{dataset}`` in
presets.

A ``grid`` (the protocol's, for every method that trains; or a method's own, which replaces it) makes each
combination of its values a run of its own, in ``.../shots_<K>/<grid label>/seed_<S>``
(:func:`promptclip.runs.grid_label`), whose prompts are also evaluated on the run's validation split
(:mod:`promptclip.engine.validation`); the report chooses, per method, backbone, dataset, classes and shots, the point
with the best validation accuracy averaged over seeds.
The grid's values win over every other layer; a command-line override of a key the grid tunes is refused.

``hparams`` sets ``text.hparams`` of every method that has that option (the methods on features: Tip-Adapter's α/β,
GDA's α, LP++'s iteration): ``fixed``, the published defaults with no validation data read, or ``val``, each
reference's own search on the few-shot validation split (never on test). It sits with the protocol's ``config``:
a method's ``config``, a rule or the command line can still set ``text.hparams`` for one method.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .. import run_files, runs
from ..config import DEFAULT_TEXT, Config, from_dict, load_yaml, merge, parse_override, to_dict
from ..errors import ConfigError
from ..plugins import load_plugins
from ..registry import suggest
from ..utils import atomic_write_json
from .protocol_files import DatasetEntry, Grid, MethodEntry, Protocol, Rule, nested

log = logging.getLogger("promptclip")


@dataclass
class EvalSpec:
    """One evaluation of a run: its dataset label and class subset, the overrides for ``evaluate_run``, its file."""

    dataset: str
    subsample: str
    overrides: List[str]
    file: Path


@dataclass
class RunSpec:
    """One run of a protocol: its key, resolved config, folder and evaluations; a grid point also the file its
    validation accuracy goes to."""

    id: str  # the run folder relative to the sweep root
    key: runs.RunKey
    config: Config
    run_dir: Path
    identity: runs.Identity
    evaluations: List[EvalSpec] = field(default_factory=list)
    validation: Optional[Path] = None


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


def _method_grid(protocol: Protocol, method: MethodEntry, base: Config, cli_keys: Sequence[str], where: str) -> Grid:
    """The grid ``method`` is tuned over, with every key checked against its config: a key must be a config key
    (with a suggestion otherwise), must not add a loss or callback the method does not have, and must not also be
    overridden on the command line. The protocol's grid applies to methods that train by gradient steps (not to a
    ``training_free`` one, which has no optimiser to tune); a method's own ``grid`` always. A method fitted in closed
    form (the linear probe) tunes itself on val and takes none."""
    closed_form = base.text.fits_in_closed_form
    if method.grid and closed_form:
        raise ConfigError(f"{where}: {base.text.name} is fitted in closed form and chooses its own settings on the "
                          f"validation split; it takes no grid. Remove its grid.")
    if method.grid is not None:
        grid = method.grid
    else:
        trains = runs.effective_shots(base) != 0 and not closed_form and not base.text.training_free
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
    load_plugins()  # the configs are built by from_dict, not build_config: register outside plugins' methods first
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
    """One run: its config from ``layers``, its key and folder (a grid point's one level above its seed),
    evaluations."""
    if point:
        where = f"{where} {runs.grid_label(point)}"
    cfg = runs.resolve(_build(layers, where))
    key = runs.RunKey.of(cfg, method=name, dataset=dataset.label, grid=point)
    run_dir = key.path(root)
    cfg = dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, dir=str(run_dir)))
    identity = runs.Identity.of(cfg)
    validation = None
    if point:
        from ..engine.validation import validation_file

        validation = validation_file(run_dir, cfg, identity.fingerprint)
    return RunSpec(str(run_dir.relative_to(root)), key, cfg, run_dir, identity,
                   _eval_specs(protocol, cfg, identity, dataset, where), validation)


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
                              f"a name, e.g. {{preset: ..., name: {spec.key.method}_2}}.")
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
    """``root/protocol-<name>.json``: the sweep's kind and every planned run (its key's fields, backbone weights,
    folder, fingerprint) and evaluation, for the report; a grid point's run also its folder label and its validation
    file (what the report selects on).

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
        "runs": [{"id": r.id, **r.key.to_json(), "model": r.config.model.name,
                  "pretrained": r.config.model.pretrained, "dir": rel(r.run_dir), "fingerprint": r.identity.fingerprint,
                  "evaluations": [{"dataset": e.dataset, "subsample": e.subsample, "file": rel(e.file)}
                                  for e in r.evaluations],
                  **({"setting": r.key.setting, "validation": rel(r.validation)} if r.key.grid else {})}
                 for r in specs],
    }
    try:
        existing = run_files.read_json(path, "a sweep manifest", ("runs",)) if not replace else None
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
