"""PNG figures of a report, sized for a paper: 3.5 in panels with 8 pt text, error bars (the population std over
seeds) on every series that has more than one seed, series nudged apart so bars at one x do not hide each other,
and the backbone with its weights in every title. Needs matplotlib (extra ``plot``)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List

from .collect import Stat, _unique
from .published import AVERAGE

PANEL = (3.5, 2.6)  # inches: one paper column
FONT = 8  # points, at that size
DPI = 200


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": FONT, "axes.titlesize": FONT, "axes.labelsize": FONT, "legend.fontsize": FONT,
                         "xtick.labelsize": FONT, "ytick.labelsize": FONT, "figure.titlesize": FONT + 1})
    return plt


def _has_spread(stats) -> bool:
    return any(s.n > 1 for s in stats)


LEGEND_ENTRY = 1.9  # inches one legend entry takes at 8 pt
TITLE = 0.45  # inches for a two-line title
LEGEND_ROW = 0.2  # inches per legend row


def _columns(width: float, entries: int) -> int:
    return max(1, min(entries, int(width // LEGEND_ENTRY)))


def _margins(labels: List[str], width: float) -> tuple:
    """Inches above the panels (the title) and below them (the legend, as many rows as its entries need)."""
    return TITLE, 0.15 + LEGEND_ROW * math.ceil(len(labels) / _columns(width, len(labels)))


def _finish(fig, axes, title: str, extra: tuple) -> None:
    """The title above, one legend for all panels below (what the first panel drew), the panels between."""
    handles, labels = axes.flat[0].get_legend_handles_labels()
    width, height = fig.get_size_inches()
    fig.legend(handles, labels, loc="lower center", ncol=_columns(width, len(labels)), frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, extra[1] / height, 1, 1 - extra[0] / height))


def _labels(data: Dict[str, Dict[str, Dict[int, Stat]]], panels: List[str]) -> List[str]:
    """The legend's entries, to size the figure (the panels draw them)."""
    return [m for m, per in data.items() if any(k > 0 for p in panels for k in per.get(p, {}))] + \
        [m for m, per in data.items() if any(0 in per.get(p, {}) for p in panels)]


def few_shot(data: Dict[str, Dict[str, Dict[int, Stat]]], out: Path, name: str, backbone: str) -> List[Path]:
    """Accuracy against shots (log scale): one panel per dataset, and the average over datasets."""
    plt = _pyplot()
    datasets = _unique(d for per in data.values() for d in per if d != AVERAGE)
    paths = []
    for which, panels in (("per_dataset", datasets), ("average", [AVERAGE])):
        if not any(p in per for per in data.values() for p in panels):
            continue
        cols = min(3, len(panels))
        rows = math.ceil(len(panels) / cols)
        labels = _labels(data, panels)
        extra = _margins(labels, PANEL[0] * cols)
        fig, axes = plt.subplots(rows, cols, figsize=(PANEL[0] * cols, PANEL[1] * rows + sum(extra)), squeeze=False)
        trained_series = [m for m, per in data.items() if any(k > 0 for p in panels for k in per.get(p, {}))]
        for ax, panel in zip(axes.flat, panels):
            for method, per in data.items():
                points = sorted(per.get(panel, {}).items())
                trained = [(k, s) for k, s in points if k > 0]
                if trained:
                    i = trained_series.index(method)
                    nudge = 2 ** ((i - (len(trained_series) - 1) / 2) * 0.07)  # apart on the log axis
                    xs, ys = [k * nudge for k, _ in trained], [s.mean for _, s in trained]
                    if _has_spread(s for _, s in trained):
                        ax.errorbar(xs, ys, yerr=[s.std for _, s in trained], marker="o", markersize=3, capsize=2,
                                    linewidth=1, label=method)
                    else:  # one seed: no spread to draw, and the legend says so
                        ax.plot(xs, ys, marker="o", markersize=3, linewidth=1, label=f"{method} (1 seed)")
                for k, s in points:
                    if k == 0:  # zero-shot: no training images, a horizontal line
                        ax.axhline(s.mean, linestyle="--", linewidth=1, color="grey",
                                   label=f"{method} (0 shots{', 1 seed' if s.n == 1 else ''})")
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
        _finish(fig, axes, f"{name}: few-shot accuracy\n{backbone}; error bars: std over seeds", extra)
        path = out / f"{name}-{which}.png"
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
        paths.append(path)
    return paths


def base_to_new(data: Dict[str, Dict[str, Dict[str, Stat]]], out: Path, name: str, backbone: str) -> List[Path]:
    """Grouped bars of base, new and H per dataset and their average, with the std over seeds as error bars."""
    plt = _pyplot()
    groups = _unique(d for per in data.values() for d in per if d != AVERAGE)
    if not groups:
        return []
    groups += [AVERAGE] if any(AVERAGE in per for per in data.values()) else []
    width = 0.8 / max(1, len(data))
    fig_width = max(PANEL[0], 0.25 * len(groups) * max(1, len(data)) + 1.0)
    extra = _margins(list(data), fig_width)
    fig, axes = plt.subplots(3, 1, figsize=(fig_width, 3 * PANEL[1] * 0.8 + 0.9 + sum(extra)), squeeze=False,
                             sharex=True)
    for ax, metric in zip(axes.flat, ("base", "new", "H")):
        for i, (series, per) in enumerate(data.items()):
            present = [j for j, g in enumerate(groups) if g in per]
            stats = [per[groups[j]][metric] for j in present]
            ax.bar([j + (i - (len(data) - 1) / 2) * width for j in present], [s.mean for s in stats], width,
                   yerr=[s.std for s in stats], capsize=2, error_kw={"linewidth": 0.8}, label=series)
        ax.set_ylabel({"base": "base acc. (%)", "new": "new acc. (%)", "H": "H (%)"}[metric])
        ax.grid(axis="y", alpha=0.3)
        if groups[-1] == AVERAGE:  # the average apart from the datasets
            ax.axvline(len(groups) - 1.5, color="grey", linewidth=0.6)
    axes.flat[-1].set_xticks(range(len(groups)), groups, rotation=35, ha="right")
    _finish(fig, axes, f"{name}: base-to-new\n{backbone}; error bars: std over seeds", extra)
    path = out / f"{name}-bars.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return [path]


PLOTS = {"few_shot": few_shot, "base_to_new": base_to_new}
