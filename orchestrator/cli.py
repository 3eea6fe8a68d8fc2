"""The `trilevel` command line. Each command group lives in its own `cli_*` module."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click


def friendly_errors(*errors: type[BaseException]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: the given errors (bad input, unreachable servers) become one-line messages, exit 1."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return command(*args, **kwargs)
            except errors as err:
                raise click.ClickException(str(err)) from None

        return wrapper

    return decorate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="trilevel-nas")
def cli() -> None:
    """Trilevel NAS for efficient super-resolution, on Ray, tracked in MLflow."""


def _register_commands() -> None:
    """Attach the commands; kept out of import time so importing the module has no side effects."""
    from orchestrator import cli_arch, cli_data, cli_export, cli_report, cli_run, cli_submit, cli_upscale

    for command in (
        cli_run.run,
        cli_run.sweep,
        cli_run.resume,
        cli_run.demo,
        cli_report.status,
        cli_report.report,
        cli_arch.arch,
        cli_upscale.upscale,
        cli_export.export,
        cli_submit.submit,
        cli_submit.logs,
        cli_submit.stop,
        cli_submit.jobs,
        cli_data.data,
    ):
        cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    _register_commands()
    cli()
