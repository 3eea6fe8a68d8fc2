"""`trilevel reproduce`: Tables 7-9 and Fig. 1 in one command, each distinct stage computed once (stage store)."""

from __future__ import annotations

import contextlib
import os
import re
import time
from typing import TYPE_CHECKING

import click

from orchestrator.cli.common import (
    ADDRESS,
    DEFAULT_MLFLOW_EXPERIMENT,
    DRY_RUN,
    INTERRUPTED_EXIT,
    NO_REUSE,
    RANDOM,
    SCALE,
    SEEDS,
    SET,
    STORAGE,
    TABLES,
    TRACKING_URI,
    VERBOSE,
    friendly_errors,
)
from orchestrator.cli.sweep_report import echo_report, report_dir, sweep_id_of

if TYPE_CHECKING:
    from orchestrator.reproduce import ReproducePlan


@click.command()
@SCALE
@SEEDS.but(type=int, default=1, show_default=True, help="Seeds 0..N-1 of every arm (replicates).")
@RANDOM.but(help="Beside every arm, K random FLOPs-matched architectures (as `sweep --random`).")
@TABLES
@SET
@STORAGE
@TRACKING_URI
@ADDRESS
@DRY_RUN.but(help="Count arms and stages (requested, distinct, stored), estimate, run nothing.")
@NO_REUSE
@VERBOSE
@friendly_errors
def reproduce(
    scale: str,
    seeds: int,
    random_draws: int | None,
    tables: str,
    overrides: tuple[str, ...],
    storage: str | None,
    tracking_uri: str | None,
    address: str | None,
    dry_run: bool,
    no_reuse: bool,
    verbose: bool,
) -> None:
    """Run the ablation tables' sweeps at SCALE, sharing every stage two arms have in common; then a summary.

    One sweep per table (`reproduce-<scale>-<table>`) on one storage path; a stage another arm already
    computed there is reused, not computed again. Running the command again resumes where it stopped.
    The summary is also written to `<storage>/reproduce-<scale>.md` (`reproduce-<scale>-random<K>.md` with --random).
    """
    from orchestrator.cluster import ray_connection
    from orchestrator.cluster_lease import hold_on_cluster
    from orchestrator.reproduce import plan_reproduce, reproduce_experiments
    from orchestrator.sweep import absolute_storage, run_sweep
    from orchestrator.sweep_lease import hold_sweep

    fields = {"storage": storage, "tracking.uri": tracking_uri}
    overrides = (*overrides, "stages.reuse=false") if no_reuse else overrides
    experiments = reproduce_experiments(
        scale,
        seeds,
        [t.strip() for t in tables.split(",") if t.strip()],
        overrides,
        random_draws,
        **{k: v for k, v in fields.items() if v is not None},
    )
    plan = plan_reproduce(experiments)
    for line in plan.lines():
        click.echo(line)
    if dry_run:
        return
    durations: dict[str, float] = {}
    with contextlib.ExitStack() as held:
        # Every sweep's lease for the whole command: the file leases before Ray starts (a second driver is
        # refused at once, paying no Ray start), on object-store storage the cluster's once connected.
        storages = [(absolute_storage(experiment.storage), experiment.name) for experiment in plan.sweeps]
        for storage_path, name in storages:
            held.enter_context(hold_sweep(storage_path, name))
        held.enter_context(ray_connection(address))
        for storage_path, name in storages:
            held.enter_context(hold_on_cluster(storage_path, name))
        for experiment in plan.sweeps:
            click.echo(f"--- {experiment.name}")
            start = time.monotonic()
            outcome = run_sweep(experiment)
            durations[experiment.name] = time.monotonic() - start
            for trial, error in outcome.errors.items():
                click.echo(f"  {trial} failed: {error}", err=True)
            if outcome.interrupted:  # Ctrl-C: stop here, never go on to the next table as if it succeeded
                stopped = [trial for trial, status in outcome.trials.items() if status == "STOPPED"]
                click.echo(
                    f"Interrupted: {len(stopped)} trial(s) of {experiment.name} stopped before finishing; their "
                    "MLflow runs and the sweep's are KILLED. Run the same command again to resume.",
                    err=True,
                )
                raise click.exceptions.Exit(INTERRUPTED_EXIT)
    summary = _summary(plan, durations)
    click.echo(summary)


def _summary(plan: ReproducePlan, durations: dict[str, float]) -> str:
    """Each table's report and its stages computed vs reused, in RESULTS.md's layout; written beside the runs."""
    from orchestrator.report.build import warning_text
    from orchestrator.report.table import to_markdown
    from workers.stage_outputs import read_stage_result

    scale = plan.sweeps[0].name.split("-")[1]
    parts = [f"# Results at the `{scale}` scale", ""]
    for experiment in plan.sweeps:
        name = experiment.name
        minutes, seconds = divmod(int(durations.get(name, 0)), 60)
        tracking = experiment.tracking
        files = echo_report(
            name,
            tracking.uri,
            tracking.experiment or DEFAULT_MLFLOW_EXPERIMENT,
            experiment.labels,
            report_dir(name, experiment.storage),
            sweep_id_of(experiment.storage, name),  # not a sweep of this name on other storage (a shared server)
        )
        counts = {"computed": 0, "reused": 0}
        for trial in plan.plans[name]:
            for stage in ("pretrain", "search", "train"):
                result = read_stage_result(trial.outputs, stage)
                if result is not None:
                    counts["reused" if result.origin else "computed"] += 1
        parts += [f"## {experiment.description} — {minutes} min {seconds} s", ""]
        if files.warnings:  # a network that does not beat bicubic is said first, loudly
            parts += [warning_text(files.warnings), ""]
        if files.seeds:  # arms over seeds (n, mean ± std), the paper's directions with their statistics
            parts += [files.seeds, "", "### Every trial", ""]
        parts += [
            to_markdown(files.table),
            "",
            f"Stages: {counts['computed']} computed, {counts['reused']} reused from the stage store.",
            "",
        ]
    text = "\n".join(parts)
    storage = plan.sweeps[0].storage
    if "://" not in storage:
        random = re.search(r"-random\d+$", plan.sweeps[0].name)  # --random K: its K, so runs of other K are kept
        path = os.path.join(storage, f"reproduce-{scale}{random.group() if random else ''}.md")
        with open(path, "w") as stream:
            stream.write(text)
    return text
