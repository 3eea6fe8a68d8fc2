"""Real faults for tests: find and kill processes of *this* test session's Ray (Linux /proc)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
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
