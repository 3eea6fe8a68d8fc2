"""Tags that say where and how a run ran: git commit, package versions, host, and the command.

Every run records them so a result can be traced back to the code and the command that made it.
Nothing is imported to read versions (package metadata only), and git is asked at most once per
tracker (the tracker caches these tags).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shlex
import socket
import subprocess
import sys
from pathlib import Path

from orchestrator.tracking.limits import MAX_TAG_VALUE
from orchestrator.tracking.tags import COMMAND_TAG, SOURCE_NAME_TAG, SOURCE_TYPE_TAG

__all__ = ["package_version", "run_environment_tags", "source_tags"]

_PACKAGES = ("trilevel-nas", "torch", "ray", "mlflow", "numpy")
_SOURCE = Path(__file__).resolve().parents[2]  # the checkout (or site-packages) holding orchestrator/


def _git_commit(source: Path) -> tuple[str, str]:
    """(commit, dirty) of the checkout holding `source`, or ("unknown", "unknown") outside git."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown", "unknown"
    return (commit or "unknown"), ("true" if changed else "false")


def package_version(name: str, source: Path | None = None) -> str:
    """The installed version of `name`; for trilevel-nas run from an uninstalled checkout, its pyproject's."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
    if name == "trilevel-nas" and source is not None:  # a checkout that is not installed: read its pyproject
        try:
            import tomllib

            with open(source / "pyproject.toml", "rb") as handle:
                return str(tomllib.load(handle)["project"]["version"])
        except (OSError, KeyError, ValueError):
            pass
    return "unknown"


def _command(argv: list[str]) -> list[str]:
    """The command as a user typed it: ``trilevel …`` for the console script and ``python -m orchestrator``."""
    program = Path(argv[0]) if argv else Path("python")
    if program.name == "trilevel" or (program.name == "__main__.py" and program.parent.name == "orchestrator"):
        return ["trilevel", *argv[1:]]
    return [program.name, *argv[1:]]


def source_tags(argv: list[str] | None = None) -> dict[str, str]:
    """MLflow's source tags for the command that runs (`argv`, default ``sys.argv``), e.g. ``trilevel sweep table8``.

    ``mlflow.source.name`` is what the UI's Source column shows, and the UI shows only the part after
    the last ``/``, so paths in it are cut to their file names; ``trilevel.command`` keeps the command
    exactly. ``mlflow.source.type`` is ``LOCAL``, as for any process MLflow's own fluent API tracks.
    """
    words = _command(list(sys.argv if argv is None else argv))
    shown = [os.path.basename(word.rstrip("/")) or word if "/" in word else word for word in words]
    return {
        SOURCE_NAME_TAG: " ".join(shown)[:MAX_TAG_VALUE],
        SOURCE_TYPE_TAG: "LOCAL",
        COMMAND_TAG: shlex.join(words)[:MAX_TAG_VALUE],
    }


def run_environment_tags() -> dict[str, str]:
    """Tags that say where a run ran: git commit of the package source, package versions, host, platform.

    Keys: ``trilevel.git_commit``, ``trilevel.git_dirty``, ``mlflow.source.git.commit`` (shown by the
    MLflow UI), ``trilevel.version.<package>`` for trilevel-nas, torch, ray, mlflow, numpy and python,
    ``trilevel.hostname`` and ``trilevel.platform``, and the command's :func:`source_tags`. Nothing is
    imported to read versions.
    """
    commit, dirty = _git_commit(_SOURCE)
    tags = {
        "trilevel.git_commit": commit,
        "trilevel.git_dirty": dirty,
        "trilevel.hostname": socket.gethostname(),
        "trilevel.platform": platform.platform(),
        "trilevel.version.python": platform.python_version(),
    }
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    for package in _PACKAGES:
        tags[f"trilevel.version.{package}"] = package_version(package, _SOURCE)
    return tags | source_tags()
