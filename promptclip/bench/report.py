"""``promptclip report DIR``: tables and plots of a sweep folder, with every number traceable to its runs.

The work is split: :mod:`.collect` reads the runs into records (what each run is, what it measured, what went
wrong), :mod:`.tables` pivots them into one table layout per protocol kind, :mod:`.plots` draws them; this module
puts them together and writes the files.

Means are over seeds of one experiment only: runs whose identities (``identity.json``) are equal but for the seed.
Runs that differ in anything else are rows of their own, named by what differs (``coop [train.epochs=60]``); two
runs of one experiment with the same seed are a problem listed in the report, never averaged. A sweep with a
``grid`` is first reduced to the settings chosen per dataset on the validation split (:func:`.collect.select`).

Outputs in ``out`` (default ``DIR/report``): ``report.md``; per protocol ``<protocol>.csv`` (one row per table
cell: mean, std, seeds, published, difference) and ``<protocol>-runs.csv`` (every value of every run: the long
table the tables are pivots of); per table ``<protocol>-table-<what>.{md,csv,tex}`` (the table as shown, as
Markdown, CSV and booktabs LaTeX, ready to paste); and PNG plots when matplotlib is installed (extra ``plot``).
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .collect import Choice, Record, Sweep, _group, _unique, collect, experiment, label, select
from .plots import PLOTS
from .tables import MARKS, SUMMARY_METRICS, TABLES, Table, deviations, metric_table, tuning_table

log = logging.getLogger("promptclip")
PLOTS_MISSING = "Plots skipped: matplotlib is not installed (pip install 'promptclip[plot]')."


@dataclass
class Report:
    markdown: Path
    csvs: List[Path]
    plots: List[Path]
    missing: List[str]
    tables: Dict[str, Table]  # "<protocol>" → its main table; "<protocol>-<what>" → its other tables
    choices: Dict[str, List[Choice]] = field(default_factory=dict)  # protocol name → its tuning choices
    latex: List[Path] = field(default_factory=list)  # one booktabs file per table


def duplicate_seeds(records: Sequence[Record]) -> List[str]:
    """One line per experiment that has two finished runs of one seed (they are not averaged)."""
    lines = []
    finished = [r for r in records if r.accuracy is not None]
    for rows in _group(finished, experiment).values():
        for seed, same in _group(rows, lambda r: r.key.seed).items():
            if len(same) > 1:
                first, key = same[0], same[0].key
                ids = ", ".join(r.id for r in same)
                lines.append(f"{first.label or key.method} {key.dataset} {key.subsample} shots {key.shots}: "
                             f"seed {seed} appears {len(same)} times with the same settings ({ids}); not averaged: "
                             f"keep one run (delete or move the others) and report again")
    return lines


def _backbone(records: Sequence[Record]) -> str:
    return ", ".join(_unique(f"{r.model} ({r.pretrained + ' weights' if r.pretrained else 'random weights'})"
                             for r in records))


def write_report(directory: Path, out: Optional[Path] = None, plots: bool = True) -> Report:
    """Write ``report.md``, the CSV, Markdown and LaTeX tables and the plots into ``out`` (default ``DIR/report``)."""
    directory = Path(directory)
    sweeps, unreadable, failed = collect(directory)
    out = Path(out) if out is not None else directory / "report"
    out.mkdir(parents=True, exist_ok=True)
    lines = _preamble(directory, sweeps, unreadable, failed)
    report = Report(out / "report.md", [], [], [], {})
    can_plot = plots and _matplotlib_available()
    for sweep in sweeps:
        lines += _sweep_section(sweep, out, report, can_plot)
    for heading, problems in (("Failed runs", failed), ("Unreadable results", unreadable)):
        if problems:
            report.missing += problems
            lines += [f"{heading} ({len(problems)}), not included:", ""] + [f"- {p}" for p in problems] + [""]
    if plots and not can_plot:
        lines.append(PLOTS_MISSING)
        log.warning(PLOTS_MISSING)
    report.markdown.write_text("\n".join(lines) + "\n")
    return report


def _preamble(directory: Path, sweeps: Sequence[Sweep], unreadable: List[str], failed: List[str]) -> List[str]:
    """The report's title, what kind of folder it reads, and how every cell is computed."""
    lines = [f"# Results in {directory}", ""]
    if not sweeps and not unreadable and not failed:
        lines.append("No finished runs and no sweep manifest (protocol-*.json) here.")
    elif not any(s.manifest for s in sweeps):
        lines += ["Not a sweep folder (no protocol-*.json from `promptclip bench`): every run found is reported, "
                  "grouped by kind, backbone and training classes; runs that never started cannot be listed.", ""]
    return lines + ["Every cell is the mean ± the population std (ddof 0, numpy's `np.std`, as CoOp's "
                    "`parse_test_res.py` reports it) over the seeds of one experiment: runs whose settings are equal "
                    "in everything but the seed. n = the seeds found; the std of a single seed is —. Runs with other "
                    "settings are rows of their own, named by the settings that differ.", ""]


def _sweep_section(sweep: Sweep, out: Path, report: Report, can_plot: bool) -> List[str]:
    """One sweep's section of ``report.md``; writes its table files and plots and records them in ``report``."""
    chosen, choices, pending = select(sweep.records)
    label(chosen)
    tabulated = Sweep(sweep.name, sweep.kind, sweep.description, chosen, sweep.overrides, sweep.manifest)
    changes = deviations(tabulated)
    table, plot_data = TABLES[sweep.kind](tabulated, changes.changed)
    report.tables[sweep.name] = table
    backbone = _backbone(sweep.records)
    lines = [f"## {sweep.name} ({sweep.kind.replace('_', ' ')})", ""]
    lines += [sweep.description, ""] if sweep.description else []
    lines += [f"Backbone: {backbone}. Published numbers are shown only for runs on the published backbone with "
              "OpenAI weights; \"as recalled\" ones are not yet checked against the papers.", ""]
    modes = hparams_line(sweep.records)
    lines += [modes, ""] if modes else []
    tables = {"accuracy": table}
    csvs = [(out / f"{sweep.name}.csv", table.csv)]
    if choices or pending:
        tuning = tuning_table(sweep, choices)
        report.tables[f"{sweep.name}-tuning"] = tuning
        report.choices[sweep.name] = choices
        tables["tuning"] = tuning
        csvs.append((out / f"{sweep.name}-tuning.csv", tuning.csv))
    for metric in SUMMARY_METRICS:
        extra = metric_table(tabulated, metric, changes.changed)
        if extra is not None:
            report.tables[f"{sweep.name}-{metric}"] = tables[metric] = extra
    lines += _table_files(tables, out, sweep.name, report, csvs)
    csvs.append((out / f"{sweep.name}-runs.csv", [row for r in sweep.records for row in r.long()]))
    for path, rows in csvs:
        _write_csv(path, rows)
        report.csvs.append(path)
    lines += _deviation_lines(sweep, changes.lines())
    if can_plot and sweep.kind in PLOTS:
        paths = PLOTS[sweep.kind](plot_data, out, sweep.name, backbone)
        report.plots += paths
        lines += [f"![{p.stem}]({p.name})" for p in paths] + [""]
    return lines + _completion_lines(sweep, chosen, pending, report)


def _table_files(tables: Dict[str, Table], out: Path, name: str, report: Report, csvs: list) -> List[str]:
    """Each table as Markdown for ``report.md`` and as ``<name>-table-<what>.{md,tex}`` files (its wide CSV joins
    ``csvs``)."""
    lines: List[str] = []
    for what, t in tables.items():
        t.explain(MARKS)
        if what == "tuning":
            lines += ["Grid runs: the tables show the settings chosen per dataset on the validation split (the "
                      "runs' own val images; never the test split).", ""]
        lines += [t.markdown(), ""]
        stem = out / f"{name}-table-{what}"
        stem.with_suffix(".md").write_text(t.markdown() + "\n")
        stem.with_suffix(".tex").write_text(t.latex())
        csvs.append((stem.with_suffix(".csv"), t.wide()))
        report.latex.append(stem.with_suffix(".tex"))
    return lines


def _deviation_lines(sweep: Sweep, changes: List[str]) -> List[str]:
    """Where the runs differ from the protocol (or, without a manifest, from one another)."""
    heading = "Deviations from the protocol" if sweep.manifest else "Deviations"
    lines = [f"### {heading}", ""]
    if sweep.manifest:
        lines += ["Command-line overrides the manifest records:" if sweep.overrides else
                  "No command-line overrides: every run has the protocol's settings.", ""]
    return lines + ([f"- {line}" for line in changes] or ["- none"]) + [""]


def _completion_lines(sweep: Sweep, chosen: List[Record], pending: List[str], report: Report) -> List[str]:
    """How many runs finished, and which are missing or duplicated (recorded in ``report.missing``)."""
    problems = sweep.missing() + pending
    duplicates = duplicate_seeds(chosen)
    report.missing += problems + duplicates
    done = sum(r.accuracy is not None for r in sweep.records)
    lines = [f"Runs finished: {done} of {len(sweep.records)}." if sweep.manifest else f"Runs found: {done}."]
    if duplicates:
        lines += ["", f"Problems ({len(duplicates)}): duplicate seeds, not averaged:", ""]
        lines += [f"- {d}" for d in duplicates]
    if problems:
        lines += ["", f"Missing ({len(problems)}), not included in any mean:", ""] + [f"- {m}" for m in problems]
    return lines + [""]


def hparams_line(records) -> str:
    """How the methods on features chose their hyper-parameters (``text.hparams`` of the runs), or ''."""
    modes: Dict[str, set] = {}
    for r in records:
        mode = (r.settings or {}).get("text.hparams")
        if mode:
            modes.setdefault(str(mode), set()).add(r.key.method)
    if not modes:
        return ""
    shown = "; ".join(f"{mode} for {', '.join(sorted(methods))}" for mode, methods in sorted(modes.items()))
    return (f"Hyper-parameters (text.hparams): {shown}. fixed: the published defaults, no validation data read; "
            f"val: each reference's search on the few-shot validation split (min(shots, 4) per class), never on "
            f"test.")


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
