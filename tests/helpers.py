"""What many tests repeat: tiny experiments and plans, waiting for a condition."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from orchestrator.experiment import Experiment, load_experiment, trials
from orchestrator.plan import TrialPlan, plan_trial, resolve_data

# A supernet small enough for CPU tests: 2 cells (backbone A: 9 tree nodes), 16 features.
TINY = (
    "search_space.num_cells=2",
    "search_space.nf=16",
    "search_space.widths=[8, 12, 16]",
    "stages.patch=16",
    "stages.val_max_images=1",
    "stages.checkpoint_every=1",
    "stages.pretrain.batch_size=2",
    "stages.search.batch_size=2",
    "stages.train.batch_size=2",
)

# One epoch of one step in every stage: for tests that need a whole trial, not its training.
ONE_STEP_PER_STAGE = (
    "stages.pretrain.epochs=1",
    "stages.pretrain.steps_per_epoch=1",
    "stages.search.epochs=1",
    "stages.search.steps_per_epoch=1",
    "stages.train.epochs=1",
    "stages.train.steps_per_epoch=1",
)


def tiny_experiment(storage: str, overrides: Sequence[str] = (), preset: str = "table8") -> Experiment:
    """A tiny-scale preset with a 2-cell supernet, storing under `storage`."""
    return load_experiment(preset, "tiny", (*TINY, *overrides), storage=storage)


def tiny_plan(storage: str, overrides: Sequence[str] = (), trial: int = 0, sweep: str = "sw") -> TrialPlan:
    """The plan of one trial of a tiny experiment (data resolved under `storage`)."""
    experiment = tiny_experiment(storage, overrides)
    return plan_trial(trials(experiment)[trial], resolve_data(experiment, storage), storage, sweep)


def wait_for(condition: Callable[[], bool], timeout_s: float = 120.0, what: str = "condition") -> None:
    """Poll `condition` until it holds; fail the test naming `what` if it never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
