"""The `trilevel` command line. Each command group lives in its own module of this package."""

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
    from orchestrator.cli import arch, data, export, report, run, submit, upscale

    for command in (
        run.run,
        run.sweep,
        run.resume,
        run.demo,
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
    """Console-script entry point."""
    _register_commands()
    cli()
