"""Tables and plots from a sweep folder: mean ± std over seeds, averages over datasets, published numbers beside.

``write_report(DIR)`` reads the sweep manifests ``DIR/protocol-<name>.json`` written by ``bench`` (which list every
planned run, so runs still missing are named and never silently averaged over) or, without one, every
``result.json`` under DIR. Per protocol kind:

- few-shot: one row per (method, shots), one column per dataset, then the average over datasets;
- base-to-new: base (B), new (N) and H = 2BN/(B+N) per dataset from the seed-averaged B and N; the average row's H
  comes from the averaged B and N, as the papers compute it;
- cross-dataset / domain generalization: the source dataset, each target, and the average over the targets.

A sweep with a ``grid`` is first reduced to the chosen settings (:func:`select`): per method, backbone, dataset,
classes and shots, the grid point with the best validation accuracy averaged over seeds (ties: the first in grid
order). Only the chosen point's runs enter the tables above; a "Tuning" table shows each choice, its validation
accuracy and the test accuracy of the chosen runs. A group is chosen only when every run of every point has its
validation accuracy; until then it is listed as pending and left out. Test accuracy never takes part in choosing.

Every run contributes every metric it has (``EVALUATION_METRICS`` of its test and evaluations, ``RUN_METRICS`` of
the run); each entry of ``SUMMARY_METRICS`` adds a table of that metric after the protocol's own.

A cell is ``mean ± std`` (population std over seeds, as the reference scripts print it); ``†`` marks a cell with
fewer seeds than planned; an average needs every dataset. Published numbers (``published.py``) appear beside ours
with the difference (ours − published) when the runs used the published backbone with OpenAI weights. Outputs:
``report.md``, per protocol a CSV of the table cells and ``<protocol>-runs.csv`` with every value of every run (the
long table the tables are pivots of), and PNG plots when matplotlib is installed (extra ``plot``).
"""
from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, TypeVar

from .. import runs
from ..errors import PromptclipError
from .published import AVERAGE, ELEVEN, SHIFTS, Number, lookup

log = logging.getLogger("promptclip")
K = TypeVar("K")
R = TypeVar("R")
TRANSFER = ("cross_dataset", "domain_generalization")
DAGGER = "†"


# ------------------------------------------------------------------------------------------------ collecting
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
#: metrics shown in a table of their own after each protocol's accuracy table: name → (title, cell format)
SUMMARY_METRICS = {"macro_f1": ("Macro-F1 (%)", "{:.2f}"), "parameters": ("Learned parameters", "{:,.0f}"),
                   "train_seconds": ("Training time (s)", "{:.1f}")}
RUN = ("", "")  # the (target, classes) key of run metrics
VALIDATION = "val_accuracy"  # a grid run's accuracy on its validation split


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

    def get(self, metric: str = "accuracy", target: Optional[str] = None, classes: Optional[str] = None
            ) -> Optional[float]:
        """A metric of the run's own test (default), of an evaluation (``target``, ``classes``), or of the run."""
        if metric in RUN_METRICS:
            return self.values.get((*RUN, metric))
        return self.values.get((target or self.dataset, classes or self.subsample, metric))

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

    def add(self, target: str, classes: str, data: Optional[dict], metrics=EVALUATION_METRICS) -> None:
        for name, read in metrics.items():
            self.values[(target, classes, name)] = read(data) if data is not None else None

    def long(self) -> List[dict]:
        """One row per value: the long-format table every report table is a pivot of."""
        return [{"run": self.id, "method": self.method, "setting": self.setting, "dataset": self.dataset,
                 "subsample": self.subsample, "shots": self.shots, "seed": self.seed, "model": self.model,
                 "pretrained": self.pretrained or "", "target": target, "classes": classes, "metric": metric, "value": "" if value is None else value}
                for (target, classes, metric), value in self.values.items()]


@dataclass
class Sweep:
    name: str
    kind: str
    description: str
    records: List[Record]

    def missing(self) -> List[str]:
        lines = []
        for r in self.records:
            lines += [f"{r.id}: {problem}" for problem in r.problems]
            if r.accuracy is None and not r.problems:
                lines.append(f"{r.id}: not finished")
            lines += [f"{r.id}: evaluation on {d} ({s} classes) missing" for d, s in r.evaluations
                      if r.get("accuracy", d, s) is None and r.accuracy is not None]
            if r.grid and r.accuracy is not None and r.validation is None:
                lines.append(f"{r.id}: validation missing")
        return lines


def _read(path: Path, what: str, problems: List[str], fingerprint: Optional[str] = None, key: str = "test"
          ) -> Optional[dict]:
    """A result file, or None (with the reason in ``problems``) when it is damaged or from other settings."""
    try:
        data = runs.read_json(path, what, (key,))
    except runs.CorruptFile as err:
        problems.append(f"{err} Not counted; rerun the sweep to redo it.")
        return None
    if data is not None and fingerprint and data.get("fingerprint") != fingerprint:
        problems.append(f"{path} was made with other settings than the sweep planned; not counted.")
        return None
    return data


def _record(run_id: str, identity: dict, result: Optional[dict], problems: List[str]) -> Record:
    record = Record(run_id, identity["method"], identity["dataset"], identity["subsample"], identity["shots"],
                    identity["seed"], identity["model"], identity.get("pretrained"), problems=problems)
    record.add(record.dataset, record.subsample, result)
    record.add(*RUN, result, RUN_METRICS)
    return record


def _from_manifest(path: Path) -> Sweep:
    data = runs.read_manifest(path)
    records = []
    for run in data["runs"]:
        problems: List[str] = []
        result = _read(run["path"] / runs.RESULT, "a run's result", problems, run.get("fingerprint"))
        record = _record(run["id"], run, result, problems)
        for e in run["evaluations"]:
            record.add(e["dataset"], e["subsample"], _read(e["path"], "an evaluation result", problems))
        if run.get("grid"):
            record.grid, record.setting = dict(run["grid"]), str(run.get("setting", ""))
            validation = _read(runs.inside(path.parent, run.get("validation"), str(path)), "a validation result",
                               problems, key="val")
            record.values[(record.dataset, record.subsample, VALIDATION)] = \
                validation["val"].get("accuracy") if validation is not None else None
        records.append(record)
    return Sweep(data["protocol"], data["kind"], data.get("description", ""), records)


def _from_results(root: Path) -> Tuple[List[Sweep], List[str]]:
    """Every finished run under ``root`` (no manifest: nothing is known to be missing), as one sweep per kind of
    result, backbone and class subset, so runs that differ in any of these are never put in one row; and the
    problems of results that cannot be read."""
    records = []
    unreadable: List[str] = []
    for path in sorted(root.rglob(runs.RESULT)):
        problems: List[str] = []
        result = _read(path, "a run's result", problems)
        run_id = str(path.parent.relative_to(root))
        if result is None:
            unreadable += [f"{run_id}: {problem}" for problem in problems]
            continue
        record = _record(run_id, result, result, problems)
        point = path.parent.parent
        if "=" in point.name and point.parent.name.startswith(("shots_", "all_shots")):  # never mix grid points
            record.setting = point.name
            record.method = f"{record.method} [{record.setting}]"
        for file in sorted((path.parent / runs.EVALS).glob("*.json")):
            if _is_validation(file):  # chosen on only with the sweep's manifest, which names the grid
                continue
            evaluation = _read(file, "an evaluation result", problems)
            if evaluation is not None:
                record.add(evaluation.get("label", evaluation.get("dataset")), evaluation.get("subsample", "all"),
                           evaluation)
        records.append(record)
    groups = _group(records, lambda r: (_infer_kind([r]), r.model, r.pretrained, r.subsample))
    if len(groups) == 1:
        ((kind, *_), members), = groups.items()
        return [Sweep(root.name, kind, "", members)], unreadable
    return [Sweep(f"{root.name}-{kind}-{runs.backbone_label(model, pretrained)}-{subsample}", kind,
                  f"Runs of kind {kind.replace('_', ' ')} on {model} ({pretrained or 'random weights'}), trained on "
                  f"{subsample} classes.", members)
            for (kind, model, pretrained, subsample), members in groups.items()], unreadable


def _is_validation(path: Path) -> bool:
    try:
        data = runs.read_json(path, "an evaluation result")
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


def collect(directory: Path) -> Tuple[List[Sweep], List[str]]:
    """The sweeps in ``directory`` (from its manifests, else from the results found) and unreadable results."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PromptclipError(f"{directory} is not a folder: give a sweep folder (the output.root of a bench "
                              f"command, e.g. runs/few_shot) or a folder of runs.")
    manifests = sorted(directory.glob(f"{runs.MANIFEST_PREFIX}*.json"))
    if manifests:
        return [_from_manifest(m) for m in manifests], []
    return _from_results(directory)


# ------------------------------------------------------------------------------------------------ statistics
@dataclass(frozen=True)
class Stat:
    mean: float
    std: float
    n: int  # seeds found
    planned: int  # seeds planned

    @property
    def complete(self) -> bool:
        return self.n == self.planned

    def text(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f}{'' if self.complete else DAGGER}"


def stat(values: Sequence[Optional[float]]) -> Optional[Stat]:
    """Mean and population std of the values found (None: missing) among those planned."""
    found = [v for v in values if v is not None]
    if not found:
        return None
    mean = sum(found) / len(found)
    return Stat(mean, math.sqrt(sum((v - mean) ** 2 for v in found) / len(found)), len(found), len(values))


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


def _fmt(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.2f}"


def _diff(ours: Optional[float], published: Optional[Number]) -> Optional[float]:
    return None if ours is None or published is None else ours - published.value


def _signed(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:+.2f}"


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


def _group_key(r: Record) -> tuple:
    return r.method, r.model, r.pretrained, r.dataset, r.subsample, r.shots


def select(records: Sequence[Record]) -> Tuple[List[Record], List[Choice], List[str]]:
    """Reduce grid runs to the chosen settings: per (method, backbone, dataset, classes, shots) the grid point with
    the best mean validation accuracy over seeds (ties: the first in grid order). Returns the records to tabulate
    (runs without a grid, and the chosen points' runs), the choices, and the groups still waiting for validations
    (left out until every run of every point has one)."""
    kept = [r for r in records if not r.grid]
    choices: List[Choice] = []
    pending: List[str] = []
    for key, rows in _group([r for r in records if r.grid], _group_key).items():
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


def tuning_table(sweep: Sweep, choices: Sequence[Choice]) -> Table:
    """One row per choice: the chosen values, the validation accuracy that chose them, their test accuracy."""
    table = Table("Tuning: settings chosen on the validation split", ["method", "shots", "dataset", "chosen",
                                                                       "val acc (%)", "test acc (%)", "points"])
    for c in choices:
        values = ", ".join(f"{k}={v}" for k, v in c.grid.items())
        table.rows.append([c.method, str(c.shots), c.dataset, values, c.validation.text(),
                           c.test.text() if c.test else "—", str(c.points)])
        table.csv.append({"protocol": sweep.name, "method": c.method, "model": c.model,
                          "pretrained": c.pretrained or "", "dataset": c.dataset, "subsample": c.subsample,
                          "shots": c.shots, "setting": c.setting, **{f"grid.{k}": v for k, v in c.grid.items()},
                          "val_mean": _round(c.validation.mean), "val_std": _round(c.validation.std),
                          "test_mean": _round(c.test.mean if c.test else None),
                          "test_std": _round(c.test.std if c.test else None),
                          "seeds": c.validation.n, "points": c.points})
    return table


# ------------------------------------------------------------------------------------------------ tables
@dataclass
class Table:
    title: str
    header: List[str]
    rows: List[List[str]] = field(default_factory=list)
    csv: List[dict] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |",
                 "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


def _csv_row(sweep: Sweep, method: str, shots: int, dataset: str, metric: str, value: Optional[Stat],
             mean: Optional[float] = None, published: Optional[Number] = None) -> dict:
    mean = value.mean if value is not None else mean
    return {"protocol": sweep.name, "kind": sweep.kind, "method": method, "shots": shots, "dataset": dataset,
            "metric": metric, "mean": _round(mean), "std": _round(value.std if value else None),
            "seeds": value.n if value else "", "planned_seeds": value.planned if value else "",
            "published": published.value if published else "", "published_status": published.status if published
            else "", "difference": _round(_diff(mean, published))}


def _round(value: Optional[float]) -> object:
    return "" if value is None else round(value, 4)


def _published(kind: str, rows: Sequence[Record], dataset: str, metric: str) -> Optional[Number]:
    first = rows[0]
    return lookup(kind, first.method, dataset, metric, first.model, first.pretrained, first.shots)


def few_shot_table(sweep: Sweep) -> Tuple[Table, dict]:
    """Rows (method, shots), columns datasets + average; and the plot data {method: {dataset: {shots: Stat}}}."""
    datasets = _unique(r.dataset for r in sweep.records)
    compare_average = {canonical(d) for d in datasets} == set(ELEVEN)
    table = Table("Test accuracy (%)", ["method", "shots", *datasets, "average", "published avg", "Δ avg"])
    plot: Dict[str, Dict[str, Dict[int, Stat]]] = {}
    for (method, shots), rows in _group(sweep.records, lambda r: (r.method, r.shots)).items():
        cells = {d: stat([r.accuracy for r in rows if r.dataset == d]) for d in datasets}
        means = [c.mean for c in cells.values() if c is not None]
        average = sum(means) / len(means) if len(means) == len(datasets) else None
        average_complete = average is not None and all(c.complete for c in cells.values())
        published = _published("few_shot", rows, AVERAGE, "accuracy") if compare_average else None
        table.rows.append([method, str(shots), *[c.text() if c else "—" for c in cells.values()],
                           _fmt(average) + ("" if average is None or average_complete else DAGGER),
                           _published_text(published), _signed(_diff(average, published))])
        table.csv += [_csv_row(sweep, method, shots, d, "accuracy", c) for d, c in cells.items()]
        table.csv.append(_csv_row(sweep, method, shots, AVERAGE, "accuracy", None, average, published))
        for d, c in cells.items():
            if c is not None:
                plot.setdefault(method, {}).setdefault(d, {})[shots] = c
        if average is not None:
            plot.setdefault(method, {}).setdefault(AVERAGE, {})[shots] = Stat(average, 0.0, 1, 1)
    return table, plot


def _published_text(number: Optional[Number]) -> str:
    return "—" if number is None else f"{number.value:.2f}{'' if number.confirmed else ' (as recalled)'}"


def base_to_new_table(sweep: Sweep) -> Tuple[Table, dict]:
    """Per method and dataset: B, N, H (from the mean B and N); the average row's H from the averaged B and N."""
    datasets = _unique(r.dataset for r in sweep.records)
    compare_average = {canonical(d) for d in datasets} == set(ELEVEN)
    table = Table("Base-to-new accuracy (%)", ["method", "dataset", "base", "new", "H", "published B / N / H",
                                               "Δ B / N / H"])
    plot: Dict[str, Dict[str, Tuple[float, float, float]]] = {}
    for (method, shots), rows in _group(sweep.records, lambda r: (r.method, r.shots)).items():
        means: Dict[str, Tuple[float, float]] = {}
        for d in datasets:
            mine = [r for r in rows if r.dataset == d]
            base, new = stat([r.accuracy for r in mine]), stat([r.get("accuracy", d, "new") for r in mine])
            h = harmonic(base.mean, new.mean) if base and new else None
            if base and new:
                means[d] = (base.mean, new.mean)
                plot.setdefault(method, {})[d] = (base.mean, new.mean, h)
            published = [_published("base_to_new", mine or rows, canonical(d), m) for m in ("base", "new", "H")]
            _b2n_row(table, sweep, method, shots, d, (base, new), (base.mean if base else None,
                                                                  new.mean if new else None, h), published)
        complete = len(means) == len(datasets)
        b = sum(v[0] for v in means.values()) / len(means) if complete else None
        n = sum(v[1] for v in means.values()) / len(means) if complete else None
        published = [(_published("base_to_new", rows, AVERAGE, m) if compare_average else None)
                     for m in ("base", "new", "H")]
        _b2n_row(table, sweep, method, shots, AVERAGE, (None, None),
                 (b, n, harmonic(b, n) if complete else None), published)
    return table, plot


def _b2n_row(table: Table, sweep: Sweep, method: str, shots: int, dataset: str,
             stats: Tuple[Optional[Stat], Optional[Stat]], means: Tuple[Optional[float], ...],
             published: List[Optional[Number]]) -> None:
    cells = [s.text() if s is not None else _fmt(m) for s, m in zip(stats, means[:2])] + [_fmt(means[2])]
    status = {p.status for p in published if p is not None}
    pub = " / ".join(_fmt(p.value if p else None) for p in published)
    if any(published):
        pub += "" if status == {"published"} else " (as recalled)" if status == {"published (as recalled)"} \
            else " (partly as recalled)"
    table.rows.append([method, dataset, *cells, pub if any(published) else "—",
                       " / ".join(_signed(_diff(m, p)) for m, p in zip(means, published)) if any(published) else "—"])
    for metric, s, m, p in zip(("base", "new", "H"), (*stats, None), means, published):
        table.csv.append(_csv_row(sweep, method, shots, dataset, metric, s, m, p))


def transfer_table(sweep: Sweep) -> Tuple[Table, dict]:
    """Rows (method, source); columns the source, each target and the average over the targets."""
    targets = _unique(d for r in sweep.records for (d, s) in r.evaluations if s == "all" and d != r.dataset)
    compare_average = sweep.kind == "cross_dataset" and {canonical(d) for d in targets} == set(ELEVEN[1:])
    title = "Cross-dataset transfer" if sweep.kind == "cross_dataset" else "Domain generalization"
    table = Table(f"{title}: test accuracy (%)", ["method", "shots", "source", "source acc", *targets,
                                                  "average (targets)"])
    for (method, shots, source), rows in _group(sweep.records, lambda r: (r.method, r.shots, r.dataset)).items():
        cells = {source: stat([r.accuracy for r in rows])}
        cells.update({t: stat([r.get("accuracy", t, "all") for r in rows]) for t in targets})
        means = [cells[t].mean for t in targets if cells[t] is not None]
        average = sum(means) / len(means) if means and len(means) == len(targets) else None
        table.rows.append([method, str(shots), source, *[c.text() if c else "—" for c in cells.values()],
                           _fmt(average)])
        published = {d: _published(sweep.kind, rows, canonical(d), "accuracy") for d in cells}
        published[AVERAGE] = _published(sweep.kind, rows, AVERAGE, "accuracy") if compare_average else None
        if any(published.values()):
            table.rows.append(["↳ " + ", ".join(sorted({p.status for p in published.values() if p})), "", "",
                               *[_fmt(p.value if p else None) for p in published.values()]])
            table.rows.append(["↳ Δ (ours − published)", "", "",
                               *[_signed(_diff(c.mean if c else None, published[d])) for d, c in cells.items()],
                               _signed(_diff(average, published[AVERAGE]))])
        table.csv += [_csv_row(sweep, method, shots, d, "accuracy", c, published=published[d])
                      for d, c in cells.items()]
        table.csv.append(_csv_row(sweep, method, shots, AVERAGE, "accuracy", None, average, published[AVERAGE]))
    return table, {}


def metric_table(sweep: Sweep, metric: str) -> Optional[Table]:
    """The mean over seeds of ``metric`` (of each run's own test, or of the run): rows (method, shots), columns the
    datasets; None when no run has it."""
    title, cell = SUMMARY_METRICS[metric]
    datasets = _unique(r.dataset for r in sweep.records)
    table = Table(title, ["method", "shots", *datasets])
    for (method, shots), rows in _group(sweep.records, lambda r: (r.method, r.shots)).items():
        cells = [stat([r.get(metric) for r in rows if r.dataset == d]) for d in datasets]
        table.rows.append([method, str(shots), *[cell.format(c.mean) if c else "—" for c in cells]])
    return table if any(r.get(metric) is not None for r in sweep.records) else None


TABLES = {"few_shot": few_shot_table, "base_to_new": base_to_new_table, "cross_dataset": transfer_table,
          "domain_generalization": transfer_table}


# ------------------------------------------------------------------------------------------------ plots
def _plot_few_shot(data: Dict[str, Dict[str, Dict[int, Stat]]], out: Path, name: str) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = _unique(d for per in data.values() for d in per if d != AVERAGE)
    paths = []
    for which, panels in (("per_dataset", datasets), ("average", [AVERAGE])):
        if not any(p in per for per in data.values() for p in panels):
            continue
        cols = min(4, len(panels))
        rows = math.ceil(len(panels) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
        for ax, panel in zip(axes.flat, panels):
            for method, per in data.items():
                points = sorted(per.get(panel, {}).items())
                trained = [(k, s) for k, s in points if k > 0]
                if trained:
                    ax.errorbar([k for k, _ in trained], [s.mean for _, s in trained],
                                yerr=[s.std for _, s in trained], marker="o", capsize=3, label=method)
                for k, s in points:
                    if k == 0:  # zero-shot: no training images, a horizontal line
                        ax.axhline(s.mean, linestyle="--", color="grey", label=f"{method} (0 shots)")
            ax.set_xscale("log", base=2)
            shots = sorted({k for per in data.values() for k in per.get(panel, {}) if k > 0})
            ax.set_xticks(shots, [str(k) for k in shots])
            ax.minorticks_off()
            ax.set_title("average over datasets" if panel == AVERAGE else panel)
            ax.set_xlabel("shots per class")
            ax.set_ylabel("accuracy (%)")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{name}-{which}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def _plot_base_to_new(data: Dict[str, Dict[str, Tuple[float, float, float]]], out: Path, name: str) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = _unique(d for per in data.values() for d in per)
    if not datasets:
        return []
    fig, axes = plt.subplots(3, 1, figsize=(max(6, 0.9 * len(datasets) * max(1, len(data))), 9), squeeze=False)
    width = 0.8 / max(1, len(data))
    for ax, (index, metric) in zip(axes.flat, enumerate(("base", "new", "H"))):
        for i, (method, per) in enumerate(data.items()):
            xs = [j + i * width for j, d in enumerate(datasets) if d in per]
            ax.bar(xs, [per[d][index] for d in datasets if d in per], width, label=method)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(datasets))], datasets, rotation=30, ha="right")
        ax.set_ylabel(f"{metric} accuracy (%)" if metric != "H" else "H (%)")
        ax.grid(axis="y", alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    path = out / f"{name}-bars.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


PLOTS = {"few_shot": _plot_few_shot, "base_to_new": _plot_base_to_new}


# ------------------------------------------------------------------------------------------------ the report
@dataclass
class Report:
    markdown: Path
    csvs: List[Path]
    plots: List[Path]
    missing: List[str]
    tables: Dict[str, Table]  # protocol name → its table (and "<name>-tuning" → its tuning table)
    choices: Dict[str, List[Choice]] = field(default_factory=dict)  # protocol name → its tuning choices


def write_report(directory: Path, out: Optional[Path] = None, plots: bool = True) -> Report:
    """Write ``report.md``, ``<protocol>.csv`` and plots into ``out`` (default ``DIR/report``)."""
    directory = Path(directory)
    sweeps, unreadable = collect(directory)
    out = Path(out) if out is not None else directory / "report"
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# Results in {directory}", ""]
    if not sweeps and not unreadable:
        lines.append("No finished runs and no sweep manifest (protocol-*.json) here.")
    elif not list(directory.glob(f"{runs.MANIFEST_PREFIX}*.json")):
        lines += ["Not a sweep folder (no protocol-*.json from `promptclip bench`): every run found is reported, "
                  "grouped by kind, backbone and training classes; runs that never finished cannot be listed.", ""]
    report = Report(out / "report.md", [], [], [], {})
    can_plot = plots and _matplotlib_available()
    for sweep in sweeps:
        chosen, choices, pending = select(sweep.records)
        tabulated = Sweep(sweep.name, sweep.kind, sweep.description, chosen)
        table, plot_data = TABLES[sweep.kind](tabulated)
        report.tables[sweep.name] = table
        models = sorted({f"{r.model} ({r.pretrained or 'random weights'})" for r in sweep.records})
        lines += [f"## {sweep.name} ({sweep.kind.replace('_', ' ')})", ""]
        lines += [sweep.description, ""] if sweep.description else []
        lines += [f"Backbone: {', '.join(models)}. Cells: mean ± std over seeds; {DAGGER} fewer seeds than planned. "
                  "Published numbers are shown only for runs on the published backbone with OpenAI weights; "
                  "\"as recalled\" ones are not yet checked against the papers.", "", table.markdown(), ""]
        csvs = [(out / f"{sweep.name}.csv", table.csv)]
        if choices or pending:
            tuning = tuning_table(sweep, choices)
            report.tables[f"{sweep.name}-tuning"] = tuning
            report.choices[sweep.name] = choices
            lines += ["Grid runs: the tables show the settings chosen per dataset on the validation split (the "
                      "runs' own val images; never the test split).", "", tuning.markdown(), ""]
            csvs.append((out / f"{sweep.name}-tuning.csv", tuning.csv))
        for metric in SUMMARY_METRICS:
            extra = metric_table(tabulated, metric)
            lines += [extra.markdown(), ""] if extra is not None else []
        csvs.append((out / f"{sweep.name}-runs.csv", [row for r in sweep.records for row in r.long()]))
        for path, rows in csvs:
            _write_csv(path, rows)
            report.csvs.append(path)
        if can_plot and sweep.kind in PLOTS:
            paths = PLOTS[sweep.kind](plot_data, out, sweep.name)
            report.plots += paths
            lines += [f"![{p.stem}]({p.name})" for p in paths] + [""]
        missing = sweep.missing() + pending
        report.missing += missing
        planned = len(sweep.records)
        done = sum(r.accuracy is not None for r in sweep.records)
        lines += [f"Runs finished: {done} of {planned}."]
        if missing:
            lines += ["", f"Missing ({len(missing)}), not included in any mean:", ""] + [f"- {m}" for m in missing]
        lines.append("")
    if unreadable:
        report.missing += unreadable
        lines += [f"Unreadable results ({len(unreadable)}), not included:", ""] + [f"- {u}" for u in unreadable] + [""]
    if plots and not can_plot:
        lines.append("Plots skipped: matplotlib is not installed (pip install 'promptclip[plot]').")
        log.warning("Plots skipped: matplotlib is not installed (pip install 'promptclip[plot]').")
    report.markdown.write_text("\n".join(lines) + "\n")
    return report


def _write_csv(path: Path, rows: Sequence[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_unique(k for row in rows for k in row) or ["protocol"])
        writer.writeheader()
        writer.writerows(rows)


def _matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True
