"""`trilevel submit|logs|stop|jobs`: run a sweep as a Ray Job on a running cluster, and follow it.

`submit` validates the experiment here, uploads the source and starts `trilevel sweep … --address
auto` on the cluster's head (see :mod:`orchestrator.submit` for why and how). The other commands
talk only to the head's job server, so they work from any machine that reaches it; results are read
from MLflow as usual (`trilevel status SWEEP`, `trilevel report SWEEP`). `--address` defaults to
``RAY_API_SERVER_ADDRESS``. Every failure is a one-line message, never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from orchestrator.cli import friendly_errors
from orchestrator.experiment import SCALE_HELP, ExperimentError
from orchestrator.jobs import SubmitError
from orchestrator.tracking import TrackingUnavailable

__all__ = ["address_option", "echo_job_status", "jobs", "logs", "stop", "submit"]

ADDRESS_HELP = "Ray job server of the cluster: the head's dashboard port, e.g. http://127.0.0.1:8265 (port-forwarded)."


def address_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--address`, required, from RAY_API_SERVER_ADDRESS when not given."""
    return click.option(
        "--address", required=True, envvar="RAY_API_SERVER_ADDRESS", show_envvar=True, help=ADDRESS_HELP
    )(command)


# Bad input, unreachable servers and failed jobs become messages (exit 1), never tracebacks.
_friendly_errors = friendly_errors(ExperimentError, TrackingUnavailable, SubmitError)


def _hints(submission_id: str, address: str) -> str:
    return (
        f"Follow:  trilevel logs {submission_id} --address {address} --follow\n"
        f"Status:  trilevel status {submission_id} --address {address}\n"
        f"Stop:    trilevel stop {submission_id} --address {address}"
    )


@click.command()
@click.argument("experiment")
@address_option
@click.option("--scale", default="tiny", show_default=True, help=SCALE_HELP)
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE", help="Override a field.")
@click.option("--name", default=None, help="Sweep name (default: the experiment's name).")
@click.option(
    "--storage",
    default=None,
    help="Where the sweep keeps its state, as the cluster sees it: an absolute path on a volume every node "
    "mounts, or s3://… (required unless the experiment sets an absolute one).",
)
@click.option(
    "--tracking-uri",
    default=None,
    help="MLflow tracking server as the cluster sees it, e.g. http://mlflow:5000.",
)
@click.option("--no-wait", is_flag=True, help="Print the submission id and return; don't follow the logs.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Run the sweep's pre-flight on the cluster (data, weights, storage, MLflow, GPUs) and print its plan; "
    "start nothing.",
)
@click.option(
    "--skip-tracking-check",
    is_flag=True,
    help="Don't check an http(s) tracking URI from here (it may resolve only inside the cluster).",
)
@_friendly_errors
def submit(
    experiment: str,
    address: str,
    scale: str,
    overrides: tuple[str, ...],
    name: str | None,
    storage: str | None,
    tracking_uri: str | None,
    no_wait: bool,
    dry_run: bool,
    skip_tracking_check: bool,
) -> None:
    """Run the sweep of EXPERIMENT (a preset or a YAML file) as a Ray Job on the cluster at --address.

    Prints the submission id. Without --no-wait, follows the job's logs until it ends and exits
    non-zero unless it SUCCEEDED; Ctrl-C stops following, not the job.
    """
    from orchestrator.jobs import mlflow_hint, wait_for_job
    from orchestrator.submit import submit_sweep

    def say(text: str) -> None:
        click.echo(text, nl=False, err=True)

    if dry_run:
        submit_sweep(
            experiment,
            address=address,
            scale=scale,
            overrides=overrides,
            name=name,
            storage=storage,
            tracking_uri=tracking_uri,
            check_tracking=not skip_tracking_check,
            echo=lambda chunk: click.echo(chunk, nl=False),
            dry_run=True,
        )
        click.echo("Pre-flight passed on the cluster; submit again without --dry-run to start.", err=True)
        return
    submission_id = submit_sweep(
        experiment,
        address=address,
        scale=scale,
        overrides=overrides,
        name=name,
        storage=storage,
        tracking_uri=tracking_uri,
        wait=False,
        check_tracking=not skip_tracking_check,
        echo=say,
    )
    click.echo(submission_id)
    click.echo(_hints(submission_id, address), err=True)
    click.echo(mlflow_hint(tracking_uri or _tracking_uri_of(experiment, scale, overrides)), err=True)
    if no_wait:
        return
    try:
        status = wait_for_job(address, submission_id, echo=lambda chunk: click.echo(chunk, nl=False))
    except KeyboardInterrupt:
        click.echo(f"\nStopped following; job {submission_id} goes on (`trilevel stop` ends it).", err=True)
        raise SystemExit(130) from None
    click.echo(f"Job {submission_id} {status}.", err=True)


def _tracking_uri_of(experiment: str, scale: str, overrides: tuple[str, ...]) -> str:
    from orchestrator.experiment import load_experiment

    return load_experiment(experiment, scale, overrides).tracking.uri


def echo_job_status(submission_id: str | None, address: str) -> None:
    """`trilevel status ID --address …`: the job's state on the cluster, and where its sweep's progress is.

    Raises `click.ClickException` (one line, exit 1) for an unknown id or an unreachable server.
    """
    from orchestrator.jobs import SubmitError, describe_job, job_status_or_none

    if submission_id is None:
        raise click.UsageError("With --address, give a submission id (`trilevel jobs --address …` lists them).")
    try:
        job = job_status_or_none(submission_id, address)
    except SubmitError as err:
        raise click.ClickException(str(err)) from None
    if job is None:
        raise click.ClickException(
            f"No job {submission_id!r} on the Ray cluster at {address}; `trilevel jobs --address {address}` lists them."
        )
    click.echo(describe_job(job))
    if job.sweep:
        uri = f" --tracking-uri {job.tracking_uri}" if job.tracking_uri else ""
        click.echo(f"Trials:   trilevel status {job.sweep}{uri}")
    if job.tracking_uri:
        from orchestrator.jobs import mlflow_hint

        click.echo(mlflow_hint(job.tracking_uri))


@click.command()
@click.argument("submission_id")
@address_option
@click.option("--follow", "-f", is_flag=True, help="Keep printing new output until the job ends.")
@_friendly_errors
def logs(submission_id: str, address: str, follow: bool) -> None:
    """The output of job SUBMISSION_ID (the sweep driver's, with its trials' forwarded lines)."""
    from orchestrator.jobs import job_logs

    try:
        for chunk in job_logs(address, submission_id, follow=follow):
            click.echo(chunk, nl=False)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


@click.command()
@click.argument("submission_id")
@address_option
@_friendly_errors
def stop(submission_id: str, address: str) -> None:
    """Stop job SUBMISSION_ID: its driver and trials end; finished trials stay in storage and MLflow."""
    from orchestrator.jobs import job_status, stop_job

    if stop_job(address, submission_id):
        click.echo(f"Stop requested for job {submission_id}.")
    else:
        status = job_status(address, submission_id)
        click.echo(f"Job {submission_id} is not running ({status}); nothing to stop.")


@click.command()
@address_option
@_friendly_errors
def jobs(address: str) -> None:
    """Every job submitted to the cluster at --address, oldest first."""
    from orchestrator.jobs import format_time, list_jobs
    from orchestrator.report.table import to_markdown

    rows = [
        {
            "Job": job.submission_id,
            "Status": job.status,
            "Sweep": job.sweep or "-",
            "Started": format_time(job.start_time),
            "Ended": format_time(job.end_time),
        }
        for job in list_jobs(address)
    ]
    if not rows:
        click.echo(f"No jobs on the Ray cluster at {address}.")
        return
    click.echo(to_markdown(rows), nl=False)
