"""`trilevel submit|logs|stop|jobs`: run a sweep as a Ray Job on a running cluster, and follow it.

`submit` validates the experiment here, uploads the source and starts `trilevel sweep … --address
auto` on the cluster's head (see :mod:`orchestrator.submit` for why and how); `submit reproduce` starts
`trilevel reproduce …` there instead (the word `reproduce` in the experiment's place). The other commands
talk only to the head's job server, so they work from any machine that reaches it; results are read
from MLflow as usual (`trilevel status SWEEP`, `trilevel report SWEEP`). `--address` defaults to
``RAY_API_SERVER_ADDRESS``. Every failure is a one-line message, never a traceback.
"""

from __future__ import annotations

import functools

import click

from orchestrator.cli.common import (
    DRY_RUN,
    EXPERIMENT,
    INTERRUPTED_EXIT,
    JOB_SERVER,
    NAME,
    NO_REUSE,
    RANDOM,
    SCALE,
    SEEDS,
    SET,
    STORAGE,
    TABLES,
    TRACKING_URI,
    friendly_errors,
)
from orchestrator.reproduce import ALL_TABLES

__all__ = ["jobs", "logs", "stop", "submit"]


def _hints(submission_id: str, address: str) -> str:
    return (
        f"Follow:  trilevel logs {submission_id} --address {address} --follow\n"
        f"Status:  trilevel status {submission_id} --address {address}\n"
        f"Stop:    trilevel stop {submission_id} --address {address}"
    )


@click.command()
@EXPERIMENT
@JOB_SERVER
@SCALE
@SET
@NAME
@STORAGE.but(
    help="Where the sweep keeps its state, as the cluster sees it: an absolute path on a volume every node "
    "mounts, or s3://… (required unless the experiment sets an absolute one)."
)
@TRACKING_URI.but(help="MLflow tracking server as the cluster sees it, e.g. http://mlflow:5000.")
@click.option("--no-wait", is_flag=True, help="Print the submission id and return; don't follow the logs.")
@SEEDS
@RANDOM
@TABLES.but(
    default=None,
    show_default=False,
    help=f"With `reproduce`: which of {', '.join(ALL_TABLES)}, comma-separated [default: all].",
)
@NO_REUSE
@DRY_RUN.but(
    help="Run the sweep's pre-flight on the cluster (data, weights, storage, MLflow, GPUs) and print its plan "
    "(`reproduce`: its arms and stages to compute); start nothing."
)
@click.option(
    "--skip-tracking-check",
    is_flag=True,
    help="Don't check an http(s) tracking URI from here (it may resolve only inside the cluster).",
)
@friendly_errors
def submit(
    experiment: str,
    address: str,
    scale: str,
    overrides: tuple[str, ...],
    name: str | None,
    storage: str | None,
    tracking_uri: str | None,
    seeds: int | None,
    random_draws: int | None,
    tables: str | None,
    no_reuse: bool,
    no_wait: bool,
    dry_run: bool,
    skip_tracking_check: bool,
) -> None:
    """Run the sweep of EXPERIMENT (a preset or a YAML file) as a Ray Job on the cluster at --address.

    `trilevel submit reproduce [--tables …] [--seeds N] …` runs `trilevel reproduce` as the job instead:
    Tables 7-9 and Fig. 1, each distinct stage computed once; its sweeps are named reproduce-<scale>-<table>.

    Prints the submission id. Without --no-wait, follows the job's logs until it ends and exits
    non-zero unless it SUCCEEDED; Ctrl-C stops following, not the job.
    """
    from orchestrator.jobs import mlflow_hint, wait_for_job
    from orchestrator.submit import REPRODUCE, reproduce_target, submit_reproduce, submit_sweep

    def say(text: str) -> None:
        click.echo(text, nl=False, err=True)

    overrides = (*overrides, "stages.reuse=false") if no_reuse else overrides
    where = {"address": address, "storage": storage, "tracking_uri": tracking_uri}
    where |= {"check_tracking": not skip_tracking_check}
    if experiment == REPRODUCE:
        if name is not None:
            raise click.UsageError(f"--name {name}: `submit reproduce` names its sweeps reproduce-<scale>-<table>")
        chosen = [t.strip() for t in tables.split(",") if t.strip()] if tables else list(ALL_TABLES)
        target = {"scale": scale, "seeds": seeds or 1, "tables": chosen, "overrides": overrides}
        target |= {"random_draws": random_draws}
        submit_job = functools.partial(submit_reproduce, **where, **target)
        done = "Plan printed by the cluster (nothing started); submit again without --dry-run to start."
    else:
        if tables is not None:
            raise click.UsageError(f"--tables {tables}: only `submit reproduce` takes it, not a sweep ({experiment})")
        target = {"scale": scale, "overrides": overrides, "name": name, "seeds": seeds, "random_draws": random_draws}
        submit_job = functools.partial(submit_sweep, experiment, **where, **target)
        done = "Pre-flight passed on the cluster; submit again without --dry-run to start."
    if dry_run:
        submit_job(echo=lambda chunk: click.echo(chunk, nl=False), dry_run=True)
        click.echo(done, err=True)
        return
    submission_id = submit_job(wait=False, echo=say)
    click.echo(submission_id)
    click.echo(_hints(submission_id, address), err=True)
    if tracking_uri is None and experiment == REPRODUCE:
        tracking_uri = reproduce_target(**target, storage=storage)[0].tracking.uri
    click.echo(mlflow_hint(tracking_uri or _tracking_uri_of(experiment, scale, overrides)), err=True)
    if no_wait:
        return
    try:
        status = wait_for_job(address, submission_id, echo=lambda chunk: click.echo(chunk, nl=False))
    except KeyboardInterrupt:
        click.echo(f"\nStopped following; job {submission_id} goes on (`trilevel stop` ends it).", err=True)
        raise SystemExit(INTERRUPTED_EXIT) from None
    click.echo(f"Job {submission_id} {status}.", err=True)


def _tracking_uri_of(experiment: str, scale: str, overrides: tuple[str, ...]) -> str:
    from orchestrator.experiment import load_experiment

    return load_experiment(experiment, scale, overrides).tracking.uri


@click.command()
@click.argument("submission_id")
@JOB_SERVER
@click.option("--follow", "-f", is_flag=True, help="Keep printing new output until the job ends.")
@friendly_errors
def logs(submission_id: str, address: str, follow: bool) -> None:
    """The output of job SUBMISSION_ID (the sweep driver's, with its trials' forwarded lines)."""
    from orchestrator.jobs import job_logs

    try:
        for chunk in job_logs(address, submission_id, follow=follow):
            click.echo(chunk, nl=False)
    except KeyboardInterrupt:
        raise SystemExit(INTERRUPTED_EXIT) from None


@click.command()
@click.argument("submission_id")
@JOB_SERVER
@friendly_errors
def stop(submission_id: str, address: str) -> None:
    """Stop job SUBMISSION_ID: its driver and trials end; finished trials stay in storage and MLflow."""
    from orchestrator.jobs import job_status, stop_job

    if stop_job(address, submission_id):
        click.echo(f"Stop requested for job {submission_id}.")
    else:
        status = job_status(address, submission_id)
        click.echo(f"Job {submission_id} is not running ({status}); nothing to stop.")


@click.command()
@JOB_SERVER
@friendly_errors
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
