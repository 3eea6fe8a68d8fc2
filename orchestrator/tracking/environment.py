"""Tags that say where and how a run ran: git commit, package versions, host, and the command.

Every run records them so a result can be traced back to the code and the command that made it.
Nothing is imported to read versions (package metadata only), and git is asked at most once per
tracker (the tracker caches these tags).

On a cluster the code has no ``.git``: a submitted job's working_dir is uploaded without it, and the
image holds an installed package. There the code's provenance comes from the environment
(``TRILEVEL_GIT_COMMIT``, ``TRILEVEL_GIT_DIRTY``, ``TRILEVEL_VERSION``): `trilevel submit` sets them
in the job's env_vars from the submitting checkout (:func:`code_provenance`), and the cluster image
bakes the commit in at build time (deployment/docker/Dockerfile). Where they are set they win over
what the process could find out locally, since they were taken where the code came from.
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

__all__ = [
    "COMMIT_ENV_VAR",
    "DIRTY_ENV_VAR",
    "VERSION_ENV_VAR",
    "code_provenance",
    "package_version",
    "run_environment_tags",
    "source_tags",
]

COMMIT_ENV_VAR = "TRILEVEL_GIT_COMMIT"
DIRTY_ENV_VAR = "TRILEVEL_GIT_DIRTY"
VERSION_ENV_VAR = "TRILEVEL_VERSION"
_UNKNOWN = "unknown"

_PACKAGES = ("trilevel-nas", "torch", "ray", "mlflow", "numpy")
_SOURCE = Path(__file__).resolve().parents[2]  # the checkout (or site-packages) holding orchestrator/


def _git_commit(source: Path) -> tuple[str, str]:
    """(commit, dirty) of the checkout holding `source`, or ("unknown", "unknown") outside git.

    An installed package (site-packages) has no commit of its own: a venv inside some checkout would
    otherwise report that checkout's commit.
    """
    if source.name in ("site-packages", "dist-packages"):
        return _UNKNOWN, _UNKNOWN
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
        return _UNKNOWN, _UNKNOWN
    return (commit or _UNKNOWN), ("true" if changed else "false")


def package_version(name: str, source: Path | None = None) -> str:
    """The installed version of `name`; for trilevel-nas run from an uninstalled checkout, its pyproject's."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
    if name == "trilevel-nas" and source is not None:  # a checkout that is not installed: read its pyproject
        return _pyproject_version(source) or _UNKNOWN
    return _UNKNOWN


def _from_env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value if value and value != _UNKNOWN else None


def code_provenance(source: Path | None = None) -> dict[str, str]:
    """The commit, dirty flag and trilevel-nas version of the code at `source`, keyed by their env vars.

    `source` is the folder holding `orchestrator/` (default: the code running now). The env vars win
    where set (the code was submitted or baked into an image); otherwise git is asked about `source`
    and the version is the one in its pyproject.toml (a checkout, perhaps not the installed one), or
    the installed package's. What cannot be known is ``"unknown"``. `trilevel submit` passes the
    result to the job as its env vars, so the job's runs carry the submitting checkout's commit.
    """
    source = _SOURCE if source is None else Path(source)
    commit, dirty = _from_env(COMMIT_ENV_VAR), _from_env(DIRTY_ENV_VAR)
    if commit is None:
        commit, dirty = _git_commit(source)
    version = _from_env(VERSION_ENV_VAR) or _pyproject_version(source) or package_version("trilevel-nas")
    return {COMMIT_ENV_VAR: commit, DIRTY_ENV_VAR: dirty or _UNKNOWN, VERSION_ENV_VAR: version}


def _pyproject_version(source: Path) -> str | None:
    """The version in `source`/pyproject.toml when it is this project's, else None."""
    import tomllib

    try:
        with open(source / "pyproject.toml", "rb") as handle:
            project = tomllib.load(handle)["project"]
    except (OSError, KeyError, ValueError):
        return None
    return str(project["version"]) if project.get("name") == "trilevel-nas" and "version" in project else None


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
    provenance = code_provenance()
    commit, dirty = provenance[COMMIT_ENV_VAR], provenance[DIRTY_ENV_VAR]
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
    tags["trilevel.version.trilevel-nas"] = provenance[VERSION_ENV_VAR]
    return tags | source_tags()
