"""A sweep's report, printed: the table, its files and the trial to use.

`trilevel report` prints it, `trilevel status` ends with the best-trial lines, and every
`trilevel run|sweep|resume|demo` ends with `print_report`, so each sweep logs its report and plot to
MLflow. These commands live in different modules that must not import each other, so what they share
is here. The report itself (reading MLflow, the table, the plot) is :mod:`orchestrator.report`; this
module only prints it. It imports no command module.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from typing import Any

import click

from orchestrator.cli.common import DEFAULT_MLFLOW_EXPERIMENT, DEFAULT_TRACKING, friendly_errors
from orchestrator.report.build import REPORT_ARTIFACT_DIR, ReportFiles, build_report, warning_text
from orchestrator.report.rows import TrialRow, best_row, collect, scored_test_sets
from orchestrator.report.table import to_markdown

__all__ = ["best_trial_lines", "echo_report", "print_report", "report_dir", "saved_experiment", "sweep_id_of"]


def saved_experiment(sweep: str, storage: str) -> Any | None:
    """The experiment the sweep was started with, or None (no such sweep under `storage`, unreadable).

    A local storage without the sweep's file is answered without importing `orchestrator.sweep` (Ray, torch).
    """
    saved = os.path.join(storage, sweep, "experiment.yaml")
    if "://" not in storage and not os.path.isfile(saved):
        click.echo(f"Note: no saved experiment {saved}; reporting raw axis values.", err=True)
        return None
    try:
        from orchestrator.sweep import load_sweep_experiment

        return load_sweep_experiment(sweep, storage)
    except Exception as err:  # any failure only costs the labels
        click.echo(f"Note: {err}; reporting raw axis values.", err=True)
        return None


def report_dir(sweep: str, storage: str) -> str:
    """Where a sweep's report files go unless told: beside its runs, or locally for remote storage."""
    if "://" in storage:  # the report is written locally first (matplotlib needs a file), then logged to MLflow
        return os.path.join("trilevel-reports", sweep)
    return os.path.join(storage, sweep, "report")


def echo_report(
    sweep: str,
    tracking_uri: str,
    mlflow_experiment: str,
    labels: Mapping[str, str] | None,
    out: str,
    sweep_id: str | None = None,
) -> ReportFiles:
    """Build the sweep's report into `out`, log it to the sweep's MLflow run, and print its table and files."""
    files = build_report(tracking_uri, mlflow_experiment, sweep, labels, out, sweep_id)
    if files.seeds:  # arms over seeds (n, mean ± std) and the paper's directions, then every trial
        click.echo(files.seeds)
    click.echo(to_markdown(files.table))
    if files.paper:
        click.echo(f"Paper columns: {files.paper} of the supplementary, the row of the same method.")
    if files.warnings:
        click.secho(warning_text(files.warnings), err=True, fg="red", bold=True)
    click.echo(f"CSV:      {files.csv}")
    click.echo(f"Plot:     {files.png}")
    click.echo(f"Markdown: {files.markdown}")
    if files.parent_run_id:
        click.echo(f"Logged to MLflow run {files.parent_run_id} under {REPORT_ARTIFACT_DIR}/")
    if files.ui:
        click.echo(files.ui)
    else:
        click.echo(f"Sweep {sweep} has no parent run in MLflow: the report was not logged there.", err=True)
    return files


@friendly_errors
def print_report(
    sweep: str, storage: str, tracking_uri: str, mlflow_experiment: str = DEFAULT_MLFLOW_EXPERIMENT
) -> None:
    """Print the sweep's table and the model to use; write its report under `<storage>/<sweep>/report`.

    Every `trilevel sweep/run/resume/demo` ends with it, so each sweep logs its report and plot to MLflow.
    """
    experiment = saved_experiment(sweep, storage)
    labels = experiment.labels if experiment is not None else None
    identity = sweep_id_of(storage, sweep)
    echo_report(sweep, tracking_uri, mlflow_experiment, labels, report_dir(sweep, storage), identity)
    for line in best_trial_lines(collect(tracking_uri, mlflow_experiment, sweep, identity), tracking_uri, sweep):
        click.secho(line, fg="red" if line.startswith("WARNING") else None, bold=line.startswith("WARNING"))


def sweep_id_of(storage: str, sweep: str) -> str | None:
    """The id kept with the sweep on `storage` (its MLflow runs carry it), None for a sweep without one."""
    from orchestrator.sweep_lease import read_sweep_id  # pyarrow only: no Ray, no torch

    return read_sweep_id(storage, sweep)


def best_trial_lines(trial_rows: list[TrialRow], tracking_uri: str, sweep: str) -> list[str]:
    """What `status` says about the trial to use: its numbers beside bicubic and a ready-to-paste upscale command."""
    try:
        best = best_row(trial_rows)
    except ValueError as err:  # finished trials scored on different test sets, some without validation PSNR
        return [f"No best trial: sweep {sweep!r}: {err}."]
    if best is None:
        return [f"No finished trial with PSNR yet; once there is one: trilevel upscale --model best:{sweep} …"]
    first = scored_test_sets([best])[0]
    numbers = f"test PSNR {first} {best.psnr[first]:.2f} dB"
    delta = best.delta(first)
    if delta is not None:
        numbers += f", bicubic {best.psnr_bicubic[first]:.2f} dB ({delta:+.2f})"
    if best.gflops is not None:
        numbers += f", {best.gflops:.2f} GFLOPs"
    uri = "" if tracking_uri == DEFAULT_TRACKING else f" --tracking-uri {shlex.quote(tracking_uri)}"
    lines = [
        f"Best trial: {best.trial} ({numbers})",
        "Upscale your images with it (replace photos/ with yours):",
        f"  trilevel upscale --model {best.run_id}{uri} photos/ --out sr/",
    ]
    if delta is not None and delta <= 0:
        lines.append(f"WARNING: even the best trial does not beat bicubic on {first} ({delta:+.2f} dB).")
    return lines
