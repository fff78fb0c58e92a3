"""Run folders → records: what each run is (its identity), what it measured, what went wrong.

``collect(DIR)`` reads the sweep manifests ``DIR/protocol-<name>.json`` written by ``bench`` (every planned run, so
runs still missing are named) or, without one, every run folder under DIR. Each run becomes a :class:`Record`; its
:meth:`Record.long` rows (one per value) are the long table every report table is a pivot of.

A record's ``settings`` are its run identity (``identity.json``) without the seed: runs with equal settings are
seeds of one experiment, runs with other settings never share a mean. :func:`label` names each experiment by what
sets it apart from the method's other experiments (``coop [train.epochs=60]``). An evaluation on the run's own data
(the same benchmark, or the same folder under another label) is the run's own dataset, never a transfer target.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, TypeVar

from .. import run_files, runs
from ..data.benchmarks import find_benchmark
from ..errors import PromptclipError
from .published import SHIFTS

K = TypeVar("K")
R = TypeVar("R")

#: metrics read from a result or evaluation file: name → how to read it (add a metric here and it is in every table
#: of ``SUMMARY_METRICS`` and in the long CSV)
EVALUATION_METRICS: Dict[str, Callable[[dict], Optional[float]]] = {
    "accuracy": lambda d: d.get("test", {}).get("accuracy"),
    "macro_f1": lambda d: d.get("test", {}).get("macro_f1"),
}
#: metrics of the training run itself (not of an evaluation)
RUN_METRICS: Dict[str, Callable[[dict], Optional[float]]] = {
    "parameters": lambda d: d.get("num_parameters"),
    "train_seconds": lambda d: d.get("train_seconds"),
}
RUN = ("", "")  # the (target, classes) key of run metrics
VALIDATION = "val_accuracy"  # a grid run's accuracy on its validation split
#: identity keys that tell experiments apart only through the row or column they are in already
_PLACED = ("seed", "data.shots", "data.subsample")


@dataclass
class Record:
    """A planned or found run and every metric it has: ``values[(target dataset, classes, metric)]`` (None where
    missing). Its own test is ``(dataset, subsample)``; evaluations add other keys; run metrics use ``RUN``."""

    id: str
    method: str
    dataset: str
    subsample: str
    shots: int
    seed: int
    model: str
    pretrained: Optional[str]
    values: Dict[Tuple[str, str, str], Optional[float]] = field(default_factory=dict)
    problems: List[str] = field(default_factory=list)  # why a result present on disk is not used
    grid: Dict[str, object] = field(default_factory=dict)  # a grid point's values ({}: not a grid run)
    setting: str = ""  # the grid point's label (its folder name)
    settings: Optional[Dict[str, Any]] = None  # the run identity without the seed (None: unknown)
    label: str = ""  # the row name: the method and what sets its settings apart (:func:`label`)
    planned: int = 1  # runs planned for this record's cell (seeds), 1 without a manifest
    shortfall: Optional[dict] = None  # result.json's {"shots", "of", "classes"}: classes short of images
    failure: str = ""  # why the run stopped (failed.json), "" if it did not fail

    def get(self, metric: str = "accuracy", target: Optional[str] = None, classes: Optional[str] = None
            ) -> Optional[float]:
        """A metric of the run's own test (default), of an evaluation (``target``, ``classes``), or of the run."""
        if metric in RUN_METRICS:
            return self.values.get((*RUN, metric))
        return self.values.get((target or self.dataset, classes or self.subsample, metric))

    @property
    def key(self) -> runs.RunKey:
        """The run's key (:class:`~promptclip.runs.RunKey`), as its folder and files name it."""
        return runs.RunKey(self.method, runs.backbone_label(self.model, self.pretrained), self.dataset, self.subsample,
                           self.shots, self.seed, self.grid)

    @property
    def accuracy(self) -> Optional[float]:
        return self.get()

    @property
    def evaluations(self) -> List[Tuple[str, str]]:
        """The (dataset, classes) this run's prompts were (or are to be) evaluated on besides its own test."""
        own = (self.dataset, self.subsample)
        return _unique((t, c) for t, c, _ in self.values if (t, c) not in (own, RUN))

    @property
    def validation(self) -> Optional[float]:
        """The run's accuracy on its own validation split (grid runs), what tuning chooses on."""
        return self.values.get((self.dataset, self.subsample, VALIDATION))

    @property
    def cell(self) -> tuple:
        """What a table row and column fix: runs of one cell differ only in settings and seed."""
        return self.method, self.model, self.pretrained, self.dataset, self.subsample, self.shots

    def add(self, target: str, classes: str, data: Optional[dict], metrics=EVALUATION_METRICS) -> None:
        for name, read in metrics.items():
            self.values[(target, classes, name)] = read(data) if data is not None else None

    def long(self) -> List[dict]:
        """One row per value: the long-format table every report table is a pivot of."""
        return [{"run": self.id, "label": self.label or self.method, "method": self.method, "setting": self.setting,
                 "dataset": self.dataset, "subsample": self.subsample, "shots": self.shots, "seed": self.seed,
                 "model": self.model, "pretrained": self.pretrained or "", "target": target, "classes": classes,
                 "metric": metric, "value": "" if value is None else value}
                for (target, classes, metric), value in self.values.items()]


@dataclass
class Sweep:
    name: str
    kind: str
    description: str
    records: List[Record]
    overrides: List[str] = field(default_factory=list)  # the command line the manifest records
    manifest: bool = False  # planned by a manifest (else: the runs found)

    def missing(self) -> List[str]:
        lines = []
        for r in self.records:
            lines += [f"{r.id}: {problem}" for problem in r.problems]
            if r.accuracy is None and not r.problems:
                lines.append(f"{r.id}: failed: {r.failure}" if r.failure else f"{r.id}: not finished")
            lines += [f"{r.id}: evaluation on {d} ({s} classes) missing" for d, s in r.evaluations
                      if r.get("accuracy", d, s) is None and r.accuracy is not None]
            if r.grid and r.accuracy is not None and r.validation is None:
                lines.append(f"{r.id}: validation missing")
        return lines


# ------------------------------------------------------------------------------------------------ reading
def _read(path: Path, what: str, problems: List[str], fingerprint: Optional[str] = None, key: str = "test"
          ) -> Optional[dict]:
    """A result file, or None (with the reason in ``problems``) when it is damaged or from other settings."""
    try:
        data = run_files.read_scored(path, what, key)
    except runs.CorruptFile as err:
        problems.append(f"{err} Not counted; rerun the sweep to redo it.")
        return None
    if data is not None and fingerprint and data.get("fingerprint") != fingerprint:
        problems.append(f"{path} was made with other settings than the sweep planned; not counted.")
        return None
    return data


def _settings(run_dir: Path, problems: List[str]) -> Optional[Dict[str, Any]]:
    """The run's identity without its seed (and with the identity version, which changes results too)."""
    try:
        identity = run_files.read_identity(run_dir)
    except runs.CorruptFile as err:
        problems.append(f"{err} Its settings are unknown; not counted.")
        return None
    if identity is None:
        return None
    settings = {k: v for k, v in identity.settings.items() if k != "seed"}
    settings["identity version"] = identity.version
    return settings


def _failure(run_dir: Path) -> str:
    try:
        failed = run_files.read_json(run_dir / runs.FAILED, "a run's failure record", ("error",))
    except runs.CorruptFile as err:
        return f"{err}"
    return "" if failed is None else f"{failed['error']} (at {failed.get('at', '?')})"


def _shortfall(result: Optional[dict]) -> Optional[dict]:
    found = (result or {}).get("shortfall")
    ok = isinstance(found, dict) and isinstance(found.get("classes"), dict) and found.get("classes")
    return found if ok else None


_HASH_SUFFIX = re.compile(r"-[0-9a-f]{6}$")


def same_dataset(run: Record, label: str, evaluation: Optional[dict]) -> bool:
    """Whether an evaluation was on the run's own data: the same data settings (benchmark name, or folder) when both
    files record them; otherwise the same benchmark name, or the folder's label without its location hash."""
    theirs = (evaluation or {}).get("settings") or {}
    if run.settings and "data.name" in theirs and "data.name" in run.settings:
        if theirs["data.name"] != run.settings["data.name"]:
            return False
        return find_benchmark(str(theirs["data.name"])) is not None or \
            theirs.get("data.root") == run.settings.get("data.root")
    names = {label, _HASH_SUFFIX.sub("", label), str((evaluation or {}).get("dataset", label))}
    return canonical(run.dataset) in {canonical(n) for n in names}


def _add_evaluation(record: Record, label: str, subsample: str, data: Optional[dict]) -> None:
    """File an evaluation under its target: the run's own dataset when it is the run's data (a re-evaluation of the
    classes the run was tested on is no new number and is left out), else its label."""
    if same_dataset(record, label, data):
        if subsample != record.subsample:
            record.add(record.dataset, subsample, data)
    else:
        record.add(label, subsample, data)


def _record(run_id: str, identity: dict, result: Optional[dict], problems: List[str], run_dir: Path) -> Record:
    record = Record(run_id, identity["method"], identity["dataset"], identity["subsample"], identity["shots"],
                    identity["seed"], identity["model"], identity.get("pretrained"), problems=problems)
    record.add(record.dataset, record.subsample, result)
    record.add(*RUN, result, RUN_METRICS)
    record.settings = _settings(run_dir, problems) if result is not None else None
    record.shortfall = _shortfall(result)
    record.failure = _failure(run_dir) if result is None else ""
    return record


def _from_manifest(path: Path) -> Sweep:
    data = run_files.read_manifest(path)
    records = []
    for run in data["runs"]:
        problems: List[str] = []
        result = _read(run["path"] / runs.RESULT, "a run's result", problems, run.get("fingerprint"))
        record = _record(run["id"], run, result, problems, run["path"])
        for e in run["evaluations"]:
            _add_evaluation(record, e["dataset"], e["subsample"],
                            _read(e["path"], "an evaluation result", problems))
        if run.get("grid"):
            record.grid, record.setting = dict(run["grid"]), str(run.get("setting", ""))
            validation = _read(runs.inside(path.parent, run.get("validation"), str(path)), "a validation result",
                               problems, key="val")
            record.values[(record.dataset, record.subsample, VALIDATION)] = \
                validation["val"].get("accuracy") if validation is not None else None
        records.append(record)
    planned = _group(records, lambda r: (*r.cell, r.setting))
    for members in planned.values():
        for r in members:
            r.planned = len(members)
    return Sweep(data["protocol"], data["kind"], data.get("description", ""), records,
                 [str(o) for o in data.get("overrides", [])], manifest=True)


def _from_results(root: Path) -> Tuple[List[Sweep], List[str], List[str]]:
    """Every finished run under ``root`` (no manifest: nothing is known to be missing), as one sweep per kind of
    result, backbone and class subset, so runs that differ in any of these are never put in one row; the problems
    of results that cannot be read; and the runs that failed, with their reasons."""
    records = []
    unreadable: List[str] = []
    for path in sorted(root.rglob(runs.RESULT)):
        problems: List[str] = []
        result = _read(path, "a run's result", problems)
        run_id = str(path.parent.relative_to(root))
        if result is None:
            unreadable += [f"{run_id}: {problem}" for problem in problems]
            continue
        record = _record(run_id, result, result, problems, path.parent)
        point = path.parent.parent
        if record.settings is None and "=" in point.name and point.parent.name.startswith(("shots_", "all_shots")):
            record.setting = point.name  # settings unknown: the grid point's folder keeps it apart
        for file in sorted((path.parent / runs.EVALS).glob("*.json")):
            if _is_validation(file):  # chosen on only with the sweep's manifest, which names the grid
                continue
            evaluation = _read(file, "an evaluation result", problems)
            if evaluation is not None:
                _add_evaluation(record, str(evaluation.get("label", evaluation.get("dataset"))),
                                str(evaluation.get("subsample", "all")), evaluation)
        records.append(record)
    failed = [f"{p.parent.relative_to(root)}: failed: {_failure(p.parent)}" for p in sorted(root.rglob(runs.FAILED))
              if not (p.parent / runs.RESULT).exists()]
    groups = _group(records, lambda r: (_infer_kind([r]), r.model, r.pretrained, r.subsample))
    if len(groups) == 1:
        ((kind, *_), members), = groups.items()
        return [Sweep(root.name, kind, "", members)], unreadable, failed
    return [Sweep(f"{root.name}-{kind}-{runs.backbone_label(model, pretrained)}-{subsample}", kind,
                  f"Runs of kind {kind.replace('_', ' ')} on {model} ({pretrained or 'random weights'}), trained on "
                  f"{subsample} classes.", members)
            for (kind, model, pretrained, subsample), members in groups.items()], unreadable, failed


def _is_validation(path: Path) -> bool:
    try:
        data = run_files.read_json(path, "an evaluation result")
    except runs.CorruptFile:
        return False
    return data is not None and data.get("split") == "val"


def _infer_kind(records: Sequence[Record]) -> str:
    if any((r.dataset, "new") in r.evaluations for r in records):
        return "base_to_new"
    targets = {d for r in records for (d, s) in r.evaluations if d != r.dataset}
    if targets:
        return "domain_generalization" if {canonical(d) for d in targets} <= set(SHIFTS) else "cross_dataset"
    return "few_shot"


def collect(directory: Path) -> Tuple[List[Sweep], List[str], List[str]]:
    """The sweeps in ``directory`` (from its manifests, else from the results found), the unreadable results, and
    (without a manifest) the failed runs found."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PromptclipError(f"{directory} is not a folder: give a sweep folder (the output.root of a bench "
                              f"command, e.g. runs/few_shot) or a folder of runs.")
    manifests = sorted(directory.glob(f"{runs.MANIFEST_PREFIX}*.json"))
    if manifests:
        sweeps, unreadable = [], []
        for manifest in manifests:  # a damaged manifest is named; the other sweeps are still reported
            try:
                sweeps.append(_from_manifest(manifest))
            except runs.CorruptFile as err:
                unreadable.append(str(err))
        return sweeps, unreadable, []
    return _from_results(directory)


# ------------------------------------------------------------------------------------------------ experiments
def label(records: Sequence[Record]) -> None:
    """Name each record's row: its method, plus the settings that set its experiment apart where one cell (method,
    backbone, dataset, classes, shots) holds runs of several settings. Every experiment of the method shows those
    keys, so ``coop [train.epochs=60]`` is one row across datasets. Runs without an identity are ``[settings
    unknown]`` beside others; unfinished planned runs take the name of their cell's finished runs."""
    for method, rows in _group(records, lambda r: r.method).items():
        cells = [[r for r in members if r.accuracy is not None] for members in _group(rows, lambda r: r.cell).values()]
        keys = _unique(k for finished in cells for k in _differing([r.settings for r in finished if r.settings]))
        mixed = any(len({experiment(r) for r in finished}) > 1 and any(r.settings is None for r in finished)
                    for finished in cells)
        for r in (r for r in rows if r.accuracy is not None):
            if r.settings is not None:
                parts = [f"{k}={runs.show_value(r.settings.get(k, NOT_SET))}" for k in keys]
            else:
                parts = ["settings unknown"] if keys or mixed else []
                parts += [r.setting] if r.setting and not r.grid else []  # the grid folder keeps points apart
            r.label = f"{method} [{', '.join(parts)}]" if parts else method
        for members in _group(rows, lambda r: r.cell).values():
            names = _unique(r.label for r in members if r.accuracy is not None)
            for r in members:
                if r.accuracy is None:
                    r.label = names[0] if len(names) == 1 else method


NOT_SET = "(not set)"


def _differing(settings: Sequence[Dict[str, Any]]) -> List[str]:
    """The keys whose values are not all equal across ``settings`` (the row and column keys aside)."""
    keys = sorted({k for s in settings for k in s} - set(_PLACED))
    return [k for k in keys if len({runs.show_value(s.get(k, NOT_SET)) for s in settings}) > 1]


def experiment(r: Record) -> tuple:
    """What makes runs seeds of one experiment: their method and settings (unknown: their cell and folder)."""
    if r.settings is None:
        return ("unknown", *r.cell, r.setting)
    return (r.method, tuple(sorted((k, runs.show_value(v)) for k, v in r.settings.items())))


# ------------------------------------------------------------------------------------------------ statistics
DAGGER = "†"  # fewer seeds than planned


@dataclass(frozen=True)
class Stat:
    """Mean and population std (ddof 0, CoOp's ``np.std``) over the ``n`` seeds found of ``planned``; with
    ``duplicates`` (runs that repeat a seed of their experiment) there is no mean to show."""

    mean: float
    std: float
    n: int
    planned: int
    duplicates: Tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return self.n >= self.planned

    def text(self) -> str:
        if self.duplicates:
            return "duplicate seeds"
        spread = f"{self.std:.2f}" if self.n > 1 else "—"
        return f"{self.mean:.2f} ± {spread} (n={self.n}){'' if self.complete else DAGGER}"


def stat(values: Sequence[Optional[float]], planned: Optional[int] = None) -> Optional[Stat]:
    """Mean and population std of the values found (None: missing) among those planned."""
    found = [v for v in values if v is not None]
    if not found:
        return None
    mean = sum(found) / len(found)
    return Stat(mean, math.sqrt(sum((v - mean) ** 2 for v in found) / len(found)), len(found),
                len(values) if planned is None else planned)


def seed_stat(pairs: Sequence[Tuple[Record, Optional[float]]]) -> Optional[Stat]:
    """:func:`stat` over one experiment's runs, refusing to average two runs of the same seed."""
    found = [(r, v) for r, v in pairs if v is not None]
    seeds = _group(found, lambda p: p[0].seed)
    duplicates = tuple(r.id for members in seeds.values() if len(members) > 1 for r, _ in members)
    result = stat([v for _, v in found], max([r.planned for r, _ in pairs], default=0))
    if result is None or not duplicates:
        return result
    return Stat(math.nan, math.nan, result.n, result.planned, duplicates)


def harmonic(base: float, new: float) -> float:
    return 2 * base * new / (base + new) if base + new else 0.0


canonical = runs.canonical_dataset


def _group(items: Iterable[R], key: Callable[[R], K]) -> Dict[K, List[R]]:
    out: Dict[K, List[R]] = {}
    for item in items:
        out.setdefault(key(item), []).append(item)
    return out


def _unique(values: Iterable[K]) -> List[K]:
    return list(dict.fromkeys(values))


# ------------------------------------------------------------------------------------------------ tuning
@dataclass
class Choice:
    """The grid point chosen for one (method, backbone, dataset, classes, shots) on the validation split."""

    method: str
    model: str
    pretrained: Optional[str]
    dataset: str
    subsample: str
    shots: int
    setting: str  # the chosen point's label
    grid: Dict[str, object]  # the chosen point's values
    validation: Stat  # its validation accuracy over seeds (what chose it)
    test: Optional[Stat]  # its test accuracy over seeds (reported, never used to choose)
    points: int  # grid points compared


def select(records: Sequence[Record]) -> Tuple[List[Record], List[Choice], List[str]]:
    """Reduce grid runs to the chosen settings: per (method, backbone, dataset, classes, shots) the grid point with
    the best mean validation accuracy over seeds (ties: the first in grid order). Returns the records to tabulate
    (runs without a grid, and the chosen points' runs), the choices, and the groups still waiting for validations
    (left out until every run of every point has one)."""
    kept = [r for r in records if not r.grid]
    choices: List[Choice] = []
    pending: List[str] = []
    for key, rows in _group([r for r in records if r.grid], lambda r: r.cell).items():
        points = _group(rows, lambda r: r.setting)
        missing = sum(r.validation is None for r in rows)
        if missing:
            method, _, _, dataset, subsample, shots = key
            pending.append(f"{method} {dataset} {subsample} shots {shots}: tuning waits for {missing} of {len(rows)} "
                           f"validation results; nothing chosen yet")
            continue
        scores = {setting: stat([r.validation for r in members]) for setting, members in points.items()}
        best = max(scores, key=lambda setting: scores[setting].mean)  # max keeps the first of equal scores
        chosen = points[best]
        kept += chosen
        first = chosen[0]
        choices.append(Choice(first.method, first.model, first.pretrained, first.dataset, first.subsample, first.shots,
                              best, first.grid, scores[best], stat([r.accuracy for r in chosen]), len(points)))
    return kept, choices, pending
