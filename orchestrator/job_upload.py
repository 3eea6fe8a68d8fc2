"""What a submitted job carries to the cluster: this package's source code, and nothing else.

The code travels in the job's ``runtime_env``: ``working_dir`` is this package's source root (the
folder holding `orchestrator/`, `workers/` and `search_space/`), minus data, runs, databases,
virtualenvs and caches (``EXCLUDES``) and minus any file over ``LARGE_FILE_BYTES`` (each named:
data and weights belong on the cluster's storage). A pip-installed package (site-packages) is first
copied to a temporary folder holding only those three packages, so site-packages is never uploaded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from orchestrator.jobs import SubmitError

__all__ = ["EXCLUDES", "LARGE_FILE_BYTES", "large_files", "source_root", "upload_dir", "upload_excludes"]

# gitignore-style patterns, relative to the working_dir (Ray also honours its .gitignore).
EXCLUDES: tuple[str, ...] = (
    "data",
    "runs",
    "mlruns",
    "mlartifacts",
    "*.db",
    ".venv",
    ".git",
    "bench/results",
    "__pycache__",
    "*.pyc",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
    "trilevel-runs",
    "trilevel-data",
    "trilevel-reports",
    "checkpoints",
    "weights",
    "*.pth",
    "*.pt",
    "*.ckpt",
    "*.safetensors",
)
LARGE_FILE_BYTES = 8 * 1024 * 1024  # a source tree has nothing this big; Ray caps the whole upload near 512 MiB
_PACKAGES = ("orchestrator", "workers", "search_space")


def source_root() -> Path:
    """The folder that holds this package's `orchestrator/`, `workers/` and `search_space/`."""
    import orchestrator

    root = Path(orchestrator.__file__).resolve().parent.parent
    missing = [p for p in _PACKAGES if not (root / p / "__init__.py").is_file()]
    if missing:
        raise SubmitError(f"{root} lacks the packages {', '.join(missing)}: pass working_dir explicitly.")
    return root


@contextlib.contextmanager
def upload_dir(working_dir: str | None) -> Iterator[str]:
    """The folder to upload: `working_dir`, the source checkout, or a staged copy of an installed package."""
    if working_dir is not None:
        if not os.path.isdir(working_dir):
            raise SubmitError(f"working_dir {working_dir}: no such directory")
        yield os.path.abspath(working_dir)
        return
    root = source_root()
    if root.name not in ("site-packages", "dist-packages"):
        yield str(root)
        return
    with tempfile.TemporaryDirectory(prefix="trilevel-submit-") as staged:
        for package in _PACKAGES:
            shutil.copytree(root / package, Path(staged) / package, ignore=shutil.ignore_patterns(*EXCLUDES))
        yield staged


def large_files(root: str, excludes: Sequence[str] = EXCLUDES, limit: int = LARGE_FILE_BYTES) -> list[tuple[str, int]]:
    """(path relative to `root`, bytes) of every file over `limit` that the job's upload would carry.

    The walk is Ray's own (`runtime_env` packaging: `excludes` and `.gitignore`/`.rayignore`), so the
    list is exactly what `submit_job` would zip; sorted by path.
    """
    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    base = Path(root).absolute()
    found: list[tuple[str, int]] = []

    def visit(path: Path) -> None:
        if path.is_file() and not path.is_symlink() and (size := path.stat().st_size) > limit:
            found.append((path.relative_to(base).as_posix(), size))

    include_gitignore = os.environ.get(ray_constants.RAY_RUNTIME_ENV_IGNORE_GITIGNORE, "0") != "1"
    _dir_travel(base, [_get_excludes(base, list(excludes))], visit, include_gitignore=include_gitignore)
    return sorted(found)


def upload_excludes(upload: str, echo: Callable[[str], None]) -> list[str]:
    """EXCLUDES plus every large file of the upload, each named (data and weights belong on the cluster's storage)."""
    extra = []
    for relative, size in large_files(upload):
        echo(
            f"Not uploading {relative} ({size / 2**20:.0f} MiB): the job ships source code only; put data and "
            "weights on the cluster's storage and point the experiment at them.\n"
        )
        extra.append(f"/{relative}")
    return [*EXCLUDES, *extra]
