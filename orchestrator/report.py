"""Paper-style tables and a Pareto plot of a sweep, read back from MLflow.

Why it looks like this:

* **MLflow is the source of truth.** A sweep's trials may have run on another machine, and Ray
  Tune's own state is not meant to be read back; MLflow holds each trial's tags (axis values,
  derived path) and final metrics (``params_m``, ``gflops``, ``psnr/<set>``). So the report only
  needs a tracking URI, an experiment name and the sweep name, and it queries by our
  ``trilevel.*`` tags through an explicit :class:`mlflow.MlflowClient` (no global MLflow state).
* **The paper's layout.** Tables 7, 8 and 9 of the supplementary have the same columns: the
  method (or λ), the derived path, Params (M), GFLOPs and PSNR per validation set, numbers with
  two decimals, paths written ``[0,0,0,1,0,1]`` (``*`` when the path was fixed, not searched).
  :func:`table` builds exactly those columns so a finished sweep reads like the paper; a sweep that
  is not finished gets a ``Status`` column and ``–`` where a number is missing.
* **Plain data between steps.** :func:`collect` → :class:`TrialRow` → :func:`table` (a list of
  dicts) → :func:`to_markdown` / :func:`to_csv`, so each step is testable and usable alone;
  :func:`build_report` writes the three files and attaches them to the sweep's parent run, where
  the MLflow UI shows them beside the runs they summarise.
* **Baselines on every row.** Each trial's evaluation also scored bicubic ×scale (and the teacher it
  distilled from, if any) on the same images (``psnr_bicubic/<set>``, ``psnr_teacher/<set>``), so the
  table opens with a ``Bicubic`` (and ``Teacher``) row, every network gets a ``Δ vs bicubic`` column, the
  plot draws the baseline, and a network that does not beat bicubic is called out, never hidden.
  A paper-scale sweep of Tables 5-9 also gets the paper's published numbers beside ours
  (:mod:`orchestrator.paper`).
* **Matplotlib without pyplot.** The plot is drawn on a :class:`~matplotlib.figure.Figure` with an
  Agg canvas: no global backend switch, no display needed, safe inside a Ray driver.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.paper import PaperRow, PaperTable, paper_row, paper_table
from orchestrator.tracking import AXIS_TAG_PREFIX, KIND_TAG, PATH_TAG, SWEEP_TAG, TRIAL_TAG, sqlite_path, tag_filter

if TYPE_CHECKING:
    import mlflow.entities
    from matplotlib.figure import Figure
    from mlflow import MlflowClient

__all__ = [
    "BICUBIC",
    "MISSING",
    "TEACHER",
    "Baselines",
    "NoExperiment",
    "ReportFiles",
    "TrialRow",
    "axis_order",
    "baselines",
    "below_bicubic",
    "best_row",
    "build_report",
    "collect",
    "display_names",
    "first_column",
    "format_delta",
    "format_path",
    "format_value",
    "natural_key",
    "open_experiment",
    "pareto_figure",
    "pareto_front",
    "pareto_png",
    "search_all",
    "sort_rows",
    "sweep_filter",
    "table",
    "to_csv",
    "to_markdown",
    "ui_hint",
    "ui_url",
    "validation_sets",
    "warning_text",
]

_log = logging.getLogger(__name__)

MISSING = "–"  # shown where a trial has no value (yet)
LEVELS_PARAM = "search_space.levels"  # a bilevel search keeps `search_space.fixed_path`: the paper marks it "*"
REPORT_ARTIFACT_DIR = "report"
BICUBIC = "Bicubic"  # the first column of the baseline rows
TEACHER = "Teacher"
_BASELINE_TOLERANCE_DB = 0.005  # trials scored on the same images agree on bicubic to float rounding


@dataclass(frozen=True)
class TrialRow:
    """One trial of a sweep as tracked in MLflow; metrics are ``None`` (or absent) until it has them."""

    trial: str
    axes: dict[str, str]
    path: list[int] | None
    params_m: float | None
    gflops: float | None
    psnr: dict[str, float]
    ssim: dict[str, float]
    latency_s: float | None
    status: str
    run_id: str
    path_fixed: bool = False
    start_time: int | None = None  # ms since the epoch
    psnr_bicubic: dict[str, float] = field(default_factory=dict)  # bicubic ×scale on the same images
    ssim_bicubic: dict[str, float] = field(default_factory=dict)
    psnr_teacher: dict[str, float] = field(default_factory=dict)  # the teacher it distilled from, if any

    @property
    def evaluated(self) -> bool:
        """Whether the trial has its final PSNR (the contract: unfinished trials have no ``psnr/*``)."""
        return bool(self.psnr)

    def delta(self, set_name: str) -> float | None:
        """PSNR gain over bicubic on `set_name` (dB; negative: worse than plain upscaling), None if unknown."""
        ours, bicubic = self.psnr.get(set_name), self.psnr_bicubic.get(set_name)
        return None if ours is None or bicubic is None else ours - bicubic


@dataclass(frozen=True)
class Baselines:
    """PSNR per validation set of the references every network is read against."""

    bicubic: dict[str, float] = field(default_factory=dict)
    teacher: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`build_report` wrote, and where it attached it."""

    markdown: Path
    csv: Path
    png: Path
    table: list[dict[str, str]] = field(default_factory=list)
    parent_run_id: str | None = None  # None: the sweep has no parent run, nothing was logged
    warnings: list[str] = field(default_factory=list)  # networks that do not beat bicubic, one line each
    paper: str | None = None  # the published table shown beside ours ("Table 8"), if any
    ui: str | None = None  # the sweep's runs in the MLflow UI (see ui_url)


# --- querying MLflow ---------------------------------------------------------------------------
def sweep_filter(sweep: str | None = None, kind: str | None = None) -> str:
    """A ``search_runs`` filter on our tags, e.g. ``tags.`trilevel.kind` = 'trial' and tags.`trilevel.sweep` = 'x'``."""
    return tag_filter({**({KIND_TAG: kind} if kind else {}), **({SWEEP_TAG: sweep} if sweep is not None else {})})


def search_all(client: MlflowClient, experiment_id: str, filter_string: str) -> list[mlflow.entities.Run]:
    """Every live run matching the filter (all pages), oldest first."""
    runs: list[mlflow.entities.Run] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string, max_results=1000, order_by=["attributes.start_time ASC"], page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _no_runs(sweep: str, mlflow_experiment: str, tracking_uri: str, why: str = "") -> ValueError:
    suffix = f" ({why})" if why else ""
    return ValueError(
        f"no tracked runs for sweep {sweep!r} in experiment {mlflow_experiment!r} at URI {tracking_uri}{suffix}"
    )


class NoExperiment(ValueError):
    """The tracking URI has no database yet, or no (live) experiment of that name."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def open_experiment(tracking_uri: str, mlflow_experiment: str) -> tuple[MlflowClient, str]:
    """A client bound to `tracking_uri` and the experiment's id (raises :class:`NoExperiment`).

    A missing SQLite file is checked first: opening it through MLflow would create an empty database
    (and take seconds to build its schema) just to find nothing in it.
    """
    db = sqlite_path(tracking_uri)
    if db is not None and not os.path.exists(db):
        raise NoExperiment(f"no MLflow database at {tracking_uri} (no file {db})", f"no database file {db}")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(mlflow_experiment)
    if found is None or found.lifecycle_stage != "active":
        raise NoExperiment(
            f"no MLflow experiment {mlflow_experiment!r} at {tracking_uri}", "the MLflow experiment does not exist"
        )
    return client, found.experiment_id


def _experiment_id(tracking_uri: str, mlflow_experiment: str, sweep: str) -> tuple[MlflowClient, str]:
    try:
        return open_experiment(tracking_uri, mlflow_experiment)
    except NoExperiment as err:
        raise _no_runs(sweep, mlflow_experiment, tracking_uri, err.reason) from None


# --- rows --------------------------------------------------------------------------------------
def natural_key(text: str) -> tuple:
    """Sort key: digit runs compare as numbers ("Set5" before "Set14")."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", text))


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _value_key(value: str) -> tuple:
    """Axis values in their natural order: numbers numerically (before words), words naturally."""
    number = _number(value)
    return (0, number, ()) if number is not None else (1, 0.0, natural_key(value))


def _parse_path(tag: str | None) -> list[int] | None:
    if not tag:
        return None
    try:
        path = json.loads(tag)
    except ValueError:
        return None
    if isinstance(path, list) and all(isinstance(p, int) for p in path):
        return path
    return None


def _metric(metrics: Mapping[str, float], key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None or math.isnan(value) else float(value)


def _per_set(metrics: Mapping[str, float], prefix: str) -> dict[str, float]:
    found = {key[len(prefix) :]: value for key, value in metrics.items() if key.startswith(prefix)}
    return {name: float(found[name]) for name in sorted(found, key=natural_key) if not math.isnan(found[name])}


def _row(run: mlflow.entities.Run) -> TrialRow:
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    axes = {key[len(AXIS_TAG_PREFIX) :]: value for key, value in tags.items() if key.startswith(AXIS_TAG_PREFIX)}
    raw_path = tags.get(PATH_TAG)
    return TrialRow(
        trial=tags.get(TRIAL_TAG, run.info.run_name or run.info.run_id),
        axes=axes,
        path=_parse_path(raw_path),
        params_m=_metric(metrics, "params_m"),
        gflops=_metric(metrics, "gflops"),
        psnr=_per_set(metrics, "psnr/"),
        ssim=_per_set(metrics, "ssim/"),
        latency_s=_metric(metrics, "latency_s"),
        status=run.info.status,
        run_id=run.info.run_id,
        path_fixed=params.get(LEVELS_PARAM, axes.get(LEVELS_PARAM)) == "bilevel",
        start_time=run.info.start_time,
        psnr_bicubic=_per_set(metrics, "psnr_bicubic/"),
        ssim_bicubic=_per_set(metrics, "ssim_bicubic/"),
        psnr_teacher=_per_set(metrics, "psnr_teacher/"),
    )


def axis_order(rows: Sequence[TrialRow]) -> list[str]:
    """The sweep's axes in grid order, recovered from the trial ids (``combiner=softmax,lambda_order=0.1``)."""
    axes = sorted({axis for row in rows for axis in row.axes})

    def position(axis: str) -> tuple[int, str]:
        short = axis.rsplit(".", 1)[-1] + "="
        for row in rows:
            parts = [part.split("=", 1)[0] + "=" for part in row.trial.split(",")]
            if short in parts:
                return parts.index(short), axis
        return len(axes), axis

    return sorted(axes, key=position)


def sort_rows(rows: Iterable[TrialRow]) -> list[TrialRow]:
    """Trials in grid order: by each axis value (numbers numerically), then by trial id."""
    rows = list(rows)
    axes = axis_order(rows)

    def key(row: TrialRow) -> tuple:
        missing = (2, 0.0, ())
        return (*(_value_key(row.axes[a]) if a in row.axes else missing for a in axes), natural_key(row.trial))

    return sorted(rows, key=key)


def collect(tracking_uri: str, mlflow_experiment: str, sweep: str) -> list[TrialRow]:
    """The sweep's trials (one row per trial id, the oldest run if a trial was tracked twice), in grid order.

    Raises ValueError when the database, the experiment or the sweep's trial runs do not exist.
    """
    client, experiment_id = _experiment_id(tracking_uri, mlflow_experiment, sweep)
    runs = search_all(client, experiment_id, sweep_filter(sweep, "trial"))
    if not runs:
        raise _no_runs(sweep, mlflow_experiment, tracking_uri)
    rows: dict[str, TrialRow] = {}
    for run in runs:
        row = _row(run)
        if row.trial in rows:
            _log.warning("trial %s of sweep %s is tracked twice; reporting its oldest run", row.trial, sweep)
            continue
        rows[row.trial] = row
    return sort_rows(rows.values())


# --- baselines and the best trial ---------------------------------------------------------------
def _agreed(rows: Sequence[TrialRow], attribute: str, what: str) -> dict[str, float]:
    """Per set, the first trial's value of a baseline; a warning when trials measured different ones."""
    found: dict[str, float] = {}
    for row in rows:
        for name, value in getattr(row, attribute).items():
            first = found.setdefault(name, value)
            if abs(first - value) > _BASELINE_TOLERANCE_DB:
                _log.warning(
                    "trials disagree on %s PSNR of %s (%.3f vs %.3f dB): they were scored on different images; "
                    "the report shows the first",
                    what,
                    name,
                    first,
                    value,
                )
    return {name: found[name] for name in sorted(found, key=natural_key)}


def baselines(rows: Sequence[TrialRow]) -> Baselines:
    """Bicubic (and teacher) PSNR per validation set, as the trials' evaluations measured them."""
    return Baselines(_agreed(rows, "psnr_bicubic", "bicubic"), _agreed(rows, "psnr_teacher", "teacher"))


def best_row(rows: Iterable[TrialRow]) -> TrialRow | None:
    """The finished trial to use: highest PSNR on the first validation set, then fewer GFLOPs.

    PSNRs equal at the table's precision (0.01 dB) are a tie, as a reader of the table sees them.
    None when no trial has finished with a PSNR yet.
    """
    done = [row for row in rows if row.evaluated and row.status == "FINISHED"]
    if not done:
        return None
    first = validation_sets(done)[0]
    scored = [row for row in done if first in row.psnr]

    def key(row: TrialRow) -> tuple[float, float]:
        return (-round(row.psnr[first], 2), row.gflops if row.gflops is not None else math.inf)

    return min(scored, key=key) if scored else None


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


# --- the table ---------------------------------------------------------------------------------
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
    number = _number(value)
    return value if number is None else f"{number:g}"


def _is_lambda(axis: str) -> bool:
    short = axis.rsplit(".", 1)[-1].lower()
    return short.startswith("lambda") or short == "λ"


def validation_sets(rows: Iterable[TrialRow]) -> list[str]:
    """Every validation set any trial was scored on, in natural order (Set5, Set14, …)."""
    return sorted({name for row in rows for name in row.psnr}, key=natural_key)


def first_column(rows: Sequence[TrialRow], labels: Mapping[str, str] | None = None) -> tuple[str, list[str]]:
    """The first column's header and one entry per row: the method label, λ's value or the trial id."""
    labels = labels or {}
    axes = axis_order(rows)
    if len(axes) == 1:
        (axis,) = axes
        values = [row.axes.get(axis) for row in rows]
        if _is_lambda(axis) and all(v is not None and _number(v) is not None for v in values):
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
    per validation set ``PSNR <set>`` and, when the trials measured bicubic, ``Δ vs bicubic <set>``; with
    `paper`, the published ``Paper …`` numbers of the same row; a ``Status`` column is added while some
    trial has no PSNR or did not finish. Baseline rows come first: ``Bicubic``, and ``Teacher`` when the
    sweep distils from one. Numbers have two decimals, missing values are ``–``.
    """
    rows = _label_order(list(rows), labels or {})
    if not rows:
        return []
    header, names = first_column(rows, labels)
    header = axis_title or header
    sets = validation_sets(rows)
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
    return text == MISSING or _number(text.rstrip("*")) is not None


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


# --- the plot ----------------------------------------------------------------------------------
def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points (lower x and higher y are better), by increasing x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


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
    """PSNR on one validation set (the first, or `set_name`) against GFLOPs, Pareto front highlighted.

    One labelled point per trial that has both numbers; the others are counted in the title. Bicubic
    (and the teacher, when there is one) are horizontal lines at their PSNR: a network below the
    bicubic line is worse than plain upscaling.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter

    rows = list(rows)
    sets = validation_sets(rows)
    set_name = set_name or (sets[0] if sets else None)
    names = display_names(rows, labels)
    base = baselines(rows)
    plotted = [r for r in rows if r.gflops is not None and set_name is not None and set_name in r.psnr]
    points = [(r.gflops, r.psnr[set_name]) for r in plotted]

    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_xlabel("GFLOPs")
    ax.set_ylabel(f"PSNR {set_name} (dB)" if set_name else "PSNR (dB)")
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
        for (x, y), row in zip(points, plotted, strict=True):
            ax.annotate(names.get(row.trial, row.trial), (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
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
    missing = len(rows) - len(plotted)
    title = "PSNR vs GFLOPs"
    if missing:
        title += f" ({missing} trial{'s' if missing != 1 else ''} without PSNR not shown)"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


# --- everything at once ------------------------------------------------------------------------
def ui_url(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI page of an experiment's runs (or of one run), opened in the model-training view.

    MLflow 3.17's UI chooses between its GenAI and model-training views with a per-browser toggle that
    starts on GenAI, whatever the experiment's ``mlflow.experimentKind`` tag says; a link with
    ``?workflowType=machine_learning`` opens the runs. A SQLite store has no server: the link is to
    ``mlflow ui``'s default address.
    """
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    page = f"runs/{run_id}" if run_id else "runs"
    return f"{base}/#/experiments/{experiment_id}/{page}?workflowType=machine_learning"


def ui_hint(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """One line for people: where to look in the MLflow UI (and how to start it for a SQLite store)."""
    line = f"MLflow UI: {ui_url(tracking_uri, experiment_id, run_id)}"
    if not tracking_uri.startswith(("http://", "https://")):
        line += f"  (start it with: mlflow ui --backend-store-uri {tracking_uri})"
    return line


def _parent_run(client: MlflowClient, experiment_id: str, sweep: str) -> str | None:
    runs = search_all(client, experiment_id, sweep_filter(sweep, "sweep"))
    return runs[0].info.run_id if runs else None


def warning_text(warnings: Sequence[str]) -> str:
    """The loud line(s) for networks that do not beat bicubic (empty when every network does)."""
    if not warnings:
        return ""
    lines = "\n".join(f"- {line}" for line in warnings)
    return f"WARNING: {len(warnings)} result(s) do not beat bicubic upscaling (worse than doing nothing):\n{lines}"


def _markdown_report(
    sweep: str, rendered: list[dict[str, str]], warnings: Sequence[str], paper: PaperTable | None, png: str
) -> str:
    parts = [f"# Sweep {sweep}\n"]
    if warnings:
        quoted = "\n".join(f"> - {line}" for line in warnings)
        headline = f"> **⚠ {len(warnings)} result(s) do not beat bicubic upscaling** (worse than doing nothing):"
        parts.append(f"{headline}\n{quoted}\n")
    parts.append(to_markdown(rendered))
    notes = ["Δ vs bicubic: PSNR gain (dB) over MATLAB bicubic ×scale of the same LR images, same Y-PSNR convention."]
    if paper is not None:
        notes.append(f"Paper columns: {paper.name} of the supplementary (Wu et al.), the row of the same method.")
    parts.append("\n".join(notes) + "\n")
    parts.append(f"![PSNR vs GFLOPs]({png})\n")
    return "\n".join(parts)


def build_report(
    tracking_uri: str,
    mlflow_experiment: str,
    sweep: str,
    labels: Mapping[str, str] | None,
    out_dir: str | os.PathLike[str],
) -> ReportFiles:
    """Write ``report.md``, ``report.csv`` and ``pareto.png`` to `out_dir` and log them to the sweep's parent run.

    The artifacts go under ``report/`` of the parent run; without a parent run they are only written
    locally (with a warning). Raises ValueError when the sweep has no tracked trial runs.
    """
    rows = collect(tracking_uri, mlflow_experiment, sweep)
    paper = paper_table(sweep, (row.axes for row in rows), validation_sets(rows))
    rendered = table(rows, labels, paper=paper)
    warnings = below_bicubic(rows, labels)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    markdown_path, csv_path, png_path = out / "report.md", out / "report.csv", out / "pareto.png"
    pareto_png(rows, png_path, labels=labels)
    markdown_path.write_text(_markdown_report(sweep, rendered, warnings, paper, png_path.name), encoding="utf-8")
    csv_path.write_text(to_csv(rendered), encoding="utf-8")

    client, experiment_id = _experiment_id(tracking_uri, mlflow_experiment, sweep)
    parent = _parent_run(client, experiment_id, sweep)
    if parent is None:
        _log.warning("sweep %s has no parent run in MLflow; the report is not logged as artifacts", sweep)
    else:
        for path in (markdown_path, csv_path, png_path):
            client.log_artifact(parent, str(path), artifact_path=REPORT_ARTIFACT_DIR)
    paper_name = paper.name if paper else None
    ui = ui_hint(tracking_uri, experiment_id)
    return ReportFiles(markdown_path, csv_path, png_path, rendered, parent, warnings, paper_name, ui)
