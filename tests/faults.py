"""Real faults for tests: fill up a real filesystem."""

from __future__ import annotations

import contextlib
import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def small_filesystem(path: Path, size: str = "16m") -> Iterator[Path]:
    """A real, small filesystem (tmpfs) mounted at `path` for the block, so a test can fill it up.

    Needs permission to mount (root or CAP_SYS_ADMIN); skips the test, saying so, without it.
    """
    import pytest

    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up ({mounted.stderr.strip() or 'mount failed'}); needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_up(directory: Path) -> Path:
    """Write zeros to a ballast file in `directory` until its filesystem is full; returns the file.

    Unbuffered, so nothing is left to flush (and fail) when the file is closed.
    """
    ballast = directory / "ballast.bin"
    with open(ballast, "wb", buffering=0) as out:
        for size in (1 << 16, 1 << 10, 1):  # big chunks, then top up what a big chunk could not use
            chunk = b"\0" * size
            try:
                while True:
                    out.write(chunk)
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise
    return ballast
