"""Records → tables: one :func:`pivot` of the long values, laid out per protocol kind by a :class:`Layout`.

A layout names the fields that make a row, the field that makes a column and which values belong in the table
(change a column here and every table of that kind follows). The kind's builder adds what the pivot cannot: the
average over datasets (few-shot), H from the seed-averaged base and new (base-to-new; the average row's H from the
averaged B and N, as the papers compute it), the average over the targets (transfer), published numbers beside ours.

A cell is ``mean ± std (n=N)``: the population std (ddof 0, as CoOp's ``parse_test_res.py`` computes it with
``np.std``) over the N seeds of one experiment; ``—`` for the std of a single seed. Marks: ``†`` fewer seeds than
planned, ``‡`` some classes had fewer training images than the shots, ``§`` a command-line override changed the
runs' settings. Every table renders as Markdown, CSV (the table as shown) and LaTeX (booktabs).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .. import runs
from .collect import (RUN, RUN_METRICS, Choice, Record, Stat, Sweep, _group, _unique, canonical, harmonic,
                      seed_stat, stat)
from .published import AVERAGE, ELEVEN, Number, lookup

SHORT = "‡"  # a class had fewer training images than the shots
CHANGED = "§"  # a command-line override changed the runs' settings
STD = "mean ± std over seeds (population std, ddof 0, as CoOp's parse_test_res.py); n = seeds"
#: metrics shown in a table of their own after each protocol's accuracy table: name → (title, cell format; None:
#: mean ± std (n) like accuracy)
SUMMARY_METRICS: Dict[str, Tuple[str, Optional[str]]] = {
    "macro_f1": ("Macro-F1 (%)", None), "parameters": ("Learned parameters", "{:,.0f}"),
    "train_seconds": ("Training time (s)", "{:.1f}")}


# ------------------------------------------------------------------------------------------------ the pivot
KEY_FIELDS = tuple(f.name for f in dataclasses.fields(runs.RunKey))


@dataclass(frozen=True)
class Value:
    """One long row: a record's value of ``metric`` on (``target``, ``classes``); the record's fields, and its key's
    (``dataset``, ``shots``, ...), read through."""

    record: Record
    target: str
    classes: str
    metric: str
    value: Optional[float]

    def __getitem__(self, name: str):
        if name in ("target", "classes", "metric", "value"):
            return getattr(self, name)
        return getattr(self.record.key if name in KEY_FIELDS else self.record, name)


def values(records: Sequence[Record]) -> List[Value]:
    return [Value(r, t, c, m, v) for r in records for (t, c, m), v in r.values.items()]


@dataclass(frozen=True)
class Layout:
    """A table's shape: the fields naming its rows, the field naming its columns, the values it holds."""

    index: Tuple[str, ...]
    column: str
    keep: Callable[[Value], bool]


def _own_test(v: Value) -> bool:
    return (v.target, v.classes) == (v["dataset"], v["subsample"])


LAYOUTS = {
    "few_shot": Layout(("label", "shots"), "dataset", _own_test),
    "base_to_new": Layout(("label", "shots", "dataset"), "classes", lambda v: v.target == v["dataset"]),
    "cross_dataset": Layout(("label", "shots", "dataset"), "target", lambda v: v.classes == "all"),
    "domain_generalization": Layout(("label", "shots", "dataset"), "target", lambda v: v.classes == "all"),
}
RUN_LAYOUT = Layout(("label", "shots"), "dataset", lambda v: (v.target, v.classes) == RUN)

Cells = Dict[tuple, Dict[str, List[Value]]]


def pivot(items: Sequence[Value], layout: Layout, metric: str) -> Cells:
    """``{row: {column: [values]}}`` of ``metric``: columns in order of appearance, rows too but by increasing
    shots within a method."""
    out: Cells = {}
    for v in items:
        if v.metric == metric and layout.keep(v):
            out.setdefault(tuple(v[k] for k in layout.index), {}).setdefault(str(v[layout.column]), []).append(v)
    seen = [{value: i for i, value in enumerate(_unique(row[j] for row in out))} for j in range(len(layout.index))]

    def rank(row: tuple) -> tuple:
        return tuple(x if name == "shots" else seen[j][x] for j, (name, x) in enumerate(zip(layout.index, row)))

    return dict(sorted(out.items(), key=lambda item: rank(item[0])))


def summary(cell: Optional[List[Value]]) -> Optional[Stat]:
    """Mean ± std over the seeds of one cell (None: nothing found; duplicates: no mean)."""
    return seed_stat([(v.record, v.value) for v in cell]) if cell else None


def seedwise(cells: Sequence[Optional[List[Value]]], combine: Callable[[List[float]], float]) -> Optional[Stat]:
    """The spread over seeds of a number made from several cells (an average over datasets, an H): ``combine`` of
    each seed's values, for the seeds every cell has. None when no seed is in every cell."""
    per_seed: List[Dict[int, float]] = [{v["seed"]: v.value for v in cell or [] if v.value is not None}
                                        for cell in cells]
    seeds = sorted(set.intersection(*(set(p) for p in per_seed))) if per_seed else []
    return stat([combine([p[s] for p in per_seed]) for s in seeds])


def _mean(xs: List[float]) -> float:
    return sum(xs) / len(xs)


# ------------------------------------------------------------------------------------------------ tables
@dataclass
class Table:
    title: str
    header: List[str]
    rows: List[List[str]] = field(default_factory=list)
    csv: List[dict] = field(default_factory=list)  # one row per cell: mean, std, seeds, published (long format)
    notes: List[str] = field(default_factory=list)  # the marks used, explained under the table
    index: int = 2  # leading columns that name the row (left-aligned in LaTeX)

    def explain(self, marks: Dict[str, str]) -> None:
        """Add a note for each mark that appears in the table."""
        text = "\n".join(c for row in self.rows for c in row)
        notes = [f"{mark}{': ' if len(mark) > 1 else ' '}{meaning}" for mark, meaning in marks.items() if mark in text]
        self.notes += [n for n in notes if n not in self.notes]

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |",
                 "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        lines += ["", *self.notes] if self.notes else []
        return "\n".join(lines)

    def wide(self) -> List[dict]:
        """The table as shown, one dict per row (its CSV)."""
        return [dict(zip(self.header, row)) for row in self.rows]

    def latex(self) -> str:
        """A booktabs ``table`` with the title as caption and the notes under the rules."""
        spec = "l" * self.index + "r" * (len(self.header) - self.index)
        lines = [r"\begin{table}[t]", r"\centering", r"\small", f"\\caption{{{tex(self.title)}}}",
                 f"\\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(tex(h) for h in self.header) + r" \\",
                 r"\midrule"]
        lines += [" & ".join(tex(c) for c in row + [""] * (len(self.header) - len(row))) + r" \\"
                  for row in self.rows]
        lines += [r"\bottomrule", r"\end{tabular}"]
        lines += [r"\par\smallskip\footnotesize " + r" \\ ".join(tex(n) for n in self.notes)] if self.notes else []
        return "\n".join(lines + [r"\end{table}"]) + "\n"


_TEX = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "—": "--", "–": "--",
        "−": "$-$", "†": r"$^\dagger$", "‡": r"$^\ddagger$", "§": r"\S{}", "Δ": r"$\Delta$",
        "↳": r"$\hookrightarrow$", "→": r"$\rightarrow$"}


def tex(text: str) -> str:
    """``text`` as LaTeX: its special characters escaped, its symbols (± † ‡ § Δ —) as LaTeX symbols."""
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def _fmt(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.2f}"


def _diff(ours: Optional[float], published: Optional[Number]) -> Optional[float]:
    return None if ours is None or published is None else ours - published.value


def _signed(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:+.2f}"


def _round(value: Optional[float]) -> object:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else round(value, 4)


def _mean_of(s: Optional[Stat]) -> Optional[float]:
    return None if s is None or s.duplicates else s.mean


def _csv_row(sweep: Sweep, label: str, shots: int, dataset: str, metric: str, value: Optional[Stat],
             mean: Optional[float] = None, published: Optional[Number] = None, marks: str = "") -> dict:
    mean = _mean_of(value) if value is not None else mean
    return {"protocol": sweep.name, "kind": sweep.kind, "method": label, "shots": shots, "dataset": dataset,
            "metric": metric, "mean": _round(mean),
            "std": _round(value.std if value is not None and value.n > 1 else None),
            "seeds": value.n if value else "", "planned_seeds": value.planned if value else "",
            "duplicate_seeds": " ".join(value.duplicates) if value else "", "marks": marks,
            "published": published.value if published else "", "published_status": published.status if published
            else "", "difference": _round(_diff(mean, published))}


def _text(s: Optional[Stat], marks: str = "") -> str:
    return "—" if s is None else s.text() + marks


def _short(cell: Optional[List[Value]]) -> str:
    return SHORT if any(v.record.shortfall for v in cell or []) else ""


def _published(kind: str, rows: Sequence[Value], dataset: str, metric: str) -> Optional[Number]:
    first = rows[0].record
    return lookup(kind, first.key.method, dataset, metric, first.model, first.pretrained, first.key.shots)


def _rows_of(cells: Dict[str, List[Value]]) -> List[Value]:
    return [v for cell in cells.values() for v in cell]


def _name(label: str, changed: Callable[[str], bool], rows: Sequence[Value]) -> str:
    return label + (CHANGED if rows and changed(rows[0].record.key.method) else "")


def _published_text(number: Optional[Number]) -> str:
    return "—" if number is None else f"{number.value:.2f}{'' if number.confirmed else ' (as recalled)'}"


Changed = Callable[[str], bool]  # whether an override changed a method's runs


def few_shot_table(sweep: Sweep, changed: Changed) -> Tuple[Table, dict]:
    """Rows (method, shots), columns datasets + average; and the plot data {label: {dataset: {shots: Stat}}}."""
    datasets = _unique(r.key.dataset for r in sweep.records)
    compare_average = {canonical(d) for d in datasets} == set(ELEVEN)
    table = Table(f"Test accuracy (%): {STD}", ["method", "shots", *datasets, "average", "published avg", "Δ avg"])
    plot: Dict[str, Dict[str, Dict[int, Stat]]] = {}
    for (label, shots), cells in pivot(values(sweep.records), LAYOUTS["few_shot"], "accuracy").items():
        stats = {d: summary(cells.get(d)) for d in datasets}
        means = [_mean_of(s) for s in stats.values()]
        average = _mean(means) if all(m is not None for m in means) else None
        complete = average is not None and all(s.complete for s in stats.values())
        rows = _rows_of(cells)
        published = _published("few_shot", rows, AVERAGE, "accuracy") if compare_average else None
        table.rows.append([_name(label, changed, rows), str(shots),
                           *[_text(stats[d], _short(cells.get(d))) for d in datasets],
                           _fmt(average) + ("" if average is None or complete else "†"),
                           _published_text(published), _signed(_diff(average, published))])
        table.csv += [_csv_row(sweep, label, shots, d, "accuracy", s, marks=_short(cells.get(d)))
                      for d, s in stats.items()]
        table.csv.append(_csv_row(sweep, label, shots, AVERAGE, "accuracy", None, average, published))
        for d, s in stats.items():
            if s is not None and not s.duplicates:
                plot.setdefault(label, {}).setdefault(d, {})[shots] = s
        if average is not None:
            spread = seedwise([cells.get(d) for d in datasets], _mean)
            plot.setdefault(label, {}).setdefault(AVERAGE, {})[shots] = Stat(
                average, spread.std if spread else 0.0, spread.n if spread else 1, 1)
    return table, plot


def base_to_new_table(sweep: Sweep, changed: Changed) -> Tuple[Table, dict]:
    """Per (method, shots) each dataset once: base (B), new (N), H from the seed-averaged B and N; then the average
    row, its H from the averaged B and N. Plot data: {series: {dataset: {"base"|"new"|"H": Stat}}}."""
    datasets = _unique(r.key.dataset for r in sweep.records)
    compare_average = {canonical(d) for d in datasets} == set(ELEVEN)
    table = Table(f"Base-to-new accuracy (%): base (B), new (N) and H = 2BN/(B+N) from the mean B and N; {STD}",
                  ["method", "shots", "dataset", "base (B)", "new (N)", "H", "published B / N / H", "Δ B / N / H"],
                  index=3)
    plot: Dict[str, Dict[str, Dict[str, Stat]]] = {}
    pivoted = pivot(values(sweep.records), LAYOUTS["base_to_new"], "accuracy")
    several_shots = len({shots for _, shots, _ in pivoted}) > 1
    for (label, shots), rows in _group(pivoted.items(), lambda item: item[0][:2]).items():
        series = f"{label}, {shots} shots" if several_shots else label
        per_dataset = {d: cells for (_, _, d), cells in rows}
        means: Dict[str, Tuple[float, float]] = {}
        for d in (d for d in datasets if d in per_dataset):
            cells = per_dataset[d]
            base, new = summary(cells.get("base")), summary(cells.get("new"))
            b, n = _mean_of(base), _mean_of(new)
            h = harmonic(b, n) if b is not None and n is not None else None
            if h is not None:
                means[d] = (b, n)
                spread = seedwise([cells.get("base"), cells.get("new")], lambda x: harmonic(*x))
                plot.setdefault(series, {})[d] = {"base": base, "new": new,
                                                  "H": Stat(h, spread.std if spread else 0.0,
                                                            spread.n if spread else 1, 1)}
            published = [_published("base_to_new", _rows_of(cells), canonical(d), m) for m in ("base", "new", "H")]
            short = _short(cells.get("base"))
            _b2n_row(table, sweep, _name(label, changed, _rows_of(cells)), label, shots, d,
                     (_text(base, short), _text(new), _fmt(h)), (b, n, h), (base, new), published, short)
        complete = len(means) == len(datasets)
        b = _mean([v[0] for v in means.values()]) if complete else None
        n = _mean([v[1] for v in means.values()]) if complete else None
        h = harmonic(b, n) if complete else None
        first = _rows_of(rows[0][1])
        published = [(_published("base_to_new", first, AVERAGE, m) if compare_average else None)
                     for m in ("base", "new", "H")]
        _b2n_row(table, sweep, _name(label, changed, first), label, shots, AVERAGE,
                 (_fmt(b), _fmt(n), _fmt(h)), (b, n, h), (None, None), published)
        if complete:
            cells = [per_dataset[d] for d in datasets]
            spreads = [seedwise([c.get(k) for c in cells], _mean) for k in ("base", "new")]
            spreads.append(seedwise([c.get(k) for c in cells for k in ("base", "new")],
                                    lambda x: harmonic(_mean(x[0::2]), _mean(x[1::2]))))
            plot.setdefault(series, {})[AVERAGE] = {
                m: Stat(v, s.std if s else 0.0, s.n if s else 1, 1) for m, v, s in zip(("base", "new", "H"),
                                                                                       (b, n, h), spreads)}
    return table, plot


def _b2n_row(table: Table, sweep: Sweep, name: str, label: str, shots: int, dataset: str, cells: Sequence[str],
             means: Sequence[Optional[float]], stats: Sequence[Optional[Stat]], published: List[Optional[Number]],
             short: str = "") -> None:
    status = {p.status for p in published if p is not None}
    pub = " / ".join(_fmt(p.value if p else None) for p in published)
    if any(published):
        pub += "" if status == {"published"} else " (as recalled)" if status == {"published (as recalled)"} \
            else " (partly as recalled)"
    table.rows.append([name, str(shots), dataset, *cells, pub if any(published) else "—",
                       " / ".join(_signed(_diff(m, p)) for m, p in zip(means, published)) if any(published) else "—"])
    for metric, s, m, p in zip(("base", "new", "H"), (*stats, None), means, published):
        table.csv.append(_csv_row(sweep, label, shots, dataset, metric, s, m, p, short if metric == "base" else ""))


def transfer_table(sweep: Sweep, changed: Changed) -> Tuple[Table, dict]:
    """Rows (method, shots, source); columns the source, each target and the average over the targets."""
    pivoted = pivot(values(sweep.records), LAYOUTS[sweep.kind], "accuracy")
    targets = _unique(t for (_, _, source), cells in pivoted.items() for t in cells if t != source)
    compare_average = sweep.kind == "cross_dataset" and {canonical(d) for d in targets} == set(ELEVEN[1:])
    title = "Cross-dataset transfer" if sweep.kind == "cross_dataset" else "Domain generalization"
    table = Table(f"{title}: test accuracy (%), {STD}", ["method", "shots", "source", "source acc", *targets,
                                                        "average (targets)"], index=3)
    for (label, shots, source), cells in pivoted.items():
        stats = {source: summary(cells.get(source)), **{t: summary(cells.get(t)) for t in targets}}
        means = [_mean_of(stats[t]) for t in targets]
        average = _mean(means) if means and all(m is not None for m in means) else None
        rows = _rows_of(cells)
        table.rows.append([_name(label, changed, rows), str(shots), source,
                           _text(stats[source], _short(cells.get(source))),
                           *[_text(stats[t]) for t in targets], _fmt(average)])
        published = {d: _published(sweep.kind, rows, canonical(d), "accuracy") for d in stats}
        published[AVERAGE] = _published(sweep.kind, rows, AVERAGE, "accuracy") if compare_average else None
        if any(published.values()):
            table.rows.append(["↳ " + ", ".join(sorted({p.status for p in published.values() if p})), "", "",
                               *[_fmt(p.value if p else None) for p in published.values()]])
            table.rows.append(["↳ Δ (ours − published)", "", "",
                               *[_signed(_diff(_mean_of(s), published[d])) for d, s in stats.items()],
                               _signed(_diff(average, published[AVERAGE]))])
        table.csv += [_csv_row(sweep, label, shots, d, "accuracy", s, published=published[d]) for d, s in stats.items()]
        table.csv.append(_csv_row(sweep, label, shots, AVERAGE, "accuracy", None, average, published[AVERAGE]))
    return table, {}


TABLES = {"few_shot": few_shot_table, "base_to_new": base_to_new_table, "cross_dataset": transfer_table,
          "domain_generalization": transfer_table}


def metric_table(sweep: Sweep, metric: str, changed: Changed) -> Optional[Table]:
    """``metric`` laid out as the protocol's accuracy table (a run metric: rows (method, shots), columns datasets);
    None when no run has it."""
    title, cell = SUMMARY_METRICS[metric]
    layout = RUN_LAYOUT if metric in RUN_METRICS else LAYOUTS[sweep.kind]
    pivoted = pivot(values(sweep.records), layout, metric)
    if not any(v.value is not None for cells in pivoted.values() for vs in cells.values() for v in vs):
        return None
    columns = _unique(c for cells in pivoted.values() for c in cells)
    if layout.column == "dataset":
        columns = [d for d in _unique(r.key.dataset for r in sweep.records) if d in columns]
    names = {"base": "base (B)", "new": "new (N)"} if layout.column == "classes" else {}
    table = Table(f"{title}: {STD}" if cell is None else f"{title}: mean over seeds", [
        "method", "shots", *(["dataset"] if "dataset" in layout.index else ["source"] if len(layout.index) > 2
                             else []), *[names.get(c, c) for c in columns]], index=len(layout.index))
    for (label, shots, *where), cells in pivoted.items():
        stats = [summary(cells.get(c)) for c in columns]
        table.rows.append([_name(label, changed, _rows_of(cells)), str(shots), *where,
                           *[_text(s, _short(cells.get(c))) if cell is None or s is None or s.duplicates
                             else cell.format(s.mean) for c, s in zip(columns, stats)]])
    return table


def tuning_table(sweep: Sweep, choices: Sequence[Choice]) -> Table:
    """One row per choice: the chosen values, the validation accuracy that chose them, their test accuracy."""
    table = Table(f"Tuning: settings chosen on the validation split; {STD}",
                  ["method", "shots", "dataset", "chosen", "val acc (%)", "test acc (%)", "points"], index=4)
    for c in choices:
        chosen = ", ".join(f"{k}={v}" for k, v in c.grid.items())
        table.rows.append([c.method, str(c.shots), c.dataset, chosen, c.validation.text(),
                           c.test.text() if c.test else "—", str(c.points)])
        table.csv.append({"protocol": sweep.name, "method": c.method, "model": c.model,
                          "pretrained": c.pretrained or "", "dataset": c.dataset, "subsample": c.subsample,
                          "shots": c.shots, "setting": c.setting, **{f"grid.{k}": v for k, v in c.grid.items()},
                          "val_mean": _round(c.validation.mean), "val_std": _round(c.validation.std),
                          "test_mean": _round(c.test.mean if c.test else None),
                          "test_std": _round(c.test.std if c.test else None),
                          "seeds": c.validation.n, "points": c.points})
    return table


# ------------------------------------------------------------------------------------------------ deviations
@dataclass
class Deviations:
    """What differs from the protocol as written: the command-line overrides the manifest records and the
    (dataset, shots) whose classes had fewer training images than the shots."""

    overrides: List[str]  # one line per override, saying what it affects
    scoped: Dict[str, List[str]]  # method → overrides that changed its runs' settings ("": every method)
    shortfalls: List[str]

    def changed(self, method: str) -> bool:
        return bool(self.scoped.get("") or self.scoped.get(method))

    def lines(self) -> List[str]:
        return self.overrides + self.shortfalls


def _changes_results(key: str) -> bool:
    return not (runs.within(key, runs.NOT_IDENTITY) or key == "data.root")


def deviations(sweep: Sweep) -> Deviations:
    from .protocol_files import PROTOCOL_KEYS  # the protocol's own keys (seeds, shots, ...) change the plan, not runs

    lines: List[str] = []
    scoped: Dict[str, List[str]] = {}
    for text in sweep.overrides:
        key = text.split("=", 1)[0].strip()
        method, _, rest = key.rpartition(":") if ":" in key else ("", "", key)
        if not method and rest in PROTOCOL_KEYS:
            lines.append(f"`{text}`: changes the protocol's plan (which runs exist), not a run's settings")
        elif not _changes_results(rest):
            lines.append(f"`{text}`: {'runs of ' + method if method else 'every run'}; does not change results")
        else:
            scoped.setdefault(method, []).append(text)
            lines.append(f"`{text}`: changes the settings of {'the runs of ' + method if method else 'every run'} "
                         f"(rows marked {CHANGED})")
    return Deviations(lines, scoped, shortfall_lines(sweep.records))


def shortfall_lines(records: Sequence[Record]) -> List[str]:
    """Per (dataset, classes, shots): how many of the classes in use had fewer training images than the shots."""
    out = []
    found = [r for r in records if r.shortfall]
    groups = _group(found, lambda r: (r.key.dataset, r.key.subsample, r.key.shots))
    for (dataset, subsample, shots), rows in groups.items():
        classes: Dict[str, int] = {}
        for r in rows:
            for name, count in r.shortfall["classes"].items():
                classes[name] = min(count, classes.get(name, count))
        of = max(int(r.shortfall.get("of", 0) or 0) for r in rows)
        listed = ", ".join(f"{name} ({count})" for name, count in sorted(classes.items())[:8])
        more = f", and {len(classes) - 8} more" if len(classes) > 8 else ""
        which = "" if subsample == "all" else f" ({subsample} classes)"
        out.append(f"{dataset}{which}, {shots} shots: {len(classes)} of {of or '?'} classes have fewer images (all "
                   f"used; cells marked {SHORT}): {listed}{more}")
    return out


MARKS = {"†": "fewer seeds than planned (n shows how many were found)",
         SHORT: "some classes had fewer training images than the shots (all were used); see Deviations",
         CHANGED: "a command-line override changed these runs' settings; see Deviations",
         "duplicate seeds": "two runs of one experiment have the same seed: listed under Problems, not averaged"}
