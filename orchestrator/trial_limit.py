"""`resources.max_concurrent_trials` as Ray Tune 2.60 can honour it, for new and for resumed sweeps.

Why this module: Tune's own `TuneConfig.max_concurrent_trials` does nothing beside a
`BasicVariantGenerator` (`tune.run` logs that it "will be ignored"), and on `Tuner.restore` every
restored pending or errored trial is queued PENDING at once, past any search algorithm. The
controller starts each PENDING trial as soon as its resources fit (`TuneController._maybe_add_actors`,
step 2), whatever the scheduler says; a PAUSED trial it starts only when the scheduler's
`choose_trial_to_run` picks it (step 1). So the limit is a scheduler: every trial Tune adds is held
PAUSED (`on_trial_add` runs before the controller files the trial by its status), and
`choose_trial_to_run` lets one go only while fewer than `limit` trials are pending or running. The
schedulers the experiment offers (FIFO, ASHA, median stopping) all take it as a mixin. The basic
variant generator also gets the limit (it then makes trials no faster than they may run), and keeps
the current limit when a resume restores its saved state; so does the ConcurrencyLimiter around Optuna.
"""

from __future__ import annotations

from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, MedianStoppingRule
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

__all__ = [
    "UNLIMITED",
    "LimitedASHA",
    "LimitedFIFO",
    "LimitedGenerator",
    "LimitedMedian",
    "LimitedSearcher",
    "running_or_starting",
]

UNLIMITED = 2**31 - 1  # a ConcurrencyLimiter's "no limit" (it takes only a positive int) after a resume unset it

_BUSY = (Trial.PENDING, Trial.RUNNING)


def running_or_starting(trials: list[Trial]) -> int:
    """Trials that hold (or are being given) resources: every PENDING one was let go by the limit, or is a retry."""
    return sum(trial.status in _BUSY for trial in trials)


class _Limit:
    """At most `limit` trials pending or running at once; None: as many as the cluster's resources fit."""

    limit: int | None = None

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        super().on_trial_error(tune_controller, trial)  # type: ignore[misc]
        self._retried().add(trial.trial_id)

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        super().on_trial_add(tune_controller, trial)  # type: ignore[misc]  # the scheduler mixed in after this
        if trial.trial_id in self._retried():
            # A failed trial Tune retries (`TuneController._requeue_trial`: on_trial_error, filed PENDING, then
            # on_trial_add): it takes back the slot its failed run held, and is already filed by status, so
            # holding it here would leave the controller's books wrong (Tune asserts on them when it starts it).
            self._retried().discard(trial.trial_id)
            return
        if self.limit is not None and trial.status == Trial.PENDING:
            trial.set_status(Trial.PAUSED)  # held: only choose_trial_to_run starts it

    def _retried(self) -> set[str]:
        if not hasattr(self, "_retried_ids"):
            self._retried_ids: set[str] = set()
        return self._retried_ids

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        if self.limit is not None and running_or_starting(tune_controller.get_trials()) >= self.limit:
            return None
        return super().choose_trial_to_run(tune_controller)  # type: ignore[misc]  # FIFO's: PENDING, then PAUSED


class LimitedFIFO(_Limit, FIFOScheduler):
    """FIFO scheduling (every trial runs to its end), at most `limit` trials at once."""

    def __init__(self, limit: int | None = None) -> None:
        super().__init__()
        self.limit = limit


class LimitedASHA(_Limit, AsyncHyperBandScheduler):
    """ASHA, at most `limit` trials at once."""

    def __init__(self, *, limit: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.limit = limit


class LimitedMedian(_Limit, MedianStoppingRule):
    """The median stopping rule, at most `limit` trials at once."""

    def __init__(self, *, limit: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.limit = limit


class LimitedGenerator(BasicVariantGenerator):
    """Tune's variant generator whose `max_concurrent` is the current one, also after a resume restored its state.

    `BasicVariantGenerator.set_state` (a resume) brings back every attribute it saved, the limit the sweep
    started with among them; a resume with another `resources.max_concurrent_trials` must keep the new one.
    """

    def set_state(self, state: dict[str, Any]) -> None:
        limit = self.max_concurrent
        super().set_state(state)
        self.max_concurrent = limit


class LimitedSearcher(ConcurrencyLimiter):
    """Tune's ConcurrencyLimiter whose `max_concurrent` is the current one, also after a resume restored its state.

    `SearchGenerator.restore_from_dir` calls `set_state` with every attribute the limiter saved, its
    `max_concurrent` among them; a resume with another `resources.max_concurrent_trials` sets the new
    one first (`orchestrator.sweep._apply_run_settings`), and it stays.
    """

    def set_state(self, state: dict[str, Any]) -> None:
        limit = self.max_concurrent
        super().set_state(state)
        self.max_concurrent = limit
