"""Real faults for tests: fill up a real filesystem, bound what the processes of a test may use of memory."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import signal
import subprocess
import time
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


@contextlib.contextmanager
def memory_cgroup(limit_bytes: int) -> Iterator[list[str] | None]:
    """A memory cgroup of `limit_bytes` for the processes a test starts, as Ray's memory monitor reads it.

    Yields a command prefix: what runs under it joins the cgroup, in a mount namespace of its own where the
    cgroup's files are bind-mounted where Ray reads the machine's (cgroup v1: ``/sys/fs/cgroup/memory``). Ray
    then takes the cgroup's limit for the node's total and the cgroup's usage for what is used: its memory
    threshold counts only what the test started, whatever else runs on the machine.
    Yields None where this cannot be set up (no cgroup v1 memory controller we may write to, no `unshare`, not
    root); every process left in the cgroup is killed and the cgroup removed at the end.
    """
    own = next(
        (line.split(":", 2)[2] for line in Path("/proc/self/cgroup").read_text().splitlines() if ":memory:" in line),
        None,
    )
    parent = Path("/sys/fs/cgroup/memory") / (own or "").lstrip("/")
    if own is None or not os.access(parent, os.W_OK) or shutil.which("unshare") is None:
        yield None
        return
    group = parent / f"trilevel-test-{secrets.token_hex(4)}"
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(limit_bytes))
    except OSError:
        with contextlib.suppress(OSError):
            group.rmdir()
        yield None
        return
    inner = 'mount --bind "$0" /sys/fs/cgroup/memory && exec "$@"'
    unshare = f'exec unshare --mount --propagation private sh -c \'{inner}\' "{group}" "$@"'
    outer = f'echo $$ > "{group}/cgroup.procs" && {unshare}'
    try:
        yield ["sh", "-c", outer, "sh"]
    finally:
        for _ in range(50):
            pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
            if not pids:
                break
            for pid in pids:  # only processes this test started can be in its cgroup
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        with contextlib.suppress(OSError):
            group.rmdir()
