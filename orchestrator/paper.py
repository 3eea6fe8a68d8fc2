"""The paper's published numbers (supplementary Tables 5-9), so a paper-scale sweep reads as a comparison.

Why a table of constants: "reproduce Table 8" only means something beside Table 8. The report puts
these numbers in ``Paper …`` columns next to ours, for the row of the same method (the same value of
the sweep's axis), and only when our trials were scored on the paper's validation sets: a tiny-scale
sweep on the demo photographs is not comparable, and is not compared.

Which table a sweep reproduces is read from what it varies: the combiner (Table 7), λ_order
(Table 8), the search levels (Table 9); a sweep without axes is matched by its preset's name
(``psnr-b``: Table 5, ``aim``: Table 6). Paths are written as in the paper (``*``: fixed, not searched).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["PAPER_TABLES", "PaperRow", "PaperTable", "paper_row", "paper_table"]


@dataclass(frozen=True)
class PaperRow:
    """One published row: method, derived path, params (M), GFLOPs (256×256 LR) and PSNR per validation set."""

    method: str
    path: str
    params_m: float
    gflops: float
    psnr: Mapping[str, float]


@dataclass(frozen=True)
class PaperTable:
    """A published table: its rows keyed by the sweep axis' value (``""`` for a sweep without axes)."""

    name: str  # "Table 8"
    axis: str | None  # the dotted experiment field the sweep varies; None: matched by preset name
    rows: Mapping[str, PaperRow]
    presets: tuple[str, ...] = ()  # sweep names that reproduce it without an axis
    teacher: PaperRow | None = None  # the published row of the model the sweep distils from
    sets: tuple[str, ...] = field(default=("Set5", "Set14"))


_ESRGAN_PSNR = PaperRow("ESRGAN", "–", 16.70, 1176.6, {"Set5": 32.70, "Set14": 28.95})  # Table 5, RRDB (PSNR)

PAPER_TABLES: dict[str, PaperTable] = {
    "table5": PaperTable(
        "Table 5",
        None,
        {"": PaperRow("TrilevelNAS-B", "[0,0,0,0,0,1]", 0.51, 33.3, {"Set5": 31.62, "Set14": 28.26})},
        presets=("psnr-b",),
        teacher=_ESRGAN_PSNR,
    ),
    "table6": PaperTable(
        "Table 6",
        None,
        {"": PaperRow("TrilevelNAS-B", "[0,0,1,1]", 0.27, 17.33, {"DIV2K-val": 28.52})},
        presets=("aim",),
        sets=("DIV2K-val",),
    ),
    "table7": PaperTable(
        "Table 7",
        "search_space.combiner",
        {
            "softmax": PaperRow("Softmax", "[0,0,1,0,1]", 0.47, 154.80, {"Set5": 30.34, "Set14": 27.28}),
            "sparsestmax": PaperRow("Sparsestmax", "[0,0,0,1,0,1]", 0.34, 117.39, {"Set5": 30.34, "Set14": 27.29}),
        },
    ),
    "table8": PaperTable(
        "Table 8",
        "stages.search.lambda_order",
        {
            "0": PaperRow("λ = 0", "[0,0,1,0,0,0,1]", 0.58, 184.08, {"Set5": 30.32, "Set14": 27.21}),
            "0.01": PaperRow("λ = 0.01", "[0,0,1,0,0,1]", 0.52, 169.69, {"Set5": 30.34, "Set14": 27.20}),
            "0.1": PaperRow("λ = 0.1", "[0,0,0,1,0,1]", 0.34, 117.39, {"Set5": 30.34, "Set14": 27.29}),
        },
    ),
    "table9": PaperTable(
        "Table 9",
        "search_space.levels",
        {
            "bilevel": PaperRow("BilevelNAS", "[0,0,0,0,0,1,1]*", 0.52, 115.39, {"Set5": 30.32, "Set14": 27.22}),
            "trilevel": PaperRow("TrilevelNAS", "[0,0,0,1,0,1]", 0.34, 117.39, {"Set5": 30.34, "Set14": 27.29}),
        },
    ),
}


def _same_value(ours: str, published: str) -> bool:
    """Axis values match as numbers when both are numbers ("0.0" is λ = 0), else as text."""
    try:
        return math.isclose(float(ours), float(published), rel_tol=0, abs_tol=1e-12)
    except ValueError:
        return ours == published


def paper_table(sweep: str, axes: Iterable[Mapping[str, str]], sets: Iterable[str]) -> PaperTable | None:
    """The published table a sweep reproduces, or None.

    `axes` is each trial's axis values, `sets` the validation sets the trials were scored on. A table
    applies when the sweep varies exactly its axis (or, without axes, is its preset) and at least one
    of our sets is one of the paper's.
    """
    axes = list(axes)
    names = {name for trial in axes for name in trial}
    sets = set(sets)
    for table in PAPER_TABLES.values():
        if not sets & set(table.sets):
            continue
        if table.axis is None and not names and sweep in table.presets:
            return table
        if table.axis is not None and names == {table.axis}:
            return table
    return None


def paper_row(table: PaperTable, axes: Mapping[str, str]) -> PaperRow | None:
    """The published row of the trial with these axis values (the only row for a table without an axis)."""
    if table.axis is None:
        return table.rows.get("")
    value = axes.get(table.axis)
    if value is None:
        return None
    return next((row for key, row in table.rows.items() if _same_value(value, key)), None)
