"""`trilevel run|sweep|resume|status|demo`: run experiments on a local Ray or an existing cluster."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from orchestrator.cli import friendly_errors
from orchestrator.experiment import (
    RESULT_NEUTRAL_FIELDS,
    SCALE_HELP,
    Experiment,
    ExperimentError,
    apply_overrides,
    load_experiment,
    preset_names,
)
from orchestrator.tracking import DEFAULT_TRACKING_URI, TrackingUnavailable

if TYPE_CHECKING:
    from orchestrator.sweep import SweepOutcome

DEFAULT_TRACKING = DEFAULT_TRACKING_URI
DEFAULT_STORAGE = "./trilevel-runs"


VERBOSE = click.option(
    "-v", "--verbose", is_flag=True, help="Show Ray's, Ray Data's and Tune's output here instead of the live table."
)


def experiment_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by `run` and `sweep`: scale, overrides, name, storage, tracking, cluster."""
    options = [
        click.argument("experiment"),
        click.option("--scale", default="tiny", show_default=True, help=SCALE_HELP),
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
        VERBOSE,
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
    experiment: Experiment,
    address: str | None,
    *,
    resume: bool = False,
    dry_run: bool = False,
    preflight: bool = False,
    verbose: bool = False,
) -> None:
    """Run the sweep on a local Ray or `address`; by default a live table, Ray's own output to a log file."""
    from orchestrator.cluster import ray_connection
    from orchestrator.sweep import run_sweep

    if verbose or dry_run:
        with ray_connection(address):
            if dry_run or preflight:
                _preflight(experiment, click.echo)
                if dry_run:
                    return
            outcome = run_sweep(experiment, resume=resume)
    else:
        from rich.console import Console

        from orchestrator.console import SweepConsole, quiet_output, terminal_warnings

        log = _log_path(experiment)
        click.echo(f"Ray, Ray Data and Tune log to {log} (-v shows them here instead)")
        with quiet_output(log) as terminal:
            console = Console(file=terminal)
            with terminal_warnings(console), ray_connection(address):
                if preflight:
                    _preflight(experiment, lambda text: console.print(text, markup=False, highlight=False))
                outcome = run_sweep(experiment, resume=resume, console=SweepConsole(console, experiment.name))
    _summarise(experiment, outcome)


def _summarise(experiment: Experiment, outcome: SweepOutcome) -> None:
    from orchestrator.cli_report import print_report

    click.echo(f"Sweep {outcome.name}: " + ", ".join(f"{t} {s}" for t, s in outcome.trials.items()))
    for trial, error in outcome.errors.items():
        click.echo(f"  {trial} failed: {error}", err=True)
    if outcome.not_logged:
        lost = ", ".join(f"{who}: {count}" for who, count in outcome.not_logged.items())
        click.echo(f"MLflow was unreachable: tracking calls not logged ({lost}), listed in {outcome.backlog}", err=True)
    click.echo(f"Storage: {outcome.storage}/{outcome.name}")
    if len(outcome.errors) < len(outcome.trials):  # the report of what finished, logged to the sweep's run
        try:
            print_report(outcome.name, outcome.storage, experiment.tracking.uri, experiment.tracking.experiment)
        except click.ClickException as err:
            click.echo(f"No report: {err.format_message()}", err=True)
    if outcome.errors:
        raise click.ClickException(
            f"{len(outcome.errors)} trial(s) failed; fix and run `trilevel resume {outcome.name}`"
        )


def _log_path(experiment: Experiment) -> Path:
    """Where a sweep's Ray/Tune output goes: beside its runs on local storage, else in ./trilevel-logs."""
    from orchestrator.sweep import absolute_storage

    storage = absolute_storage(experiment.storage)
    if "://" in storage:
        return Path("trilevel-logs") / f"{experiment.name}.log"
    return Path(storage) / experiment.name / "logs" / "driver.log"


def _preflight(experiment: Experiment, echo: Callable[[str], Any]) -> None:
    """Print the plan of `experiment` on the connected cluster; any problem stops here (exit 1)."""
    from orchestrator.capacity import cluster_capacity
    from orchestrator.preflight import format_plan, preflight

    plan = preflight(experiment, cluster_capacity())
    echo(format_plan(plan))
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
    verbose: bool,
) -> None:
    """Run the sweep of EXPERIMENT (a preset or a YAML file): one trial per grid point of its axes."""
    loaded = _load(experiment, scale, overrides, name, storage, tracking_uri)
    _launch(loaded, address, dry_run=dry_run, preflight=preflight, verbose=verbose)


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
    verbose: bool,
) -> None:
    """Run EXPERIMENT as a single pipeline (its sweep axes, if any, are ignored)."""
    loaded = _load(experiment, scale, overrides, name, storage, tracking_uri)
    _launch(loaded.model_copy(update={"sweep": {}}), address, dry_run=dry_run, preflight=preflight, verbose=verbose)


@click.command()
@click.argument("name")
@click.option("--storage", default=DEFAULT_STORAGE, show_default=True)
@click.option("--address", default=None, help="Existing Ray cluster; default: a local Ray.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="FIELD=VALUE",
    help=f"Change a field that does not change results: {', '.join(RESULT_NEUTRAL_FIELDS)}.",
)
@VERBOSE
@_friendly_errors
def resume(name: str, storage: str, address: str | None, overrides: tuple[str, ...], verbose: bool) -> None:
    """Continue the interrupted sweep NAME: finished trials are kept, the others resume their stages."""
    from orchestrator.sweep import load_sweep_experiment

    experiment = apply_overrides(load_sweep_experiment(name, storage), overrides, allowed=RESULT_NEUTRAL_FIELDS)
    _launch(experiment, address, resume=True, verbose=verbose)


@click.command()
@click.option("--storage", default=None, help=f"Where the demo writes [default: {DEFAULT_STORAGE}]")
@click.option("--tracking-uri", default=None, help=f"MLflow tracking URI [default: {DEFAULT_TRACKING}]")
@VERBOSE
@_friendly_errors
def demo(storage: str | None, tracking_uri: str | None, verbose: bool) -> None:
    """The table8 ablation at tiny scale on the built-in photographs, then its report."""
    import ray.tune

    from orchestrator.sweep import absolute_storage

    experiment = _load("table8", "tiny", (), "demo-table8", storage, tracking_uri)
    root = absolute_storage(experiment.storage)
    again = ray.tune.Tuner.can_restore(f"{root}/{experiment.name}")
    _launch(experiment, None, resume=again, verbose=verbose)


def presets_help() -> str:
    return ", ".join(preset_names())
