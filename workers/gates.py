"""Test-only barriers at named moments of a stage, so a fault test causes its fault at that moment by construction.

A fault test must not race the run it faults ("fill the disk once a checkpoint is registered", "stop MLflow
while the search ends"): polling from outside lands wherever the run happens to be. Instead the stage stops
at a named point and waits for the test. Off unless ``TRILEVEL_TEST_GATES`` names a folder (nothing else
reads it; a run without it never looks at the filesystem here), and then only points the test armed block:

1. the test creates ``<folder>/<point>.wait`` (arms the gate);
2. a process reaching the point writes its pid to ``<folder>/<point>.reached`` and waits;
3. the test does what it must (fills the disk, kills a server or that very pid), then creates
   ``<folder>/<point>.go``; the process goes on (a retried process passes at once).

A point is ``<trial folder>/<run folder>/<checkpoint>@<digest of the run's full path>`` (:func:`checkpoint_point`),
reached just before that checkpoint is reported, i.e. after everything of the epochs before it was reported.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

__all__ = ["GATES_ENV", "checkpoint_point", "gate", "gate_file"]

GATES_ENV = "TRILEVEL_TEST_GATES"
_WAIT_S = 900.0  # a test that armed a gate and never opens it has failed: the run then fails instead of hanging


def checkpoint_point(checkpoints: str, name: str) -> str:
    """The point reached before checkpoint `name` of the run whose checkpoints are under `checkpoints`."""
    path = checkpoints.rstrip("/")
    digest = hashlib.sha1(path.encode()).hexdigest()[:8]  # two runs with the same trial and run names never meet
    return "/".join([*path.split("/")[-2:], name]) + f"@{digest}"


def gate_file(folder: str | Path, point: str, suffix: str) -> Path:
    """``<folder>/<point>.<suffix>``, the point's slashes made part of one file name."""
    return Path(folder) / f"{point.replace('/', '__')}.{suffix}"


def gate(point: str) -> None:
    """Wait at `point` if a test armed it (see the module's docstring); return at once otherwise."""
    folder = os.environ.get(GATES_ENV)
    if not folder or not gate_file(folder, point, "wait").exists():
        return
    go = gate_file(folder, point, "go")
    if go.exists():
        return
    reached = gate_file(folder, point, "reached")
    partial = reached.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(str(os.getpid()))
    partial.replace(reached)  # whole or absent: the test reads the pid as soon as the file exists
    deadline = time.monotonic() + _WAIT_S
    while not go.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"test gate {point}: not opened within {_WAIT_S:.0f} s ({go} never appeared)")
        time.sleep(0.05)
