"""Everything at once: a sweep's report written to files and attached to the sweep's parent MLflow run.

:func:`build_report` writes ``report.md`` (the table, the warnings, the plot), ``report.csv`` and
``pareto.png``, and logs them under ``report/`` of the sweep's parent run, where the MLflow UI
shows them beside the runs they summarise.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.paper import PaperTable, paper_table
from orchestrator.report.arms import arm_table, comparison_table, directions, group_arms, has_seeds
from orchestrator.report.pareto import pareto_png
from orchestrator.report.rows import TrialRow, collect, scored_test_sets
from orchestrator.report.runs import search_all, sweep_experiment, sweep_filter, ui_hint
from orchestrator.report.statistics import sign_test_floor
from orchestrator.report.table import below_bicubic, table, to_csv, to_markdown

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["REPORT_ARTIFACT_DIR", "ReportFiles", "build_report", "warning_text"]

_log = logging.getLogger(__name__)

REPORT_ARTIFACT_DIR = "report"


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
    seeds: str = ""  # Markdown: arms over seeds and the paper's directions (empty without --seeds/--random)


def _parent_run(client: MlflowClient, experiment_id: str, sweep: str, sweep_id: str | None) -> str | None:
    runs = search_all(client, experiment_id, sweep_filter(sweep, "sweep", sweep_id))
    return runs[0].info.run_id if runs else None


def warning_text(warnings: Sequence[str]) -> str:
    """The loud line(s) for networks that do not beat bicubic (empty when every network does)."""
    if not warnings:
        return ""
    lines = "\n".join(f"- {line}" for line in warnings)
    return f"WARNING: {len(warnings)} result(s) do not beat bicubic upscaling (worse than doing nothing):\n{lines}"


def seeds_section(rows: Sequence[TrialRow], labels: Mapping[str, str] | None) -> str:
    """Markdown for a sweep run at several seeds: the arms (n, mean ± std) and the paper's directions, paired by seed.

    Empty for a sweep without a `seed` axis.
    """
    if not has_seeds(rows):
        return ""
    arms = group_arms(rows, labels)
    parts = ["## Arms over seeds\n", to_markdown(arm_table(arms, rows))]
    parts.append("Mean ± sample std over the arm's seeds; Paths: the path each seed derived, ×how many seeds.\n")
    comparisons = directions(arms, rows)
    if comparisons:
        n = max(c.n for c in comparisons)
        parts += ["## Directions the paper claims, paired by seed\n", to_markdown(comparison_table(comparisons))]
        parts.append(
            "Arms of one seed share initial weights, patches and Gumbel draws, so each seed gives one paired "
            "difference (a − b: the claim's left arm minus its right). 95% interval: Student's t over the seeds "
            "(n − 1 degrees of freedom). Verdict: *holds* when the interval excludes zero on the claimed side, "
            "*does not hold* when it excludes zero on the other, else *undecided at n = …*. An exact sign test "
            f"cannot go below p = {sign_test_floor(n):.3g} (two-sided) with {n} seeds, whatever the data: more "
            "seeds (`--seeds N`) are what narrows these intervals.\n"
        )
    return "\n".join(parts)


def _markdown_report(
    sweep: str,
    rendered: list[dict[str, str]],
    warnings: Sequence[str],
    paper: PaperTable | None,
    png: str,
    seeds: str = "",
) -> str:
    parts = [f"# Sweep {sweep}\n"]
    if warnings:
        quoted = "\n".join(f"> - {line}" for line in warnings)
        headline = f"> **⚠ {len(warnings)} result(s) do not beat bicubic upscaling** (worse than doing nothing):"
        parts.append(f"{headline}\n{quoted}\n")
    if seeds:
        parts.append(seeds)
        parts.append("## Every trial\n")
    parts.append(to_markdown(rendered))
    notes = [
        "PSNR/SSIM: on the test set(s) (`data.test`), which no stage trains on and no choice uses; the validation "
        "set(s) (`data.val`) chose each network's checkpoint and appear only as per-epoch curves in MLflow.",
        "Δ vs bicubic: PSNR gain (dB) over MATLAB bicubic ×scale of the same LR images, same Y-PSNR convention.",
    ]
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
    sweep_id: str | None = None,
) -> ReportFiles:
    """Write ``report.md``, ``report.csv`` and ``pareto.png`` to `out_dir` and log them to the sweep's parent run.

    The artifacts go under ``report/`` of the parent run; without a parent run they are only written
    locally (with a warning). Raises ValueError when the sweep has no tracked trial runs.
    """
    rows = collect(tracking_uri, mlflow_experiment, sweep, sweep_id)
    paper = paper_table(sweep, (row.axes for row in rows), scored_test_sets(rows))
    rendered = table(rows, labels, paper=paper)
    warnings = below_bicubic(rows, labels)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    markdown_path, csv_path, png_path = out / "report.md", out / "report.csv", out / "pareto.png"
    pareto_png(rows, png_path, labels=labels)
    seeds = seeds_section(rows, labels)
    markdown = _markdown_report(sweep, rendered, warnings, paper, png_path.name, seeds)
    markdown_path.write_text(markdown, encoding="utf-8")
    csv_path.write_text(to_csv(rendered), encoding="utf-8")

    client, experiment_id = sweep_experiment(tracking_uri, mlflow_experiment, sweep)
    parent = _parent_run(client, experiment_id, sweep, sweep_id)
    if parent is None:
        _log.warning("sweep %s has no parent run in MLflow; the report is not logged as artifacts", sweep)
    else:
        for path in (markdown_path, csv_path, png_path):
            client.log_artifact(parent, str(path), artifact_path=REPORT_ARTIFACT_DIR)
    paper_name = paper.name if paper else None
    ui = ui_hint(tracking_uri, experiment_id)
    return ReportFiles(markdown_path, csv_path, png_path, rendered, parent, warnings, paper_name, ui, seeds)
