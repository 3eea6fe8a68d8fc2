"""Out of memory is a handled failure: one trial fails with a message that says so, the sweep goes on.

Ray's memory monitor kills worker processes when a node runs low on memory. Two things go wrong
without this module:

- A killed **Train worker** surfaces in the trial as a `TrainingFailedError` whose cause is buried
  in a worker traceback; `memory_error_message` recognises it and says what to change.
- A killed **trial process** makes Ray 2.60's Tune actor manager raise `RuntimeError("Caught
  unexpected exception: ...")` *in the driver*, because it expects only `RayActorError` or
  `RayTaskError` from a trial's task and the memory monitor's `OutOfMemoryError` is neither: the
  driver dies and takes every trial with it. `trials_survive_memory_kills` makes Tune treat that
  error as the trial's actor dying (which it did), so Tune retries or fails that one trial.
"""

from __future__ import annotations

import functools
from typing import Any

from ray.exceptions import OutOfMemoryError, RayActorError

__all__ = [
    "MEMORY_KNOBS",
    "TrialKilledForMemory",
    "killed_for_memory",
    "memory_error_message",
    "trials_survive_memory_kills",
]

MEMORY_KNOBS = (
    "stages.<stage>.batch_size, stages.patch, resources.workers.<stage>, resources.max_concurrent_trials and "
    "search_space.recompute_cells (`trilevel resume NAME --set resources.max_concurrent_trials=1` runs the "
    "trials one at a time; `--set search_space.recompute_cells=0.5` stores half the cells' activations)"
)
_MEMORY_MARKERS = ("OutOfMemoryError", "running low on memory")


class TrialKilledForMemory(RayActorError):
    """A trial's process killed by Ray's memory monitor: to Tune, the trial's actor died (it did)."""

    def __init__(self, message: str) -> None:
        super().__init__(error_msg=message)

    def __reduce__(self) -> tuple:
        return (type(self), (self.error_msg,))


def killed_for_memory(err: BaseException) -> bool:
    """Whether `err`, or anything in its cause chain or worker failures, is Ray's memory monitor at work."""
    seen: set[int] = set()
    candidates: list[BaseException] = [err]
    while candidates:
        current = candidates.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OutOfMemoryError | TrialKilledForMemory):
            return True
        if any(marker in str(current) for marker in _MEMORY_MARKERS):
            return True
        candidates += [e for e in (current.__cause__, current.__context__) if e is not None]
        candidates += list(getattr(current, "worker_failures", {}).values())
    return False


def memory_error_message(where: str) -> str:
    return (
        f"{where}: Ray's memory monitor killed its processes because the node ran low on memory. "
        f"Use less memory per step or fewer at once: {MEMORY_KNOBS}."
    )


def trials_survive_memory_kills() -> None:
    """Teach Tune's actor manager that a trial killed for memory is a failed trial, not a driver crash."""
    from ray.air.execution._internal.actor_manager import RayActorManager

    if getattr(RayActorManager._actor_task_failed, "_trilevel_memory_kills", False):
        return
    original = RayActorManager._actor_task_failed

    @functools.wraps(original)
    def _actor_task_failed(self: Any, tracked_actor_task: Any, exception: Exception) -> None:
        if isinstance(exception, OutOfMemoryError):  # one line: the sweep's summary shows an error's last line
            ray_says = " ".join(str(exception).split())[:400]
            exception = TrialKilledForMemory(f"{memory_error_message('the trial')} Ray: {ray_says}")
        original(self, tracked_actor_task, exception)

    _actor_task_failed._trilevel_memory_kills = True  # type: ignore[attr-defined]
    RayActorManager._actor_task_failed = _actor_task_failed  # type: ignore[method-assign]
