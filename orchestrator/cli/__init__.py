"""The `trilevel` command line: the click group and its entry point.

Each command group lives in its own module of this package (`run`, `submit`, `report`, `arch`, `data`,
`export`, `upscale`); what they share (defaults, options, the error wrapper) is in `common`. The
commands are attached in `main`, not at import, so importing one command module does not import them all.
"""

from __future__ import annotations

import click

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
    _register_commands()
    cli()
