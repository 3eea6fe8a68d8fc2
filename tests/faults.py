"""Real faults for tests: fill up a real filesystem, bound what the processes of a test may use of memory."""

from __future__ import annotations

import contextlib
import dataclasses
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


CGROUP_V1_MEMORY = Path("/sys/fs/cgroup/memory")  # where Ray 2.60's raylet reads a node's memory (cgroup v1)


@dataclasses.dataclass(frozen=True)
class MemoryCgroup:
    """A cgroup v1 memory cgroup of the test's own: `wrap` is the command prefix that runs a command inside it."""

    path: Path
    limit: int
    wrap: tuple[str, ...]

    def used(self) -> int:
        """What Ray's memory monitor counts as used in it: usage less the file cache (reclaimable)."""
        stat = dict(line.split() for line in (self.path / "memory.stat").read_text().splitlines())
        usage = int((self.path / "memory.usage_in_bytes").read_text())
        return usage - int(stat["total_inactive_file"]) - int(stat["total_active_file"])


@contextlib.contextmanager
def memory_cgroup(limit_bytes: int) -> Iterator[MemoryCgroup]:
    """A memory cgroup of `limit_bytes` for the processes a test starts, seen by Ray as the machine's memory.

    What runs under its `wrap` joins the cgroup, in a mount namespace of its own where the cgroup's folder is
    bind-mounted over ``/sys/fs/cgroup/memory``: the raylet's memory monitor reads ``memory.limit_in_bytes``
    (or ``memory.memsw.limit_in_bytes`` when it counts swap) as the node's total and the cgroup's usage less its
    file cache as what is used (Ray 2.60: src/ray/common/monitors/memory_monitor_utils.cc), so its kill threshold
    counts only what the test started, whatever else runs on the machine. The kernel enforces the limit too:
    choose it well above the threshold, so that Ray's monitor acts first.

    Skips the test, saying why, where it cannot be made: no cgroup v1 memory controller (a cgroup v2-only
    machine), not allowed to create a cgroup or to mount (not root), no `unshare`. Every process still in the
    cgroup at the end (only the test's can be) is killed and the cgroup removed.
    """
    import pytest

    own = next(
        (line.split(":", 2)[2] for line in Path("/proc/self/cgroup").read_text().splitlines() if ":memory:" in line),
        None,
    )
    if own is None or not (CGROUP_V1_MEMORY / "memory.limit_in_bytes").exists():
        pytest.skip("no cgroup v1 memory controller at /sys/fs/cgroup/memory (where Ray reads a node's memory)")
    if shutil.which("unshare") is None:
        pytest.skip("no `unshare` (util-linux) to give Ray's head a mount namespace of its own")
    group = CGROUP_V1_MEMORY / own.lstrip("/") / f"trilevel-test-{secrets.token_hex(4)}"
    try:
        group.mkdir()
    except OSError as err:
        pytest.skip(f"cannot create a memory cgroup under {group.parent} ({err.strerror}); needs root")
    try:
        (group / "memory.limit_in_bytes").write_text(str(limit_bytes))
        if (group / "memory.memsw.limit_in_bytes").exists():  # RAM + swap: read instead when Ray counts swap
            (group / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
        inner = 'mount --bind "$0" /sys/fs/cgroup/memory && exec "$@"'
        unshare = f'exec unshare --mount --propagation private sh -c \'{inner}\' "{group}" "$@"'
        cgroup = MemoryCgroup(group, limit_bytes, ("sh", "-c", f'echo $$ > "{group}/cgroup.procs" && {unshare}', "sh"))
        seen = subprocess.run(
            [*cgroup.wrap, "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes"], capture_output=True, text=True
        )
        if seen.stdout.strip() != str(limit_bytes):
            pytest.skip(f"cannot show the cgroup's limit where Ray reads it: {seen.stderr.strip() or seen.stdout!r}")
        yield cgroup
    finally:
        for _ in range(100):
            pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
            if not pids:
                break
            for pid in pids:  # only processes this test started can be in its cgroup
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        with contextlib.suppress(OSError):
            group.rmdir()
