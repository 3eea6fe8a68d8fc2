"""`trilevel run|sweep|resume|demo`: run experiments on a local Ray or an existing cluster."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from orchestrator.cli.common import (
    ADDRESS,
    DEFAULT_STORAGE,
    EXPERIMENT_OPTIONS,
    INTERRUPTED_EXIT,
    SET,
    STORAGE,
    TRACKING_URI,
    VERBOSE,
    friendly_errors,
)
from orchestrator.cli.sweep_report import print_report
from orchestrator.experiment import (
    RESULT_NEUTRAL_FIELDS,
    Experiment,
    apply_overrides,
    load_experiment,
    with_random,
    with_seeds,
)

if TYPE_CHECKING:
    from orchestrator.sweep import SweepOutcome


def _load(
    experiment: str,
    scale: str,
    overrides: tuple[str, ...],
    name: str | None,
    storage: str | None,
    tracking_uri: str | None,
    no_reuse: bool = False,
) -> Experiment:
    fields = {"name": name, "storage": storage, "tracking.uri": tracking_uri}
    overrides = (*overrides, "stages.reuse=false") if no_reuse else overrides
    return load_experiment(experiment, scale, overrides, **{k: v for k, v in fields.items() if v is not None})


def _launch(
    experiment: Experiment,
    address: str | None,
    *,
    resume: bool = False,
    dry_run: bool = False,
    preflight: bool = False,
    verbose: bool = False,
) -> None:
    """Run the sweep on a local Ray or `address`; by default a live table, Ray's own output to a log file.

    The sweep's lease is taken first (a dry run takes none): a second driver of a live sweep is refused
    before any Ray starts (on object-store storage: as soon as it is connected, by the cluster's lease).
    """
    from orchestrator.sweep import absolute_storage
    from orchestrator.sweep_lease import hold_sweep

    with contextlib.ExitStack() as held:
        if not dry_run:
            held.enter_context(hold_sweep(absolute_storage(experiment.storage), experiment.name))
        outcome = _run(experiment, address, resume=resume, dry_run=dry_run, preflight=preflight, verbose=verbose)
    if outcome is not None:
        _summarise(experiment, outcome)


def _run(
    experiment: Experiment, address: str | None, *, resume: bool, dry_run: bool, preflight: bool, verbose: bool
) -> SweepOutcome | None:
    from orchestrator.cluster import ray_connection
    from orchestrator.sweep import run_sweep

    if verbose or dry_run:
        with ray_connection(address), _cluster_lease(experiment, dry_run):
            if dry_run or preflight:
                _preflight(experiment, click.echo, gpu_probe=not dry_run)
                if dry_run:
                    return None
            return run_sweep(experiment, resume=resume)
    from rich.console import Console

    from orchestrator.console import SweepConsole, quiet_output, terminal_warnings

    log = _log_path(experiment)
    click.echo(f"Ray, Ray Data and Tune log to {log} (-v shows them here instead)")
    with quiet_output(log) as terminal:
        console = Console(file=terminal)
        with terminal_warnings(console), ray_connection(address), _cluster_lease(experiment, dry_run):
            if preflight:
                _preflight(experiment, lambda text: console.print(text, markup=False, highlight=False), gpu_probe=True)
            return run_sweep(experiment, resume=resume, console=SweepConsole(console, experiment.name))


def _cluster_lease(experiment: Experiment, dry_run: bool) -> contextlib.AbstractContextManager[None]:
    """On object-store storage, the sweep's lease on the Ray cluster just connected (before a pre-flight's
    minutes), a dry run none; `run_sweep` holds it again, re-entrantly (:mod:`orchestrator.cluster_lease`)."""
    from orchestrator.cluster_lease import hold_on_cluster
    from orchestrator.sweep import absolute_storage

    if dry_run:
        return contextlib.nullcontext()
    return hold_on_cluster(absolute_storage(experiment.storage), experiment.name)


def _summarise(experiment: Experiment, outcome: SweepOutcome) -> None:
    click.echo(f"Sweep {outcome.name}: " + ", ".join(f"{t} {s}" for t, s in outcome.trials.items()))
    for trial, error in outcome.errors.items():
        click.echo(f"  {trial} failed: {error}", err=True)
    if outcome.not_logged:
        lost = ", ".join(f"{who}: {count}" for who, count in outcome.not_logged.items())
        click.echo(
            f"MLflow was unreachable: tracking calls not logged yet ({lost}), kept in {outcome.backlog}; "
            f"`trilevel resume {outcome.name}` delivers them",
            err=True,
        )
    click.echo(f"Storage: {outcome.storage}/{outcome.name}")
    if outcome.interrupted:  # Ctrl-C or `trilevel stop`: never reported as success
        stopped = [trial for trial, status in outcome.trials.items() if status == "STOPPED"]
        click.echo(
            f"Interrupted: {len(stopped)} trial(s) stopped before finishing ({', '.join(stopped)}); their MLflow "
            f"runs and the sweep's are KILLED. `trilevel resume {outcome.name}` finishes them.",
            err=True,
        )
        raise click.exceptions.Exit(INTERRUPTED_EXIT)
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


def _preflight(experiment: Experiment, echo: Callable[[str], Any], *, gpu_probe: bool = False) -> None:
    """Print the plan of `experiment` on the connected cluster; any problem stops here (exit 1).

    `gpu_probe` (`--preflight`): a GPU experiment's probe runs on one GPU worker first (it may wait for
    the autoscaler to bring one up).
    """
    from orchestrator.capacity import cluster_capacity
    from orchestrator.gpu_preflight import PROBE_TIMEOUT_S
    from orchestrator.preflight import format_plan, preflight

    if gpu_probe and experiment.resources.gpus_per_worker > 0:
        echo(f"Pre-flight: probing one GPU worker (up to {PROBE_TIMEOUT_S / 60:.0f} min while GPU nodes come up)")
    plan = preflight(experiment, cluster_capacity(), gpu_probe=gpu_probe)
    echo(format_plan(plan))
    if not plan.ok:
        raise click.ClickException(f"pre-flight found {len(plan.problems)} problem(s) (listed above); nothing started")


@click.command()
@EXPERIMENT_OPTIONS
@friendly_errors
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
    seeds: int | None,
    random_draws: int | None,
    no_reuse: bool,
    verbose: bool,
) -> None:
    """Run the sweep of EXPERIMENT (a preset or a YAML file): one trial per grid point of its axes."""
    loaded = _load(experiment, scale, overrides, name, storage, tracking_uri, no_reuse)
    if seeds is not None:
        loaded = with_seeds(loaded, seeds)
    if random_draws is not None:
        loaded = with_random(loaded, random_draws)
    _launch(loaded, address, dry_run=dry_run, preflight=preflight, verbose=verbose)


@click.command()
@EXPERIMENT_OPTIONS
@friendly_errors
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
    seeds: int | None,
    random_draws: int | None,
    no_reuse: bool,
    verbose: bool,
) -> None:
    """Run EXPERIMENT as a single pipeline (its sweep axes, if any, are ignored; `--seeds N`: one per seed)."""
    loaded = _load(experiment, scale, overrides, name, storage, tracking_uri, no_reuse).model_copy(update={"sweep": {}})
    if seeds is not None:
        loaded = with_seeds(loaded, seeds)
    if random_draws is not None:
        loaded = with_random(loaded, random_draws)
    _launch(loaded, address, dry_run=dry_run, preflight=preflight, verbose=verbose)


@click.command()
@click.argument("name")
@STORAGE.but(default=DEFAULT_STORAGE, show_default=True, help=None)
@ADDRESS.but(help="Existing Ray cluster; default: a local Ray.")
@SET.but(help=f"Change a field that does not change results: {', '.join(RESULT_NEUTRAL_FIELDS)}.")
@VERBOSE
@friendly_errors
def resume(name: str, storage: str, address: str | None, overrides: tuple[str, ...], verbose: bool) -> None:
    """Continue the interrupted sweep NAME: finished trials are kept, the others resume their stages."""
    from orchestrator.sweep import load_sweep_experiment

    experiment = apply_overrides(load_sweep_experiment(name, storage), overrides, allowed=RESULT_NEUTRAL_FIELDS)
    _launch(experiment, address, resume=True, verbose=verbose)


@click.command()
@STORAGE.but(help=f"Where the demo writes [default: {DEFAULT_STORAGE}]")
@TRACKING_URI
@SET.but(help="Override a field, e.g. --set 'sweep={stages.search.lambda_order: [0.1]}' for a one-trial demo.")
@VERBOSE
@friendly_errors
def demo(storage: str | None, tracking_uri: str | None, overrides: tuple[str, ...], verbose: bool) -> None:
    """The table8 ablation at tiny scale on the built-in photographs, then its report."""
    import ray.tune

    from orchestrator.sweep import absolute_storage

    experiment = _load("table8", "tiny", overrides, "demo-table8", storage, tracking_uri)
    root = absolute_storage(experiment.storage)
    again = ray.tune.Tuner.can_restore(f"{root}/{experiment.name}")
    _launch(experiment, None, resume=again, verbose=verbose)
