"""The `trilevel` command line: the click group and its entry point.

Each command group lives in its own module of this package (`run`, `submit`, `report`, `arch`, `data`,
`export`, `upscale`); what they share (defaults, options, the error wrapper) is in `common`. The
commands are attached in `main`, not at import, so importing one command module does not import them all.
"""

from __future__ import annotations

import click

from orchestrator.cli.common import INTERRUPTED_EXIT

__all__ = ["INTERRUPTED_EXIT", "InterruptibleGroup", "cli", "main"]


class InterruptibleGroup(click.Group):
    """A group whose commands exit 130 on Ctrl-C wherever it lands, not click's "Aborted!" with status 1.

    The sweep commands turn an interrupt inside Tune's loop into 130 themselves; one that lands before
    (planning, taking a lease, starting Ray) or after (the summary) reached click, which reports exit
    status 1: a script or scheduler could not tell an interrupted run from a failed one.
    """

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("\nInterrupted.", err=True)
            raise click.exceptions.Exit(INTERRUPTED_EXIT) from None


@click.group(cls=InterruptibleGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="trilevel-nas")
def cli() -> None:
    """Trilevel NAS for efficient super-resolution, on Ray, tracked in MLflow."""


def _register_commands() -> None:
    """Attach the commands; kept out of import time so importing the package has no side effects."""
    from orchestrator.cli import arch, data, export, report, reproduce, run, submit, upscale

    for command in (
        run.run,
        run.sweep,
        run.resume,
        run.demo,
        reproduce.reproduce,
        report.status,
        report.report,
        arch.arch,
        upscale.upscale,
        export.export,
        submit.submit,
        submit.logs,
        submit.stop,
        submit.jobs,
        data.data,
    ):
        cli.add_command(command)


def main() -> None:
    """Console-script entry point (`trilevel`, `python -m orchestrator`)."""
    try:
        _register_commands()  # imports every command module: a Ctrl-C can land here too
    except KeyboardInterrupt:
        click.echo("\nInterrupted.", err=True)
        raise SystemExit(INTERRUPTED_EXIT) from None
    cli()
