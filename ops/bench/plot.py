"""The ratios as a picture: one bar per scenario (median, with the min-max range), its
goal drawn as a marker, on a log scale so that 0.2 and 5 are as far from 1."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display here, none needed
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

from ops.bench.report import Report

MET, MISSED, GOAL = "#4c9a5b", "#c0504d", "#1f1f1f"


def write_png(report: Report, path: Path) -> None:
    results = report.results
    names = [r.scenario.name for r in results]
    medians = [r.ratio.median for r in results]
    below = [r.ratio.median - r.ratio.low for r in results]
    above = [r.ratio.high - r.ratio.median for r in results]
    colors = [MET if r.goal_met else MISSED for r in results]
    xs = list(range(len(results)))

    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(results) + 2), 4.8), dpi=120)
    ax.bar(xs, medians, color=colors, width=0.6, yerr=[below, above], capsize=4)
    for x, r in zip(xs, results, strict=True):
        goal = r.goal_ratio
        ax.hlines(goal, x - 0.4, x + 0.4, colors=GOAL, linewidth=2)
        arrow = "^" if r.scenario.goal.higher_is_better else "v"
        ax.plot([x], [goal], marker=arrow, color=GOAL, markersize=6)
        ax.annotate(
            f"{r.ratio.median:.2f}",
            (x, r.ratio.median),
            textcoords="offset points",
            xytext=(0, 4),
            ha="center",
            fontsize=8,
        )
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda value, _pos: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_xticks(xs, names, rotation=20)
    ax.set_ylabel("treadle / baseline (log)")
    meta = report.meta
    ax.set_title(
        f"treadle bench: ratios (bars: median, min-max) and goals (black)\n"
        f"{meta.get('date', '')} {str(meta.get('commit') or '')[:10]}, "
        f"{meta.get('runs', '?')} run(s); v: at most, ^: at least",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
