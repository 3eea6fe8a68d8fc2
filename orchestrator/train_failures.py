"""Ray Train's failure policy for our runs: retry worker failures as Train does, except a CUDA out of memory.

Why: `FailureConfig(max_failures=N)` makes Train restart the worker group after any worker error, and a
step that did not fit its GPU fails the same way after every restart: N restarts of a paper-size worker
group (minutes each) before the trial even hears of it. The single-worker path classifies that error
at once (`orchestrator.memory.gpu_out_of_memory`); this policy gives Train's controller the same rule,
so a multi-worker run raises it on the first occurrence and the trial reports it with the knobs.

Ray 2.60's Train V2 has no public hook for the failure decision: the trainer builds its
`DefaultFailurePolicy` in the driver and hands it to the controller actor, which calls
`make_decision` on every failure. `StageTrainer` hands it this subclass instead (pickled by reference:
the controller imports this small module). Should that private seam move, Train's own policy applies
and only the fast failure is lost: the error is still classified and said right afterwards.
"""

from __future__ import annotations

from typing import Any

from ray.train.torch import TorchTrainer
from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy, FailureDecision

from orchestrator.memory import gpu_out_of_memory

__all__ = ["GPUOutOfMemoryIsFinal", "StageTrainer"]


class GPUOutOfMemoryIsFinal(DefaultFailurePolicy):
    """Train's default decisions, with a CUDA out of memory raised at once instead of retried."""

    def make_decision(self, training_failed_error: Any) -> FailureDecision:
        if gpu_out_of_memory(training_failed_error):
            return FailureDecision.RAISE
        return super().make_decision(training_failed_error)


class StageTrainer(TorchTrainer):
    """A TorchTrainer whose controller does not retry a CUDA out of memory (:class:`GPUOutOfMemoryIsFinal`)."""

    def _initialize_and_run_controller(self, **controller_init_kwargs: Any) -> Any:
        if isinstance(controller_init_kwargs.get("failure_policy"), DefaultFailurePolicy):
            controller_init_kwargs["failure_policy"] = GPUOutOfMemoryIsFinal(self.run_config.failure_config)
        return super()._initialize_and_run_controller(**controller_init_kwargs)
