"""Real faults for tests: kill processes of *this* test session's Ray (Linux /proc), fill up a real filesystem."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def _parent(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def descendants_titled(prefix: str, root: int | None = None) -> list[int]:
    """PIDs whose command line starts with `prefix` and that descend from `root` (default: us)."""
    root = os.getpid() if root is None else root
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if not _title(pid).startswith(prefix):
            continue
        ancestor: int | None = pid
        while ancestor and ancestor != root:
            ancestor = _parent(ancestor)
        if ancestor == root:
            found.append(pid)
    return found


class KillWhen(threading.Thread):
    """Background thread: once `condition()` holds, SIGKILL the first process titled `prefix`."""

    def __init__(self, condition: Callable[[], bool], prefix: str, timeout: float = 300.0) -> None:
        super().__init__(daemon=True)
        self.condition, self.prefix, self.timeout = condition, prefix, timeout
        self.killed_pid: int | None = None
        self.state_at_kill: object = None

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.condition():
                for pid in descendants_titled(self.prefix):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        continue
                    self.killed_pid = pid
                    return
            time.sleep(0.05)


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
