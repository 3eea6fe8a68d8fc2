"""The paper's table of a sweep: one dict of display strings per row, as Markdown or CSV.

**The paper's layout.** Tables 7, 8 and 9 of the supplementary have the same columns: the method
(or λ), the derived path, Params (M), GFLOPs and PSNR per test set, numbers with two
decimals, paths written ``[0,0,0,1,0,1]`` (``*`` when the path was fixed, not searched).
:func:`table` builds exactly those columns so a finished sweep reads like the paper; a sweep that
is not finished gets a ``Status`` column and ``–`` where a number is missing. The table opens with
a ``Bicubic`` (and ``Teacher``) row, every network gets a ``Δ vs bicubic`` column, and a network
that does not beat bicubic is called out (:func:`below_bicubic`), never hidden. A paper-scale sweep
of Tables 5-9 also gets the paper's published numbers beside ours (:mod:`orchestrator.paper`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from orchestrator.paper import PaperRow, PaperTable, paper_row
from orchestrator.report.rows import TrialRow, axis_order, baselines, number_or_none, scored_test_sets

__all__ = [
    "BICUBIC",
    "MISSING",
    "TEACHER",
    "below_bicubic",
    "display_names",
    "first_column",
    "format_delta",
    "format_path",
    "format_value",
    "table",
    "to_csv",
    "to_markdown",
]

MISSING = "–"  # shown where a trial has no value (yet)
BICUBIC = "Bicubic"  # the first column of the baseline rows
TEACHER = "Teacher"


def display_names(rows: Sequence[TrialRow], labels: Mapping[str, str] | None = None) -> dict[str, str]:
    """Trial id → how the report names it (``λ=0.1``, a method label, or the trial id)."""
    if not rows:
        return {}
    header, entries = first_column(rows, labels)
    return {r.trial: (f"λ={e}" if header == "λ" else e) for r, e in zip(rows, entries, strict=True)}


def below_bicubic(rows: Sequence[TrialRow], labels: Mapping[str, str] | None = None) -> list[str]:
    """One line per (network, set) where the network does not beat bicubic upscaling; empty when all do."""
    names = display_names(rows, labels)
    out = []
    for row in rows:
        for name in row.psnr:
            delta = row.delta(name)
            if delta is not None and delta <= 0:
                out.append(
                    f"{names.get(row.trial, row.trial)} on {name}: {row.psnr[name]:.2f} dB vs bicubic "
                    f"{row.psnr_bicubic[name]:.2f} dB ({delta:+.2f} dB)"
                )
    return out


def format_value(value: float | None) -> str:
    """Two decimals, as in the paper; ``–`` when missing."""
    return MISSING if value is None else f"{value:.2f}"


def format_delta(value: float | None) -> str:
    """A signed difference with two decimals (``+0.52``, ``-10.99``); ``–`` when missing."""
    return MISSING if value is None else f"{value:+.2f}"


def format_path(row: TrialRow) -> str:
    """``[0,0,0,1,0,1]`` as in the paper, ``*`` appended when the path was fixed (bilevel); ``–`` when missing."""
    if row.path is None:
        return MISSING
    return "[" + ",".join(str(p) for p in row.path) + "]" + ("*" if row.path_fixed else "")


def _fmt_number(value: str) -> str:
    number = number_or_none(value)
    return value if number is None else f"{number:g}"


def _is_lambda(axis: str) -> bool:
    short = axis.rsplit(".", 1)[-1].lower()
    return short.startswith("lambda") or short == "λ"


def first_column(rows: Sequence[TrialRow], labels: Mapping[str, str] | None = None) -> tuple[str, list[str]]:
    """The first column's header and one entry per row: the method label, λ's value or the trial id."""
    labels = labels or {}
    axes = axis_order(rows)
    if len(axes) == 1:
        (axis,) = axes
        values = [row.axes.get(axis) for row in rows]
        if _is_lambda(axis) and all(v is not None and number_or_none(v) is not None for v in values):
            return "λ", [_fmt_number(v) for v in values if v is not None]
        return "Method", [labels.get(v, v) if v is not None else row.trial for v, row in zip(values, rows, strict=True)]
    return "Method", [labels.get(row.trial, row.trial) for row in rows]


def _label_order(rows: list[TrialRow], labels: Mapping[str, str]) -> list[TrialRow]:
    """With one axis whose values all have labels, the labels' order is the display order the author chose."""
    axes = axis_order(rows)
    if len(axes) != 1 or not labels:
        return rows
    order = list(labels)
    values = [row.axes.get(axes[0]) for row in rows]
    if not all(v in labels for v in values):
        return rows
    return sorted(rows, key=lambda row: order.index(row.axes[axes[0]]))


def _paper_cells(published: PaperRow | None, sets: Sequence[str]) -> dict[str, str]:
    cells = {
        "Paper Path": published.path if published else MISSING,
        "Paper Params (M)": format_value(published.params_m) if published else MISSING,
        "Paper GFLOPs": format_value(published.gflops) if published else MISSING,
    }
    return cells | {f"Paper PSNR {s}": format_value(published.psnr.get(s) if published else None) for s in sets}


_Delta = Callable[[str], float | None]  # set name → Δ vs bicubic


def table(
    rows: Sequence[TrialRow],
    labels: Mapping[str, str] | None = None,
    *,
    axis_title: str | None = None,
    paper: PaperTable | None = None,
) -> list[dict[str, str]]:
    """The paper's columns, one dict per row (insertion-ordered keys; every value a display string).

    ``Method`` (or ``λ``; ``axis_title`` overrides the header), ``Path``, ``Params (M)``, ``GFLOPs``, then
    per test set ``PSNR <set>`` and, when the trials measured bicubic, ``Δ vs bicubic <set>``; with
    `paper`, the published ``Paper …`` numbers of the same row; a ``Status`` column is added while some
    trial has no PSNR or did not finish. Baseline rows come first: ``Bicubic``, and ``Teacher`` when the
    sweep distils from one. Numbers have two decimals, missing values are ``–``.
    """
    rows = _label_order(list(rows), labels or {})
    if not rows:
        return []
    header, names = first_column(rows, labels)
    header = axis_title or header
    sets = scored_test_sets(rows)
    base = baselines(rows)
    paper_sets = [s for s in paper.sets if s in sets] if paper else []
    with_status = any(not row.evaluated or row.status != "FINISHED" for row in rows)

    def entry(name: str, cost: tuple[str, str, str], psnr: Mapping[str, float], delta: _Delta) -> dict[str, str]:
        cells = {header: name, "Path": cost[0], "Params (M)": cost[1], "GFLOPs": cost[2]}
        for s in sets:
            cells[f"PSNR {s}"] = format_value(psnr.get(s))
            if s in base.bicubic:
                cells[f"Δ vs bicubic {s}"] = format_delta(delta(s))
        return cells

    out = []
    if base.bicubic:
        out.append(entry(BICUBIC, (MISSING,) * 3, base.bicubic, lambda s: None))
    if base.teacher:

        def teacher_delta(s: str) -> float | None:
            return base.teacher[s] - base.bicubic[s] if s in base.teacher else None

        out.append(entry(TEACHER, (MISSING,) * 3, base.teacher, teacher_delta))
    if paper is not None:  # baseline rows: the paper's teacher beside ours
        for cells in out:
            cells |= _paper_cells(paper.teacher if cells[header] == TEACHER else None, paper_sets)
    for name, row in zip(names, rows, strict=True):
        cost = (format_path(row), format_value(row.params_m), format_value(row.gflops))
        cells = entry(name, cost, row.psnr, row.delta)
        if paper is not None:
            cells |= _paper_cells(paper_row(paper, row.axes), paper_sets)
        out.append(cells)
    if with_status:
        statuses = [""] * (len(out) - len(rows)) + [row.status for row in rows]
        for cells, status in zip(out, statuses, strict=True):
            cells["Status"] = status
    return out


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    return columns


def _numeric_cell(text: str) -> bool:
    return text == MISSING or number_or_none(text.rstrip("*")) is not None


def to_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub-flavoured Markdown table, columns padded so it also reads well in a terminal.

    Numeric columns are right-aligned. An empty table is an empty string.
    """
    if not rows:
        return ""
    columns = _columns(rows)
    cells = [[str(row.get(c, "")).replace("|", "\\|") for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    right = [all(_numeric_cell(r[i]) for r in cells) and i > 0 for i in range(len(columns))]

    def line(values: Sequence[str]) -> str:
        padded = (v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if r else ("-" * (w + 2)) for w, r in zip(widths, right, strict=True))
    return "\n".join([line(columns), rule + "|", *(line(r) for r in cells)]) + "\n"


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV with a header row; missing values (``–``) are empty cells so spreadsheets read numbers."""
    if not rows:
        return ""
    columns = _columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c, "") == MISSING else row.get(c, "") for c in columns])
    return buffer.getvalue()
