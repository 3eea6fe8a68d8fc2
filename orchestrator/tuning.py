"""The experiment's `tune:` block as Ray Tune objects: param space, scheduler, search algorithm, callbacks.

A trial's Tune config is `{"axes": {dotted field: value}}`: grid axes (`sweep:`) as `tune.grid_search`,
searched axes (`tune.search.space`) as Tune distributions. Tune's variant generator (`random`) runs
every grid point, drawing the searched axes `num_samples` times; Optuna (`optuna`, the `tune` extra)
suggests them from the trials so far. Schedulers act on every epoch's result (`orchestrator.tune_reports`):
their time is `epochs_done`, so a grace period is in epochs of the whole pipeline.
"""

from __future__ import annotations

import importlib
from typing import Any

from orchestrator.experiment import Experiment, ExperimentError, SpaceAxis

__all__ = ["TIME_ATTR", "param_space", "scheduler", "search_algorithm", "total_epochs", "tune_callbacks"]

TIME_ATTR = "epochs_done"


def _distribution(axis: SpaceAxis) -> Any:
    from ray import tune

    if axis.kind == "choice":
        return tune.choice(list(axis.values or []))
    low, high = float(axis.low or 0), float(axis.high or 0)
    if axis.kind == "loguniform":
        return tune.loguniform(low, high)
    if axis.kind == "randint":
        return tune.randint(int(low), int(high))
    return tune.uniform(low, high)


def param_space(experiment: Experiment) -> dict[str, Any]:
    """`{"axes": {...}}`: grid axes as grid_search (none with Optuna), searched axes as Tune distributions."""
    from ray import tune

    axes: dict[str, Any] = {axis: tune.grid_search(list(values)) for axis, values in experiment.sweep.items()}
    axes |= {axis: _distribution(spec) for axis, spec in experiment.tune.search.space.items()}
    return {"axes": axes}


def total_epochs(experiment: Experiment) -> int:
    """Epochs of a whole trial of `experiment` (every stage, finetune included): ASHA's default max_t."""
    stages = experiment.stages
    finetune = stages.train.finetune.epochs if stages.train.finetune else 0
    return stages.pretrain.epochs + stages.search.epochs + stages.train.epochs + finetune


def scheduler(experiment: Experiment) -> Any:
    """The trial scheduler of `tune.scheduler` (FIFO: none stops early), holding `resources.max_concurrent_trials`.

    The limit is the scheduler's (:mod:`orchestrator.trial_limit`): Tune 2.60 honours no other for a
    variant generator's trials, nor for the trials a resume restores.
    """
    from orchestrator.trial_limit import LimitedASHA, LimitedFIFO, LimitedMedian

    spec = experiment.tune.scheduler
    limit = experiment.resources.max_concurrent_trials
    if spec.kind == "asha":
        max_t = spec.max_t or max(total_epochs(experiment), spec.grace_period)
        return LimitedASHA(
            limit=limit,
            time_attr=TIME_ATTR,
            metric=spec.metric,
            mode=spec.mode,
            grace_period=spec.grace_period,
            reduction_factor=spec.reduction_factor,
            max_t=max_t,
            stop_last_trials=False,  # a trial at max_t goes on to its evaluation
        )
    if spec.kind == "median":
        return LimitedMedian(
            limit=limit,
            time_attr=TIME_ATTR,
            metric=spec.metric,
            mode=spec.mode,
            grace_period=spec.grace_period,
            min_samples_required=2,
        )
    return LimitedFIFO(limit)


def _points(experiment: Experiment, flat: bool) -> list[dict[str, Any]] | None:
    """Warm-start points as configs (`{"axes": {...}}`); Optuna names parameters by flattened path instead."""
    points = experiment.tune.search.points
    if flat:
        return [{f"axes/{axis}": value for axis, value in point.items()} for point in points] or None
    return [{"axes": dict(point)} for point in points] or None


def search_algorithm(experiment: Experiment) -> Any:
    """The search algorithm of `tune.search`, suggesting no more trials than may run at once.

    `resources.max_concurrent_trials` (None: no limit) goes to Tune's variant generator or to a
    ConcurrencyLimiter around Optuna; the scheduler (:func:`scheduler`) holds the same limit for the
    trials a resume restores. Optuna missing is an error that says how to install it.
    """
    spec = experiment.tune.search
    max_concurrent = experiment.resources.max_concurrent_trials
    if spec.kind == "optuna":
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise ExperimentError(
                "tune.search.kind: optuna needs the optuna package: pip install 'trilevel-nas[tune]'"
            ) from None
        from ray.tune.search.optuna import OptunaSearch

        from orchestrator.trial_limit import LimitedSearcher

        searcher = OptunaSearch(
            metric=spec.metric, mode=spec.mode, points_to_evaluate=_points(experiment, flat=True), seed=spec.seed
        )
        return searcher if max_concurrent is None else LimitedSearcher(searcher, max_concurrent=max_concurrent)
    from orchestrator.trial_limit import LimitedGenerator

    return LimitedGenerator(
        points_to_evaluate=_points(experiment, flat=False), random_state=spec.seed, max_concurrent=max_concurrent or 0
    )


def tune_callbacks(experiment: Experiment) -> list[Any]:
    """The user's Tune callbacks (`tune.callbacks`: dotted paths of `ray.tune.Callback` classes), instantiated."""
    from ray.tune import Callback

    out = []
    for i, path in enumerate(experiment.tune.callbacks):
        module, _, name = path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as err:
            raise ExperimentError(f"tune.callbacks.{i}: cannot import {path} ({err})") from None
        if not (isinstance(cls, type) and issubclass(cls, Callback)):
            raise ExperimentError(f"tune.callbacks.{i}: {path} is not a ray.tune.Callback class")
        out.append(cls())
    return out
