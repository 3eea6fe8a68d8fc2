"""`python -m orchestrator` is the `trilevel` command."""

from orchestrator.cli import main

main()
