"""`trilevel reproduce`: Tables 7, 8, 9 and Fig. 1 at one scale and N seeds, each distinct stage computed once.

The requested tables are the presets `table7`, `table8`, `table9` and `fig1` at the scale, each with
the seeds as one more sweep axis (`seed: [0, …, N-1]`, when N > 1) and optionally the random
FLOPs-matched baseline beside every arm (`--random K`), exactly as `trilevel sweep --seeds --random`.
The random arms share their searched twin's pretrain and search (same keys): only their train is new.
They run as one sweep per table, in order, on one storage path: the stage store
(`workers.stage_store`) makes every stage that
another arm already computed, in this table or an earlier one, a reference to the stored one. So
`table7`'s sparsestmax arm, `table8`'s λ = 0.1 arm and `table9`'s trilevel arm (one configuration)
are trained once, and every backbone-A arm of a seed shares one pretrain (pretraining reads neither
λ_order nor the combiner: measured, tests/workers/test_stage_store.py). What is repeated per table is
each trial's evaluation, which is seconds. Each sweep resumes like any sweep (the same command again).

Why sweeps per table rather than one Tune sweep over the union: each table's report, status and
resume stay the ones users know, and the union's saving comes from the store; trials of different
tables do not run at the same time (on 2 cores, 3 concurrent trials already keep both busy).

`plan_reproduce` counts, without computing anything, the arms requested vs distinct (by the key of
their last stage, which holds every upstream key), the stages requested vs distinct vs already stored,
and estimates the time from the stage-steps left to compute.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from orchestrator.experiment import Experiment, ExperimentError, load_experiment, trials, with_random, with_seeds
from workers.stage_list import STAGES

if TYPE_CHECKING:  # imported where used: the CLI's options read ALL_TABLES at start-up, planning costs ~0.3 s
    from orchestrator.plan import TrialPlan
    from workers.stage_store import StageKey

__all__ = ["ALL_TABLES", "SECONDS_PER_STEP", "TABLES", "ReproducePlan", "plan_reproduce", "reproduce_experiments"]

TABLES: dict[str, str] = {"7": "table7", "8": "table8", "9": "table9", "fig1": "fig1"}
ALL_TABLES: tuple[str, ...] = tuple(TABLES)  # what `--tables` means when not given (local and submitted)
# CPU seconds per optimisation step of one trial (one thread), by backbone and stage, at `small` (2 cells,
# nf 16, patch 24): `python -m bench.stage_steps --steps 3`, 2026-12-07 (validation passes not included).
# Pretrain: a 4-pass sandwich; search: an architecture step and a weight step; train: the derived network.
SECONDS_PER_STEP: dict[str, dict[str, float]] = {
    "A": {"pretrain": 1.67, "search": 0.72, "train": 0.08},
    "B": {"pretrain": 0.37, "search": 0.27, "train": 0.05},
}


@dataclass(frozen=True)
class ReproducePlan:
    """What `trilevel reproduce` would run, counted before anything runs."""

    sweeps: list[Experiment]
    plans: dict[str, list[TrialPlan]]  # sweep name → its trials' plans
    arms_requested: int
    arms_distinct: int
    stages_requested: dict[str, int]  # stage → count over every arm
    stages_distinct: dict[str, int]  # stage → distinct keys
    stages_stored: dict[str, int]  # stage → distinct keys already in the store
    estimate_s: float  # for the distinct stages not stored yet, spread over the concurrent trials
    steps_to_compute: dict[str, int] = field(default_factory=dict)
    estimate_without_reuse_s: float = 0.0  # every requested stage computed (separate sweeps, no store)

    def lines(self) -> list[str]:
        """The dry run's text."""
        out = [
            f"sweeps: {', '.join(e.name for e in self.sweeps)}",
            f"arms (trials): {self.arms_requested} requested, {self.arms_distinct} distinct configurations",
            "stages: requested / distinct / already stored / to compute",
        ]
        for stage in STAGES:
            requested, distinct, stored = (
                self.stages_requested[stage],
                self.stages_distinct[stage],
                self.stages_stored[stage],
            )
            out.append(f"  {stage:<9} {requested:>4} / {distinct:>4} / {stored:>4} / {distinct - stored:>4}")
        total = sum(self.stages_requested.values())
        compute = sum(self.stages_distinct[s] - self.stages_stored[s] for s in STAGES)
        out.append(f"  {'all':<9} {total:>4} computed without reuse, {compute} with it")
        out.append(
            f"estimated time: at least ~{self.estimate_s / 60:.0f} min (stage-steps x measured CPU seconds per step, "
            "over the cores; validation, evaluation, process starts not counted: the whole `small` run took "
            "1.2x its estimate on an idle 2-core machine, 3x under heavy load)"
        )
        out.append(
            f"  without reuse (every requested stage computed): at least ~{self.estimate_without_reuse_s / 60:.0f} min"
        )
        return out


def reproduce_experiments(
    scale: str,
    seeds: int,
    tables: Sequence[str],
    overrides: Sequence[str] = (),
    random_draws: int | None = None,
    **fields: object,
) -> list[Experiment]:
    """The requested tables' experiments at `scale`: seeds as an axis when `seeds` > 1 (`with_seeds`), and
    `random_draws` random FLOPs-matched baselines beside every arm (`with_random`), as `sweep` gives them.

    With random arms a table's sweep is `reproduce-<scale>-<table>-random<K>`, not the plain name: it is a
    different experiment (a sweep of one name refuses a changed experiment), and run after the plain
    command on the same storage it computes only the random arms' train stages, reusing the rest.
    """
    if seeds < 1:
        raise ExperimentError(f"--seeds must be at least 1, got {seeds}")
    unknown = [t for t in tables if t not in TABLES]
    if unknown or not tables:
        raise ExperimentError(f"--tables: unknown {', '.join(unknown) or '(none)'}; choose from {', '.join(TABLES)}")
    out = []
    for table in dict.fromkeys(tables):
        preset = TABLES[table]
        name = f"reproduce-{scale}-{preset}" + (f"-random{random_draws}" if random_draws is not None else "")
        experiment = load_experiment(preset, scale, overrides, name=name, **fields)
        if random_draws is not None:
            experiment = with_random(experiment, random_draws)
        if seeds > 1:
            experiment = with_seeds(experiment, seeds)
        out.append(experiment)
    return out


def plan_reproduce(experiments: Sequence[Experiment]) -> ReproducePlan:
    """Plan every trial of every sweep and count the stages by key (reads data manifests, computes nothing)."""
    from orchestrator.plan import plan_trial, resolve_data
    from orchestrator.sweep import absolutize
    from workers.stage_store import lookup

    plans: dict[str, list[TrialPlan]] = {}
    keys: dict[str, dict[str, StageInfo]] = {stage: {} for stage in STAGES}
    requested = dict.fromkeys(STAGES, 0)
    requested_s = 0.0
    arms: set[str] = set()
    concurrency = 1
    storage = ""
    for experiment in experiments:
        experiment = absolutize(experiment)
        storage = experiment.storage
        data = resolve_data(experiment, storage)
        plans[experiment.name] = [plan_trial(t, data, storage, experiment.name) for t in trials(experiment)]
        # unset: as many as fit, which the estimate below bounds by the CPUs
        concurrency = max(concurrency, experiment.resources.max_concurrent_trials or len(plans[experiment.name]))
        for plan in plans[experiment.name]:
            backbone = plan.experiment.search_space.backbone
            for run in plan.runs:
                assert run.settings.store is not None
                for settings in run.settings.stages:
                    key = run.settings.store.keys[settings.stage]
                    requested[settings.stage] += 1
                    steps = settings.optim.epochs * settings.optim.steps_per_epoch
                    if settings.train is not None and settings.train.finetune is not None:
                        steps += settings.train.finetune.epochs * settings.train.finetune.steps_per_epoch
                    keys[settings.stage][key.key] = StageInfo(key, steps, backbone)
                    requested_s += steps * SECONDS_PER_STEP[backbone][settings.stage]
            arms.add(plan.runs[-1].settings.store.keys[STAGES[-1]].key)  # type: ignore[union-attr]
    stored = {stage: {k for k, info in keys[stage].items() if lookup(storage, info.key)} for stage in STAGES}
    steps_left = {
        stage: sum(info.steps for k, info in keys[stage].items() if k not in stored[stage]) for stage in STAGES
    }
    seconds = sum(
        info.steps * SECONDS_PER_STEP[info.backbone][stage]
        for stage in STAGES
        for k, info in keys[stage].items()
        if k not in stored[stage]
    )
    return ReproducePlan(
        sweeps=list(experiments),
        plans=plans,
        arms_requested=sum(len(p) for p in plans.values()),
        arms_distinct=len(arms),
        stages_requested=requested,
        stages_distinct={s: len(keys[s]) for s in STAGES},
        stages_stored={s: len(stored[s]) for s in STAGES},
        estimate_s=seconds / max(1, min(concurrency, os.cpu_count() or 1)),
        estimate_without_reuse_s=requested_s / max(1, min(concurrency, os.cpu_count() or 1)),
        steps_to_compute=steps_left,
    )


@dataclass(frozen=True)
class StageInfo:
    """A distinct stage of the plan: its key, its optimisation steps and the supernet's backbone."""

    key: StageKey
    steps: int
    backbone: str
