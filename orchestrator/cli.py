"""The `trilevel` command line. Each command group lives in its own `cli_*` module."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="trilevel-nas")
def cli() -> None:
    """Trilevel NAS for efficient super-resolution, on Ray, tracked in MLflow."""


def _register_groups() -> None:
    """Attach the command groups; imported lazily so `trilevel --help` stays fast."""
    from orchestrator import cli_arch, cli_data

    cli.add_command(cli_arch.arch)
    cli.add_command(cli_data.data)


def main() -> None:
    """Console-script entry point."""
    _register_groups()
    cli()
