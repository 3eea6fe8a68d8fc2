"""The PSNR-vs-GFLOPs plot of a sweep, its Pareto front highlighted and the baselines drawn as lines.

**Matplotlib without pyplot.** The plot is drawn on a :class:`~matplotlib.figure.Figure` with an
Agg canvas: no global backend switch, no display needed, safe inside a Ray driver. Bicubic (and the
teacher) are horizontal lines, so a network below the bicubic line is seen to be worse than plain
upscaling.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.report.arms import group_arms, has_seeds
from orchestrator.report.rows import TrialRow, baselines, scored_test_sets
from orchestrator.report.statistics import mean_std
from orchestrator.report.table import display_names

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["pareto_figure", "pareto_front", "pareto_png"]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points (lower x and higher y are better), by increasing x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _arm_points(
    rows: Sequence[TrialRow], set_name: str | None, labels: Mapping[str, str] | None
) -> list[tuple[float, float, float, float, str]]:
    """Per arm with numbers: (mean GFLOPs, mean PSNR, std GFLOPs, std PSNR, name); std 0 for one seed."""
    out = []
    for arm in group_arms(rows, labels):
        gflops = list(arm.values(lambda r: r.gflops).values())
        psnr = list(arm.values(lambda r: r.psnr.get(set_name) if set_name else None).values())
        if gflops and psnr:
            (x, sx), (y, sy) = mean_std(gflops), mean_std(psnr)
            out.append((x, y, sx or 0.0, sy or 0.0, f"{arm.name} (n={arm.n})"))
    return out


def pareto_png(
    rows: Sequence[TrialRow],
    out_path: str | os.PathLike[str],
    set_name: str | None = None,
    *,
    labels: Mapping[str, str] | None = None,
) -> Path:
    """Write :func:`pareto_figure` as a PNG (always, with a message when nothing can be plotted yet); its path."""
    fig = pareto_figure(rows, set_name, labels=labels)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def pareto_figure(
    rows: Sequence[TrialRow], set_name: str | None = None, *, labels: Mapping[str, str] | None = None
) -> Figure:
    """Test PSNR on one test set (the first, or `set_name`) against GFLOPs, Pareto front highlighted.

    One labelled point per trial that has both numbers; the others are counted in the title. A sweep run
    at several seeds gets one point per arm instead, at its seeds' mean with ± one std as error bars. Bicubic
    (and the teacher, when there is one) are horizontal lines at their PSNR: a network below the
    bicubic line is worse than plain upscaling.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter

    rows = list(rows)
    sets = scored_test_sets(rows)
    set_name = set_name or (sets[0] if sets else None)
    base = baselines(rows)
    plotted = [r for r in rows if r.gflops is not None and set_name is not None and set_name in r.psnr]
    if has_seeds(rows):  # one point per arm at its seeds' mean, ± one sample std as error bars
        spread = _arm_points(rows, set_name, labels)
        points = [(x, y) for x, y, _, _, _ in spread]
        point_names = [name for _, _, _, _, name in spread]
    else:
        spread = []
        names = display_names(rows, labels)
        points = [(r.gflops, r.psnr[set_name]) for r in plotted]
        point_names = [names.get(r.trial, r.trial) for r in plotted]

    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_xlabel("GFLOPs")
    ax.set_ylabel(f"test PSNR {set_name} (dB)" if set_name else "test PSNR (dB)")
    ax.grid(True, alpha=0.3)
    if points:
        front = pareto_front(points)
        others = [i for i in range(len(points)) if i not in front]
        if others:
            xs, ys = [points[i][0] for i in others], [points[i][1] for i in others]
            ax.scatter(xs, ys, color="tab:gray", zorder=2, label="dominated")
        ax.plot(
            [points[i][0] for i in front],
            [points[i][1] for i in front],
            color="tab:red",
            marker="o",
            drawstyle="steps-post",
            zorder=3,
            label="Pareto front",
        )
        for x, y, xerr, yerr, _ in spread:
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="none", ecolor="tab:gray", capsize=3, zorder=2)
        for (x, y), name in zip(points, point_names, strict=True):
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        references = [
            (value, style, f"{what} {value:.2f} dB")
            for what, value, style in (
                ("bicubic", base.bicubic.get(set_name), {"color": "tab:blue", "linestyle": "--"}),
                ("teacher", base.teacher.get(set_name), {"color": "tab:green", "linestyle": ":"}),
            )
            if value is not None
        ]
        for value, style, label in references:  # PSNR lines: the baselines cost (next to) nothing in GFLOPs
            ax.axhline(value, linewidth=1.2, zorder=1, label=label, **style)
        ax.margins(0.15)
        if len(points) == 1:  # one point: give the axes some room instead of a zero-width range
            x, y = points[0]
            ax.set_xlim(x * 0.9 - 1, x * 1.1 + 1)
            ys = [y] + [value for value, _, _ in references]
            ax.set_ylim(min(ys) - 0.5, max(ys) + 0.5)
        ax.yaxis.set_major_formatter(FormatStrFormatter("%.2f"))
        ax.legend(loc="best", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no trial has PSNR and GFLOPs yet", ha="center", va="center", transform=ax.transAxes)
    missing = len(rows) - len(plotted)  # trials (not arms) without numbers
    title = "PSNR vs GFLOPs"
    if missing:
        title += f" ({missing} trial{'s' if missing != 1 else ''} without PSNR not shown)"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
