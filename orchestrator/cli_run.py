"""`trilevel run|sweep|resume|status|demo`: run experiments on a local Ray or an existing cluster."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from orchestrator.cli import friendly_errors
from orchestrator.experiment import Experiment, ExperimentError, load_experiment, preset_names
from orchestrator.tracking import DEFAULT_TRACKING_URI, TrackingUnavailable

DEFAULT_TRACKING = DEFAULT_TRACKING_URI
DEFAULT_STORAGE = "./trilevel-runs"


def experiment_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by `run` and `sweep`: scale, overrides, name, storage, tracking, cluster."""
    options = [
        click.argument("experiment"),
        click.option("--scale", default="tiny", show_default=True, help="Preset scale: tiny (minutes) or paper."),
        click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE", help="Override a field."),
        click.option("--name", default=None, help="Sweep name (default: the experiment's name)."),
        click.option("--storage", default=None, help=f"Local dir or s3://… [default: {DEFAULT_STORAGE}]"),
        click.option("--tracking-uri", default=None, help=f"MLflow tracking URI [default: {DEFAULT_TRACKING}]"),
        click.option("--address", default=None, help="Existing Ray cluster (e.g. auto); default: a local Ray."),
        click.option(
            "--dry-run",
            is_flag=True,
            help="Check data, weights, storage, MLflow and cluster resources, print the plan, start nothing.",
        ),
        click.option("--preflight", is_flag=True, help="The --dry-run checks first; start only if they pass."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _load(
    experiment: str,
    scale: str,
    overrides: tuple[str, ...],
    name: str | None,
    storage: str | None,
    tracking_uri: str | None,
) -> Experiment:
    fields = {"name": name, "storage": storage, "tracking.uri": tracking_uri}
    return load_experiment(experiment, scale, overrides, **{k: v for k, v in fields.items() if v is not None})


_friendly_errors = friendly_errors(ExperimentError, TrackingUnavailable)


def _launch(
    experiment: Experiment, address: str | None, resume: bool = False, dry_run: bool = False, preflight: bool = False
) -> None:
    from orchestrator.cluster import ray_connection
    from orchestrator.sweep import run_sweep

    with ray_connection(address):
        if dry_run or preflight:
            _preflight(experiment)
            if dry_run:
                return
        outcome = run_sweep(experiment, resume=resume)
    click.echo(f"\nSweep {outcome.name}: " + ", ".join(f"{t} {s}" for t, s in outcome.trials.items()))
    for trial, error in outcome.errors.items():
        click.echo(f"  {trial} failed: {error}", err=True)
    if outcome.not_logged:
        lost = ", ".join(f"{who}: {count}" for who, count in outcome.not_logged.items())
        click.echo(f"MLflow was unreachable: tracking calls not logged ({lost}), listed in {outcome.backlog}", err=True)
    click.echo(f"Storage: {outcome.storage}/{outcome.name}")
    click.echo(f"MLflow:  mlflow ui --backend-store-uri {experiment.tracking.uri}")
    if outcome.errors:
        raise click.ClickException(
            f"{len(outcome.errors)} trial(s) failed; fix and run `trilevel resume {outcome.name}`"
        )


def _preflight(experiment: Experiment) -> None:
    """Print the plan of `experiment` on the connected cluster; any problem stops here (exit 1)."""
    from orchestrator.preflight import cluster_capacity, format_plan, preflight

    plan = preflight(experiment, cluster_capacity())
    click.echo(format_plan(plan))
    if not plan.ok:
        raise click.ClickException(f"pre-flight found {len(plan.problems)} problem(s) (listed above); nothing started")


@click.command()
@experiment_options
@_friendly_errors
def sweep(
    experiment: str,
    scale: str,
    overrides: tuple[str, ...],
    name: str | None,
    storage: str | None,
    tracking_uri: str | None,
    address: str | None,
    dry_run: bool,
    preflight: bool,
) -> None:
    """Run the sweep of EXPERIMENT (a preset or a YAML file): one trial per grid point of its axes."""
    _launch(
        _load(experiment, scale, overrides, name, storage, tracking_uri), address, dry_run=dry_run, preflight=preflight
    )


@click.command()
@experiment_options
@_friendly_errors
def run(
    experiment: str,
    scale: str,
    overrides: tuple[str, ...],
    name: str | None,
    storage: str | None,
    tracking_uri: str | None,
    address: str | None,
    dry_run: bool,
    preflight: bool,
) -> None:
    """Run EXPERIMENT as a single pipeline (its sweep axes, if any, are ignored)."""
    loaded = _load(experiment, scale, overrides, name, storage, tracking_uri)
    _launch(loaded.model_copy(update={"sweep": {}}), address, dry_run=dry_run, preflight=preflight)


@click.command()
@click.argument("name")
@click.option("--storage", default=DEFAULT_STORAGE, show_default=True)
@click.option("--address", default=None, help="Existing Ray cluster; default: a local Ray.")
@_friendly_errors
def resume(name: str, storage: str, address: str | None) -> None:
    """Continue the interrupted sweep NAME: finished trials are kept, the others resume their stages."""
    from orchestrator.sweep import load_sweep_experiment

    _launch(load_sweep_experiment(name, storage), address, resume=True)


@click.command()
@click.option("--storage", default=None, help=f"Where the demo writes [default: {DEFAULT_STORAGE}]")
@click.option("--tracking-uri", default=None, help=f"MLflow tracking URI [default: {DEFAULT_TRACKING}]")
@_friendly_errors
def demo(storage: str | None, tracking_uri: str | None) -> None:
    """The table8 ablation at tiny scale on the built-in photographs, then its report."""
    import ray.tune

    from orchestrator.cli_report import print_report
    from orchestrator.sweep import absolute_storage

    experiment = _load("table8", "tiny", (), "demo-table8", storage, tracking_uri)
    root = absolute_storage(experiment.storage)
    again = ray.tune.Tuner.can_restore(f"{root}/{experiment.name}")
    _launch(experiment, None, resume=again)
    print_report(experiment.name, root, experiment.tracking.uri, experiment.tracking.experiment)


def presets_help() -> str:
    return ", ".join(preset_names())
