"""The test side of `workers.gates`: arm a named point of a run, wait until the run stands there, let it go on."""

from __future__ import annotations

import os
import time
from pathlib import Path

from workers.gates import GATES_ENV, checkpoint_point, gate_file

__all__ = ["Gate"]


class Gate:
    """The barrier before checkpoint `name` of the run whose checkpoints are under `checkpoints`.

    The folder is the session's (tests/conftest.py puts it in the environment every process of the tests'
    Rays inherits), so a gate armed here stops the run in whichever process reaches it.
    """

    def __init__(self, checkpoints: str | Path, name: str) -> None:
        self.point = checkpoint_point(str(checkpoints), name)
        folder = os.environ[GATES_ENV]
        self._wait, self._reached, self._go = (gate_file(folder, self.point, s) for s in ("wait", "reached", "go"))

    def arm(self) -> Gate:
        self._wait.touch()
        return self

    def reached(self) -> bool:
        return self._reached.exists()

    def wait(self, timeout_s: float = 600) -> int:
        """Block until a process stands at the point; its pid."""
        deadline = time.monotonic() + timeout_s
        while not self._reached.exists():
            if time.monotonic() > deadline:
                raise AssertionError(f"no process reached {self.point} within {timeout_s:.0f} s")
            time.sleep(0.05)
        return int(self._reached.read_text())

    def open(self) -> None:
        self._go.touch()

    def __enter__(self) -> Gate:
        return self.arm()

    def __exit__(self, *exc: object) -> None:
        """Disarmed and gone: a process still waiting goes on, a later one passes without waiting."""
        self.open()
        for path in (self._wait, self._reached):
            path.unlink(missing_ok=True)
