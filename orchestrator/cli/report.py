"""`trilevel report` and `trilevel status`: what a sweep found, and how far it is, read from MLflow.

Both commands read only MLflow (through :mod:`orchestrator.report`), so they work from any machine
that reaches the tracking server, while the sweep runs or after it. `report` also reads the sweep's
saved experiment (`<storage>/<sweep>/experiment.yaml`) for the display labels of its axis values and
its tracking settings; without it the report still works, with raw axis values (the printing is in
:mod:`orchestrator.cli.sweep_report`, shared with the end of every sweep). With ``--address``, `status`
asks a cluster's job server about a job from `trilevel submit` instead. Every failure is a one-line
message (`click.ClickException`), never a traceback.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

from orchestrator.cli.common import (
    DEFAULT_MLFLOW_EXPERIMENT,
    DEFAULT_STORAGE,
    DEFAULT_TRACKING,
    JOB_SERVER,
    MLFLOW_EXPERIMENT,
    STORAGE,
    TRACKING_URI,
    friendly_errors,
)
from orchestrator.cli.sweep_report import best_trial_lines, echo_report, report_dir, saved_experiment, sweep_id_of
from orchestrator.report.rows import TrialRow, baselines, collect, scored_test_sets
from orchestrator.report.runs import open_experiment, search_all, sweep_filter, ui_hint
from orchestrator.report.table import MISSING, format_delta, format_path, format_value, to_markdown
from orchestrator.tracking import STAGE_TAG, SWEEP_ID_TAG, SWEEP_TAG, TRIAL_TAG
from orchestrator.tracking.tags import STAGE_ORIGIN_TAG

__all__ = ["echo_job_status", "report", "status"]


@click.command("report")
@click.argument("sweep")
@STORAGE.but(
    default=DEFAULT_STORAGE,
    show_default=True,
    help="Where the sweep's state lives (for its labels and tracking settings).",
)
@TRACKING_URI.but(help=f"MLflow tracking URI [default: the sweep's, else {DEFAULT_TRACKING}]")
@MLFLOW_EXPERIMENT.but(
    default=None,
    show_default=False,
    help=f"MLflow experiment [default: the sweep's, else {DEFAULT_MLFLOW_EXPERIMENT}]",
)
@click.option(
    "--out", default=None, help="Directory for report.md/csv and pareto.png [default: <storage>/<sweep>/report]"
)
@friendly_errors
def report(sweep: str, storage: str, tracking_uri: str | None, mlflow_experiment: str | None, out: str | None) -> None:
    """The paper-style table of SWEEP (Markdown, CSV) and its PSNR-vs-GFLOPs Pareto plot.

    The files are also logged to the sweep's MLflow parent run under report/.
    """
    experiment = saved_experiment(sweep, storage)
    if experiment is not None:
        tracking_uri = tracking_uri or experiment.tracking.uri
        mlflow_experiment = mlflow_experiment or experiment.tracking.experiment
    echo_report(
        sweep,
        tracking_uri or DEFAULT_TRACKING,
        mlflow_experiment or DEFAULT_MLFLOW_EXPERIMENT,
        experiment.labels if experiment is not None else None,
        out or report_dir(sweep, storage),
        sweep_id_of(storage, sweep),
    )


# --- status ------------------------------------------------------------------------------------
def _time(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else MISSING


def sweeps_overview(tracking_uri: str, mlflow_experiment: str) -> list[dict[str, str]]:
    """One row per sweep: name, id, storage, parent run status, start time, trials finished/tracked (oldest first).

    A sweep is its name and its id (``trilevel.sweep_id``, kept on its storage): on a shared MLflow server,
    sweeps of one name on other storage are other rows, each counting its own trials; the storage (the
    parent run's ``storage`` param) is what `trilevel status NAME --storage` takes to show one of them.
    """
    client, experiment_id = open_experiment(tracking_uri, mlflow_experiment)
    parents = search_all(client, experiment_id, sweep_filter(kind="sweep"))
    trials = search_all(client, experiment_id, sweep_filter(kind="trial"))

    def sweep_of(run: Any) -> tuple[str, str]:
        return run.data.tags.get(SWEEP_TAG, ""), run.data.tags.get(SWEEP_ID_TAG, "")

    per_sweep: dict[tuple[str, str], dict[str, str]] = {}  # sweep → trial id → status (its oldest run wins)
    for run in trials:
        per_sweep.setdefault(sweep_of(run), {}).setdefault(run.data.tags.get(TRIAL_TAG, ""), run.info.status)
    rows: dict[tuple[str, str], tuple[str, int | None, str]] = {}  # sweep → status, start, storage
    for run in parents:
        rows.setdefault(sweep_of(run), (run.info.status, run.info.start_time, run.data.params.get("storage", "")))
    rows |= {sweep: (MISSING, None, "") for sweep in per_sweep if sweep not in rows}  # trials without a parent run
    out = []
    for (name, identity), (state, start, storage) in rows.items():
        statuses = per_sweep.get((name, identity), {}).values()
        finished = sum(s == "FINISHED" for s in statuses)
        out.append(
            {
                "Sweep": name,
                "Id": identity[:8] or MISSING,
                "Storage": storage or MISSING,
                "Status": state,
                "Started": _time(start),
                "Trials": f"{finished}/{len(statuses)}",
            }
        )
    return out


def _progress(
    trial_rows: list[TrialRow], tracking_uri: str, mlflow_experiment: str, sweep: str, sweep_id: str | None = None
) -> list[dict[str, str]]:
    client, experiment_id = open_experiment(tracking_uri, mlflow_experiment)
    latest: dict[str, Any] = {}
    origins: dict[str, dict[str, str]] = {}  # trial → stage → computed | reused (the stage store)
    for run in search_all(client, experiment_id, sweep_filter(sweep, "stage", sweep_id)):  # oldest first
        latest[run.data.tags.get(TRIAL_TAG, "")] = run
        if origin := run.data.tags.get(STAGE_ORIGIN_TAG):
            origins.setdefault(run.data.tags.get(TRIAL_TAG, ""), {})[run.data.tags.get(STAGE_TAG, "?")] = origin
    sets = scored_test_sets(trial_rows)
    base = baselines(trial_rows)
    out = []
    for row in trial_rows:
        stage_run = latest.get(row.trial)
        stage = f"{stage_run.data.tags.get(STAGE_TAG, '?')} ({stage_run.info.status})" if stage_run else MISSING
        entry = {"Trial": row.trial, "Status": row.status, "Stage": stage, "Path": format_path(row)}
        entry["Stages"] = " ".join(f"{k}={v}" for k, v in origins.get(row.trial, {}).items()) or MISSING
        entry |= {"Params (M)": format_value(row.params_m), "GFLOPs": format_value(row.gflops)}
        for s in sets:
            entry[f"PSNR {s}"] = format_value(row.psnr.get(s))
            if s in base.bicubic:
                entry[f"Δ vs bicubic {s}"] = format_delta(row.delta(s))
        entry["Run"] = row.run_id
        out.append(entry)
    return out


def echo_job_status(submission_id: str | None, address: str) -> None:
    """`trilevel status ID --address …`: the job's state on the cluster, and where its sweep's progress is.

    Raises `click.ClickException` (one line, exit 1) for an unknown id or an unreachable server.
    """
    from orchestrator.jobs import SubmitError, describe_job, job_status_or_none

    if submission_id is None:
        raise click.UsageError("With --address, give a submission id (`trilevel jobs --address …` lists them).")
    try:
        job = job_status_or_none(address, submission_id)
    except SubmitError as err:
        raise click.ClickException(str(err)) from None
    if job is None:
        raise click.ClickException(
            f"No job {submission_id!r} on the Ray cluster at {address}; `trilevel jobs --address {address}` lists them."
        )
    click.echo(describe_job(job))
    uri = f" --tracking-uri {job.tracking_uri}" if job.tracking_uri else ""
    for sweep in (job.sweep or "").split(","):  # a `submit reproduce` job runs several sweeps
        if sweep:
            click.echo(f"Trials:   trilevel status {sweep}{uri}")
    if job.tracking_uri:
        from orchestrator.jobs import mlflow_hint

        click.echo(mlflow_hint(job.tracking_uri))


@click.command("status")
@click.argument("sweep", required=False)
@TRACKING_URI.but(default=DEFAULT_TRACKING, show_default=True, help="MLflow tracking URI.")
@MLFLOW_EXPERIMENT.but(help="MLflow experiment.")
@STORAGE.but(
    help="The sweep's storage: only the runs of the sweep kept there, where sweeps of one name on other "
    "storage are tracked in the same experiment [default: every run of the name; refused if they differ]."
)
@JOB_SERVER.but(
    required=False,
    show_envvar=False,
    help="Ray job server (http://HEAD:8265): SWEEP is then a submission id from `trilevel submit`.",
)
@friendly_errors
def status(
    sweep: str | None, tracking_uri: str, mlflow_experiment: str, storage: str | None, address: str | None
) -> None:
    """Without SWEEP: every tracked sweep (one row per sweep id: sweeps of one name on other storage are
    other rows, each with its storage). With SWEEP: its trials (stage, headline metrics beside bicubic, run id)
    and the `trilevel upscale` command for the best one."""
    if address is not None:
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
    identity = sweep_id_of(storage, sweep) if storage else None
    trial_rows = collect(tracking_uri, mlflow_experiment, sweep, identity)
    rows = _progress(trial_rows, tracking_uri, mlflow_experiment, sweep, identity)
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
