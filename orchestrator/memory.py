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

A **GPU** out of memory is another failure: CUDA refused an allocation of the step itself, the node's
RAM is fine and the same step at the same shapes fails the same way on every retry. Its text contains
"OutOfMemoryError" too, so it must be told apart first (`gpu_out_of_memory`), reported with the knobs
that shrink a step's GPU memory (`gpu_memory_error_message`), and not retried: `GPUOutOfMemory`
failures go straight to ERROR in Tune (`trials_survive_memory_kills` installs that rule as well).
"""

from __future__ import annotations

import functools
from typing import Any

from ray.exceptions import OutOfMemoryError, RayActorError

__all__ = [
    "GPU_MEMORY_KNOBS",
    "MEMORY_KNOBS",
    "GPUOutOfMemory",
    "TrialKilledForMemory",
    "gpu_memory_error_message",
    "gpu_out_of_memory",
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
GPU_MEMORY_KNOBS = (
    "search_space.recompute_cells (0.5 recomputes every other cell's activations in backward: a dense "
    "paper-size search step then needs about a third of the memory, same gradients), stages.<stage>.batch_size, "
    "stages.patch, and resources.gpus_per_worker (a whole GPU per worker instead of a share)"
)
# What a CUDA out of memory looks like in a worker's traceback text (a Train worker's failure arrives as text).
_GPU_MARKERS = ("CUDA out of memory", "torch.OutOfMemoryError", "torch.cuda.OutOfMemoryError", "out of GPU memory")


class GPUOutOfMemory(RuntimeError):
    """A stage's step did not fit its GPU: the user must change a setting; retrying changes nothing."""


def _chain(err: BaseException) -> list[BaseException]:
    """`err`, its causes and contexts, and the worker failures of a Train error, each once."""
    seen: set[int] = set()
    found: list[BaseException] = []
    candidates: list[BaseException] = [err]
    while candidates:
        current = candidates.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        found.append(current)
        candidates += [e for e in (current.__cause__, current.__context__) if e is not None]
        candidates += list(getattr(current, "worker_failures", {}).values())
    return found


def _torch_oom_type() -> type[BaseException] | None:
    try:
        import torch
    except ImportError:  # the driver may run without torch
        return None
    return getattr(torch, "OutOfMemoryError", None)


def gpu_out_of_memory(err: BaseException) -> bool:
    """Whether CUDA ran out of memory behind `err` (torch's OutOfMemoryError, or its text from a worker)."""
    oom = _torch_oom_type()
    for current in _chain(err):
        if isinstance(current, GPUOutOfMemory) or (oom is not None and isinstance(current, oom)):
            return True
        if any(marker in str(current) for marker in _GPU_MARKERS):
            return True
    return False


def gpu_memory_error_message(where: str, err: BaseException) -> str:
    """One line: the GPU was too small for a step, what CUDA said, the knobs, and why it is not retried."""
    cuda_says = next((" ".join(str(e).split()) for e in _chain(err) if "out of memory" in str(e)), str(err))
    return (
        f"{where}: out of GPU memory in a training step (CUDA: {cuda_says[:300]}). The step does not fit the "
        f"GPU at these shapes; retrying would fail the same way, so it is not retried. Use less GPU memory per "
        f"step: {GPU_MEMORY_KNOBS}."
    )


class TrialKilledForMemory(RayActorError):
    """A trial's process killed by Ray's memory monitor: to Tune, the trial's actor died (it did)."""

    def __init__(self, message: str) -> None:
        super().__init__(error_msg=message)

    def __reduce__(self) -> tuple:
        return (type(self), (self.error_msg,))


def killed_for_memory(err: BaseException) -> bool:
    """Whether `err`, or anything in its cause chain or worker failures, is Ray's memory monitor at work.

    A CUDA out of memory is not (its text names an OutOfMemoryError too): see `gpu_out_of_memory`.
    """
    if gpu_out_of_memory(err):
        return False
    for current in _chain(err):
        if isinstance(current, OutOfMemoryError | TrialKilledForMemory):
            return True
        if any(marker in str(current) for marker in _MEMORY_MARKERS):
            return True
    return False


def memory_error_message(where: str) -> str:
    return (
        f"{where}: Ray's memory monitor killed its processes because the node ran low on memory. "
        f"Use less memory per step or fewer at once: {MEMORY_KNOBS}."
    )


def trials_survive_memory_kills() -> None:
    """Teach Tune's actor manager that a trial killed for memory is a failed trial, not a driver crash.

    Also: a trial that failed for GPU memory is not retried (`resources.max_failures` is for transient
    failures; the same step would fail the same way after a restart).
    """
    from ray.air.execution._internal.actor_manager import RayActorManager

    _gpu_oom_is_not_retried()

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


def _gpu_oom_is_not_retried() -> None:
    """Tune's failure handling: a trial whose error is a GPU out of memory goes to ERROR without a retry.

    Tune retries any failed trial up to `max_failures` (Ray 2.60 `TuneController._process_trial_failure`
    asks `trial.should_recover()`); for this one failure the trial's limit is 0 while Tune decides.
    """
    from ray.tune.execution.tune_controller import TuneController

    if getattr(TuneController._process_trial_failure, "_trilevel_gpu_oom", False):
        return
    original = TuneController._process_trial_failure

    @functools.wraps(original)
    def _process_trial_failure(self: Any, trial: Any, exception: Any) -> None:
        if exception is None or not gpu_out_of_memory(exception):
            original(self, trial, exception)
            return
        limit = trial.max_failures
        trial.max_failures = 0
        try:
            original(self, trial, exception)
        finally:
            trial.max_failures = limit

    _process_trial_failure._trilevel_gpu_oom = True  # type: ignore[attr-defined]
    TuneController._process_trial_failure = _process_trial_failure  # type: ignore[method-assign]
