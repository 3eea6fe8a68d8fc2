"""`trilevel report` and `trilevel status`: what a sweep found, and how far it is, read from MLflow.

Both commands read only MLflow (through :mod:`orchestrator.report`), so they work from any machine
that reaches the tracking server, while the sweep runs or after it. `report` also reads the sweep's
saved experiment (`<storage>/<sweep>/experiment.yaml`) for the display labels of its axis values and
its tracking settings; without it the report still works, with raw axis values. Every failure is a
one-line message (`click.ClickException`), never a traceback.
"""

from __future__ import annotations

import functools
import os
import shlex
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import click

from orchestrator.report.build import REPORT_ARTIFACT_DIR, ReportFiles, build_report, warning_text
from orchestrator.report.rows import TrialRow, baselines, best_row, collect, validation_sets
from orchestrator.report.runs import open_experiment, search_all, sweep_filter, ui_hint
from orchestrator.report.table import MISSING, format_delta, format_path, format_value, to_markdown
from orchestrator.tracking import DEFAULT_TRACKING_URI, STAGE_TAG, SWEEP_TAG, TRIAL_TAG

__all__ = ["DEFAULT_STORAGE", "DEFAULT_TRACKING", "best_trial_lines", "print_report", "report", "status"]

# The same defaults as `trilevel sweep` (orchestrator.experiment: TrackingSpec.uri, Experiment.storage).
DEFAULT_TRACKING = DEFAULT_TRACKING_URI
DEFAULT_STORAGE = "./trilevel-runs"
DEFAULT_MLFLOW_EXPERIMENT = "trilevel"


def _friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Missing sweeps, experiments or servers become one-line messages."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return command(*args, **kwargs)
        except (ValueError, OSError, MlflowException) as err:
            message = err.message if isinstance(err, MlflowException) else str(err)
            raise click.ClickException(message) from None

    return wrapper


def _saved_experiment(sweep: str, storage: str) -> Any | None:
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


def _default_out(sweep: str, storage: str) -> str:
    if "://" in storage:  # the report is written locally first (matplotlib needs a file), then logged to MLflow
        return os.path.join("trilevel-reports", sweep)
    return os.path.join(storage, sweep, "report")


def _report(
    sweep: str, tracking_uri: str, mlflow_experiment: str, labels: Mapping[str, str] | None, out: str
) -> ReportFiles:
    files = build_report(tracking_uri, mlflow_experiment, sweep, labels, out)
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


@_friendly_errors
def print_report(sweep: str, storage: str, tracking_uri: str, mlflow_experiment: str = "trilevel") -> None:
    """Print the sweep's table and the model to use; write its report under `<storage>/<sweep>/report`.

    Every `trilevel sweep/run/resume/demo` ends with it, so each sweep logs its report and plot to MLflow.
    """
    experiment = _saved_experiment(sweep, storage)
    labels = experiment.labels if experiment is not None else None
    _report(sweep, tracking_uri, mlflow_experiment, labels, _default_out(sweep, storage))
    for line in best_trial_lines(collect(tracking_uri, mlflow_experiment, sweep), tracking_uri, sweep):
        click.secho(line, fg="red" if line.startswith("WARNING") else None, bold=line.startswith("WARNING"))


@click.command("report")
@click.argument("sweep")
@click.option(
    "--storage",
    default=DEFAULT_STORAGE,
    show_default=True,
    help="Where the sweep's state lives (for its labels and tracking settings).",
)
@click.option(
    "--tracking-uri", default=None, help=f"MLflow tracking URI [default: the sweep's, else {DEFAULT_TRACKING}]"
)
@click.option(
    "--mlflow-experiment",
    default=None,
    help=f"MLflow experiment [default: the sweep's, else {DEFAULT_MLFLOW_EXPERIMENT}]",
)
@click.option(
    "--out", default=None, help="Directory for report.md/csv and pareto.png [default: <storage>/<sweep>/report]"
)
@_friendly_errors
def report(sweep: str, storage: str, tracking_uri: str | None, mlflow_experiment: str | None, out: str | None) -> None:
    """The paper-style table of SWEEP (Markdown, CSV) and its PSNR-vs-GFLOPs Pareto plot.

    The files are also logged to the sweep's MLflow parent run under report/.
    """
    experiment = _saved_experiment(sweep, storage)
    if experiment is not None:
        tracking_uri = tracking_uri or experiment.tracking.uri
        mlflow_experiment = mlflow_experiment or experiment.tracking.experiment
    _report(
        sweep,
        tracking_uri or DEFAULT_TRACKING,
        mlflow_experiment or DEFAULT_MLFLOW_EXPERIMENT,
        experiment.labels if experiment is not None else None,
        out or _default_out(sweep, storage),
    )


# --- status ------------------------------------------------------------------------------------
def _time(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else MISSING


def sweeps_overview(tracking_uri: str, mlflow_experiment: str) -> list[dict[str, str]]:
    """One row per sweep: name, parent run status, start time, trials finished/tracked (oldest sweep first)."""
    client, experiment_id = open_experiment(tracking_uri, mlflow_experiment)
    parents = search_all(client, experiment_id, sweep_filter(kind="sweep"))
    trials = search_all(client, experiment_id, sweep_filter(kind="trial"))
    per_sweep: dict[str, dict[str, str]] = {}  # sweep → trial id → status (oldest run of a trial id wins)
    for run in trials:
        tags = run.data.tags
        per_sweep.setdefault(tags.get(SWEEP_TAG, ""), {}).setdefault(tags.get(TRIAL_TAG, ""), run.info.status)
    rows, seen = [], set()
    for run in parents:
        name = run.data.tags.get(SWEEP_TAG, "")
        if name in seen:
            continue
        seen.add(name)
        rows.append((name, run.info.status, run.info.start_time))
    rows += [(name, MISSING, None) for name in per_sweep if name not in seen]  # trials without a parent run
    out = []
    for name, state, start in rows:
        statuses = per_sweep.get(name, {}).values()
        finished = sum(s == "FINISHED" for s in statuses)
        out.append({"Sweep": name, "Status": state, "Started": _time(start), "Trials": f"{finished}/{len(statuses)}"})
    return out


def trials_progress(tracking_uri: str, mlflow_experiment: str, sweep: str) -> list[dict[str, str]]:
    """One row per trial of `sweep`: status, path, latest stage (and its status), headline metrics, run id."""
    return _progress(collect(tracking_uri, mlflow_experiment, sweep), tracking_uri, mlflow_experiment, sweep)


def _progress(
    trial_rows: list[TrialRow], tracking_uri: str, mlflow_experiment: str, sweep: str
) -> list[dict[str, str]]:
    client, experiment_id = open_experiment(tracking_uri, mlflow_experiment)
    latest: dict[str, Any] = {}
    for run in search_all(client, experiment_id, sweep_filter(sweep, "stage")):  # oldest first
        latest[run.data.tags.get(TRIAL_TAG, "")] = run
    sets = validation_sets(trial_rows)
    base = baselines(trial_rows)
    out = []
    for row in trial_rows:
        stage_run = latest.get(row.trial)
        stage = (
            f"{stage_run.data.tags.get(STAGE_TAG, '?')} ({stage_run.info.status})" if stage_run else MISSING
        )
        entry = {"Trial": row.trial, "Status": row.status, "Stage": stage, "Path": format_path(row)}
        entry |= {"Params (M)": format_value(row.params_m), "GFLOPs": format_value(row.gflops)}
        for s in sets:
            entry[f"PSNR {s}"] = format_value(row.psnr.get(s))
            if s in base.bicubic:
                entry[f"Δ vs bicubic {s}"] = format_delta(row.delta(s))
        entry["Run"] = row.run_id
        out.append(entry)
    return out


def best_trial_lines(trial_rows: list[TrialRow], tracking_uri: str, sweep: str) -> list[str]:
    """What `status` says about the trial to use: its numbers beside bicubic and a ready-to-paste upscale command."""
    best = best_row(trial_rows)
    if best is None:
        return [f"No finished trial with PSNR yet; once there is one: trilevel upscale --model best:{sweep} …"]
    first = validation_sets([best])[0]
    numbers = f"PSNR {first} {best.psnr[first]:.2f} dB"
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


@click.command("status")
@click.argument("sweep", required=False)
@click.option("--tracking-uri", default=DEFAULT_TRACKING, show_default=True, help="MLflow tracking URI.")
@click.option("--mlflow-experiment", default=DEFAULT_MLFLOW_EXPERIMENT, show_default=True, help="MLflow experiment.")
@click.option(
    "--address",
    default=None,
    envvar="RAY_API_SERVER_ADDRESS",
    help="Ray job server (http://HEAD:8265): SWEEP is then a submission id from `trilevel submit`.",
)
@_friendly_errors
def status(sweep: str | None, tracking_uri: str, mlflow_experiment: str, address: str | None) -> None:
    """Without SWEEP: every tracked sweep. With SWEEP: its trials (stage, headline metrics beside bicubic, run id)
    and the `trilevel upscale` command for the best one."""
    if address is not None:
        from orchestrator.cli_submit import echo_job_status

        if sweep is None:
            raise click.ClickException("with --address, give the submission id printed by `trilevel submit`")
        echo_job_status(sweep, address)
        return
    if sweep is None:
        rows = sweeps_overview(tracking_uri, mlflow_experiment)
        if not rows:
            click.echo(f"No sweeps tracked in experiment {mlflow_experiment!r} at {tracking_uri}.")
            return
        click.echo(to_markdown(rows), nl=False)
        return
    trial_rows = collect(tracking_uri, mlflow_experiment, sweep)
    rows = _progress(trial_rows, tracking_uri, mlflow_experiment, sweep)
    finished = sum(row["Status"] == "FINISHED" for row in rows)
    click.echo(f"Sweep {sweep}: {finished}/{len(rows)} trials finished\n")
    click.echo(to_markdown(rows))
    bicubic = baselines(trial_rows).bicubic
    if bicubic:
        click.echo("Bicubic: " + ", ".join(f"PSNR {s} {v:.2f} dB" for s, v in bicubic.items()) + "\n")
    for line in best_trial_lines(trial_rows, tracking_uri, sweep):
        if line.startswith("WARNING"):
            click.secho(line, err=True, fg="red", bold=True)
        else:
            click.echo(line)
    _, experiment_id = open_experiment(tracking_uri, mlflow_experiment)
    click.echo(ui_hint(tracking_uri, experiment_id))
