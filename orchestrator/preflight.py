"""Pre-flight of a run: everything it needs, checked on the driver before any GPU time is spent, and its plan.

Why: a paper-scale sweep that stops after the autoscaler brought up its GPU nodes, because a weights
file or the Set5 shards are not where the experiment says, wastes GPU hours and a day of waiting.
`trilevel sweep/run/submit --dry-run` runs :func:`preflight` where the sweep driver would run (on the
head of the cluster for `--address auto` and for `submit`), so the paths, the volume and the tracking
server are checked as the run will see them:

* every data set the experiment reads (`Experiment.data_fields`): a finished manifest, prepared for
  the experiment's scale, enough images for the search split and for every Train worker;
* the weights: the teacher loaded as the stages load it (`load_teacher` with supervision.nb/nf/gc), the
  VGG19 features when any phase uses the perceptual loss, a genotype given to the train stage;
* the storage path writable, the tracking server reachable, an existing sweep of the same name either
  continued (same experiment) or refused (a different one);
* the resources: the largest stage of a trial, and `max_concurrent_trials` trials at once, must fit in
  what the cluster has now or can scale to (:func:`orchestrator.capacity.cluster_capacity`); unset, the
  plan's trials at once are as many as fit (at most the grid), which is what Tune then runs.

It returns a :class:`Plan` (trials, stages, workers, GPUs and steps per stage) that lists every
problem found, each naming the field and the path or value, rather than stopping at the first. The
data is read and checked, and the steps per epoch counted, by the trial plan's own functions
(:mod:`orchestrator.plan`), so the pre-flight and the run cannot disagree.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.capacity import Capacity
from orchestrator.capacity import format_amount as _num
from orchestrator.experiment import DEMO, Experiment, ExperimentError, PhaseSpec, trials
from orchestrator.footprint import CheckpointFootprint, checkpoint_footprint
from orchestrator.plan import (
    DataFacts,
    check_scale,
    check_search_split,
    check_test_apart,
    check_workers,
    data_facts,
    demo_part,
    steps_per_epoch,
)
from workers.stage_list import ROLES, STAGE_ROLES, STAGES
from workers.storage import join_storage

__all__ = ["PhasePlan", "Plan", "StagePlan", "format_plan", "preflight"]


# --- what the plan holds ------------------------------------------------------------------------
@dataclass(frozen=True)
class PhasePlan:
    """One optimisation phase of a stage: epochs × steps, and where the steps per epoch come from."""

    name: str
    epochs: int
    batch_size: int
    steps_per_epoch: int | None
    steps_from: str  # "stages.<stage>.steps_per_epoch", or the data formula


@dataclass(frozen=True)
class StagePlan:
    """One training stage of a trial: its data, split, Train workers, GPUs and phases."""

    stage: str
    data: str
    roles: tuple[str, ...]  # the parts of the data it reads (workers.stage_list.ROLES)
    images: int | None
    rows: int | None
    workers: int
    gpus: float
    cpus: float
    phases: tuple[PhasePlan, ...]
    in_trial: bool = False  # its one worker is the trial's own process (no TorchTrainer)


@dataclass
class Plan:
    """What a run would do, and every problem that would stop it (empty `problems`: ready to run)."""

    sweep: str
    storage: str
    tracking_uri: str
    trials: list[str]
    concurrent: int
    stages: dict[str, list[StagePlan]]  # trial id → stages
    continues: bool = False
    capacity: Capacity | None = None
    needs: dict[str, float] = field(default_factory=dict)  # resource → needed at once
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checkpoints: dict[str, CheckpointFootprint] = field(default_factory=dict)  # trial id → its checkpoints' bytes
    # trial id → what its evaluation holds (`ResourcesSpec.evaluation_resources`); None: in the trial's process
    evaluation: dict[str, dict[str, float] | None] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


# --- the checks ---------------------------------------------------------------------------------
def preflight(experiment: Experiment, capacity: Capacity | None = None, *, gpu_probe: bool = False) -> Plan:
    """Check everything `experiment` needs and plan it; `capacity` None skips the resource check.

    Writes only what the run itself would write first: a probe file under the storage path (removed
    again) and, for `demo` data, the built-in data set under `<storage>/_data/demo`. `gpu_probe` (what
    `--preflight` asks) also runs `orchestrator.gpu_preflight`'s probe on one GPU worker of a GPU
    experiment once every other check passed; its findings are the plan's last problems and notes.
    """
    from orchestrator.sweep import absolutize

    experiment = absolutize(experiment)
    grid = trials(experiment)
    plan = Plan(
        sweep=experiment.name,
        storage=experiment.storage,
        tracking_uri=experiment.tracking.uri,
        trials=[t.trial_id for t in grid],
        concurrent=min(experiment.resources.max_concurrent_trials or len(grid), len(grid)),  # unset: see below
        stages={},
        capacity=capacity,
    )
    if search := experiment.tune.search.space:
        plan.notes.append(
            f"searched axes ({', '.join(search)}): {experiment.tune.num_samples} sample(s) drawn by "
            f"{experiment.tune.search.kind} per grid point; the plan below is the grid point(s) before any draw"
        )
    storage_ok = _check(plan, _storage_check(experiment))
    _check(plan, _tracking_check(experiment))
    if storage_ok:
        _check(plan, lambda: _existing_sweep(experiment, plan))
    data: dict[str, DataFacts | None] = {}
    loaded: set[tuple[Any, ...]] = set()
    if storage_ok and any(path == DEMO for t in grid for _, path in t.experiment.data_fields()):
        from workers.shards.demo import write_demo_dataset

        demo = join_storage(experiment.storage, "_data", DEMO)
        write_demo_dataset(demo)  # what the run writes first (orchestrator.plan.resolve_data)
        plan.notes.append(f"demo data: the built-in data set is at {demo}")
    for trial in grid:
        resolved = trial.experiment
        for name, path in resolved.data_fields():
            if path != DEMO or storage_ok:
                _data_set(plan, data, name, path, resolved)
        _check(plan, lambda e=resolved: _test_apart(e, data))
        _check_weights(plan, resolved, loaded)
        plan.stages[trial.trial_id] = [_stage_plan(plan, resolved, stage, data) for stage in STAGES]
        plan.evaluation[trial.trial_id] = resolved.resources.evaluation_resources()
        with contextlib.suppress(Exception):  # a size only: what would make it fail is a problem reported above
            plan.checkpoints[trial.trial_id] = checkpoint_footprint(resolved)
    _check_resources(plan, grid_experiments={t.trial_id: t.experiment for t in grid})
    if experiment.resources.gpus_per_worker > 0:
        _probe_gpu(plan, experiment, run=gpu_probe)
    return plan


def _probe_gpu(plan: Plan, experiment: Experiment, *, run: bool) -> None:
    """The GPU probe's findings (or why it did not run) as the plan's last lines."""
    if not run:
        plan.notes.append("GPU probe: not run by --dry-run; --preflight runs it on one GPU worker before starting")
        return
    if plan.problems:
        plan.notes.append("GPU probe: not run, the problems above come first (it would bring up a GPU node)")
        return
    from orchestrator.gpu_preflight import probe_gpu_worker, probe_lines

    problems, notes = probe_lines(probe_gpu_worker(experiment), experiment)
    plan.problems += problems
    plan.notes += notes


def _check(plan: Plan, check: Callable[[], Any]) -> bool:
    """Run one check; its clear error becomes a line of the plan's problems."""
    from orchestrator.tracking import TrackingUnavailable

    try:
        check()
    except (ExperimentError, TrackingUnavailable) as err:
        plan.problems.append(" ".join(str(err).split()))
        return False
    return True


def _storage_check(experiment: Experiment) -> Callable[[], None]:
    from orchestrator.sweep import check_storage

    return lambda: check_storage(experiment.storage)


def _tracking_check(experiment: Experiment) -> Callable[[], None]:
    from orchestrator.tracking import Tracker

    return lambda: Tracker.check_reachable(experiment.tracking.uri)


def _existing_sweep(experiment: Experiment, plan: Plan) -> None:
    import ray.tune

    from orchestrator.sweep import continues_saved_sweep

    if ray.tune.Tuner.can_restore(join_storage(experiment.storage, experiment.name)):
        plan.continues = continues_saved_sweep(experiment, experiment.storage)


def _actual_path(path: str, field_name: str, experiment: Experiment) -> str:
    """Where a data set is read from: "demo" is the built-in set the run writes under `<storage>/_data/demo`."""
    if path != DEMO:
        return path
    return join_storage(experiment.storage, "_data", DEMO, demo_part(field_name))


def _data_set(plan: Plan, cache: dict[str, DataFacts | None], name: str, path: str, experiment: Experiment) -> None:
    """Read the manifest and image ids of one data set (once per path); problems name the field."""
    path = _actual_path(path, name, experiment)
    if path not in cache:
        try:
            cache[path] = data_facts(path, name)
        except ExperimentError as err:
            plan.problems.append(" ".join(str(err).split()))
            cache[path] = None
    found = cache[path]
    if found is not None and not _check(plan, lambda: check_scale(found, experiment.data.scale, name)):
        cache[path] = None


def _test_apart(experiment: Experiment, cache: Mapping[str, DataFacts | None]) -> None:
    """Test sets that are a validation set under another name (same folder or same shards) are problems."""

    def readable(part: str) -> dict[str, str]:
        sets = getattr(experiment.data, part)
        paths = {name: _actual_path(path, f"data.{part}.{name}", experiment) for name, path in sets.items()}
        return {name: path for name, path in paths.items() if cache.get(path) is not None}

    check_test_apart(readable("val"), readable("test"))


def _stage_plan(plan: Plan, experiment: Experiment, stage: str, cache: Mapping[str, DataFacts | None]) -> StagePlan:
    """Workers, GPUs and steps of one stage; a split too small for its workers is a problem."""
    resources = experiment.resources
    workers = resources.workers[stage]
    spec = getattr(experiment.stages, stage)
    field_name = experiment.stage_data_field(stage)
    data = cache.get(_actual_path(experiment.stage_data(stage), field_name, experiment))
    roles = STAGE_ROLES[stage]
    phases_spec: list[tuple[str, PhaseSpec]] = [(stage, spec)]
    if stage == "train" and experiment.stages.train.finetune:
        phases_spec.append(("train finetune", experiment.stages.train.finetune))
    if data is not None and _check(plan, lambda: check_search_split(stage, data, field_name)):
        _check(plan, lambda: check_workers(stage, data, workers))
    crops = experiment.data.crops_per_image
    phases = tuple(_phase_plan(name, phase, data, roles, workers, stage, crops) for name, phase in phases_spec)
    return StagePlan(
        stage=stage,
        data=experiment.stage_data(stage) if data is None else data.path,
        roles=roles,
        images=None if data is None else min(data.images_of(role) for role in roles),
        rows=None if data is None else data.rows_of(data.smallest(roles)),
        workers=workers,
        gpus=workers * resources.gpus_per_worker,
        cpus=workers * resources.cpus_per_worker,
        phases=phases,
        in_trial=resources.in_trial(stage),
    )


def _phase_plan(
    name: str, phase: PhaseSpec, data: DataFacts | None, roles: tuple[str, ...], workers: int, stage: str, crops: int
) -> PhasePlan:
    """Steps per epoch as the run counts them (`orchestrator.plan.steps_per_epoch`), and where they come from."""
    where = f"stages.{stage}.finetune" if name.endswith("finetune") else f"stages.{stage}"
    if phase.steps_per_epoch is not None:
        return PhasePlan(name, phase.epochs, phase.batch_size, phase.steps_per_epoch, f"{where}.steps_per_epoch")
    if data is None:
        return PhasePlan(name, phase.epochs, phase.batch_size, None, "from the data (unreadable)")
    rows = data.rows_of(data.smallest(roles))
    steps = steps_per_epoch(phase, data, roles, workers, crops)
    per_row = f" × {crops} crops" if crops > 1 else ""
    return PhasePlan(
        name, phase.epochs, phase.batch_size, steps, f"⌈⌊{rows} rows / {workers}⌋{per_row} / {phase.batch_size}⌉"
    )


def _uses_perceptual(experiment: Experiment) -> bool:
    stages = experiment.stages
    losses = {stages.pretrain.loss, stages.search.loss, stages.train.loss}
    if stages.train.finetune:
        losses.add(stages.train.finetune.loss)
    return "perceptual" in losses


def _check_weights(plan: Plan, experiment: Experiment, loaded: set[tuple[Any, ...]]) -> None:
    """Load the weights the stages will load, as they load them (once per file and shape)."""
    sup = experiment.supervision
    if sup.kind == "teacher" and sup.weights:
        key = ("teacher", sup.weights, sup.nb, sup.nf, sup.gc)
        if key not in loaded:
            loaded.add(key)
            _load(plan, "supervision.weights", lambda: _load_teacher(sup.weights, sup.nb, sup.nf, sup.gc))
    if _uses_perceptual(experiment):
        key = ("vgg", experiment.perceptual.vgg_weights)
        if key not in loaded:
            loaded.add(key)
            _load(plan, "perceptual.vgg_weights", lambda: _load_vgg(experiment.perceptual.vgg_weights))
    genotype = experiment.stages.train.genotype
    if genotype and ("genotype", genotype) not in loaded:
        loaded.add(("genotype", genotype))
        _load(plan, "stages.train.genotype", lambda: _load_genotype(genotype))


def _load(plan: Plan, name: str, load: Callable[[], None]) -> None:
    try:
        load()
    except (OSError, ValueError, RuntimeError) as err:
        plan.problems.append(f"{name}: {' '.join(str(err).split())}")


def _load_teacher(path: str, nb: int, nf: int, gc: int) -> None:
    from search_space.teacher import load_teacher

    load_teacher(path, nb=nb, nf=nf, gc=gc)


def _load_vgg(path: str | None) -> None:
    from workers.vgg import load_vgg19_features

    load_vgg19_features(path)


def _load_genotype(name_or_path: str) -> None:
    from search_space.genotype import load_genotype

    load_genotype(name_or_path)


# --- resources ----------------------------------------------------------------------------------
def _check_resources(plan: Plan, grid_experiments: Mapping[str, Experiment]) -> None:
    """The largest stage must fit at all; `concurrent` trials of it must fit at once."""
    peak: dict[str, tuple[float, str, Experiment]] = {}
    for trial_id, stages in plan.stages.items():
        experiment = grid_experiments[trial_id]
        for stage in stages:
            cpus = (0.0 if stage.in_trial else stage.cpus) + experiment.resources.trial_reservation()
            for resource, amount in (("GPU", stage.gpus), ("CPU", cpus)):
                if amount > peak.get(resource, (0.0, "", experiment))[0]:
                    peak[resource] = (amount, stage.stage, experiment)
        evaluation = plan.evaluation.get(trial_id)  # a Ray task after the stages, beside the trial's own CPUs
        if evaluation is not None:
            for resource, amount in evaluation.items():
                amount += experiment.resources.trial_reservation() if resource == "CPU" else 0.0
                if amount > peak.get(resource, (0.0, "", experiment))[0]:
                    peak[resource] = (amount, "evaluate", experiment)
    if plan.capacity is not None and any(e.resources.max_concurrent_trials is None for e in grid_experiments.values()):
        plan.concurrent = _trials_that_fit(plan, {resource: amount for resource, (amount, _, _) in peak.items()})
    plan.needs = {resource: amount * plan.concurrent for resource, (amount, _, _) in peak.items()}
    if plan.capacity is None:
        return
    for resource, (amount, stage, experiment) in peak.items():
        have = plan.capacity.resources.get(resource, 0.0)
        res = experiment.resources
        per_worker = res.gpus_per_worker if resource == "GPU" else res.cpus_per_worker
        knob = "gpus_per_worker" if resource == "GPU" else "cpus_per_worker"
        workers = res.workers.get(stage, 1)  # the evaluate step holds one worker's share
        if amount > have:
            plan.problems.append(
                f"resources.workers.{stage}={workers} × resources.{knob}={_num(per_worker)}: the {stage} "
                f"stage needs {_num(amount)} {resource} at once, but the cluster has at most "
                f"{plan.capacity.describe(resource)}; it would wait forever. Lower them, or add {resource} nodes "
                "(the GPU worker group's maxReplicas)"
            )
        elif amount * plan.concurrent > have:
            fits = int(have // amount)
            plan.problems.append(
                f"resources.max_concurrent_trials={res.max_concurrent_trials}: {plan.concurrent} trials at once need "
                f"{_num(amount * plan.concurrent)} {resource}, but the cluster has at most "
                f"{plan.capacity.describe(resource)}. Set resources.max_concurrent_trials={fits}, or raise the GPU "
                f"worker group's maxReplicas to {math.ceil(amount * plan.concurrent)} GPUs' worth "
                "(N GPUs → N trials at once)"
            )


def _trials_that_fit(plan: Plan, peak: Mapping[str, float]) -> int:
    """With `resources.max_concurrent_trials` unset, the trials at once are as many as the cluster fits.

    Tune starts a trial whenever its reservation fits and its stages then wait for their workers, so
    what runs at once is the number of trials whose largest stage fits beside each other in every
    resource: at least one, at most the grid.
    """
    assert plan.capacity is not None
    fits = [int(plan.capacity.resources.get(resource, 0.0) // amount) for resource, amount in peak.items() if amount]
    return max(1, min([len(plan.trials), *fits]))


# --- output -------------------------------------------------------------------------------------
def _stage_lines(stages: Iterable[StagePlan]) -> list[str]:
    lines = []
    for s in stages:
        size = "?" if s.images is None else f"{s.images} images / {s.rows} rows"
        split = " + ".join(ROLES[role].split(" (")[0] for role in s.roles)
        resources = f"{s.workers} worker(s), {_num(s.gpus)} GPU, {_num(s.cpus)} CPU"
        resources += " (in the trial's process)" if s.in_trial else ""
        lines.append(f"  {s.stage:<8} {resources}; data {s.data} [{split}: {size}]")
        for p in s.phases:
            steps = "?" if p.steps_per_epoch is None else str(p.steps_per_epoch)
            total = "?" if p.steps_per_epoch is None else f"{p.epochs * p.steps_per_epoch:,}"
            how = f"batch {p.batch_size}; {p.steps_from}"
            lines.append(f"    {p.name}: {p.epochs} epochs × {steps} steps ({how}) = {total} steps")
    return lines


def _evaluation_line(evaluation: dict[str, float] | None) -> list[str]:
    if evaluation is None:
        return ["  evaluate in the trial's process (CPU)"]
    held = f"{_num(evaluation['GPU'])} GPU, {_num(evaluation['CPU'])} CPU"
    return [f"  evaluate {held} (a Ray task once the stages end: test metrics, latency on the GPU and CPU)"]


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n < 1e10 else f"{n / 1e9:.0f} GB"


def _checkpoint_lines(f: CheckpointFootprint) -> list[str]:
    """What a trial's checkpoints weigh on the storage path, with and without retention."""
    bound = {stage: "≤" if stage == "train" and not f.exact_train else "" for stage in f.saved}
    each = ", ".join(
        f"{stage} {f.saved[stage]} × {bound[stage]}{f.bytes_each[stage] / 1e6:.0f} MB" for stage in f.saved
    )
    if f.keep_last is None:
        kept = f"all kept (stages.keep_checkpoints unset): {_gb(f.all_bytes)} per trial"
    else:
        kept = (
            f"stages.keep_checkpoints={f.keep_last} keeps {sum(f.kept.values())} (the last {f.keep_last}, each stage's "
            f"final, the best): {_gb(f.kept_bytes)} per trial at the end, of {_gb(f.all_bytes)} written"
        )
    return [f"  checkpoints: {each}; {kept}"]


def format_plan(plan: Plan) -> str:
    """The plan as a terminal prints it: trials, concurrency, stages (grouped when trials agree), problems."""
    lines = [
        f"Sweep {plan.sweep}: {len(plan.trials)} trial(s), {plan.concurrent} at once"
        + (" (continues the existing sweep)" if plan.continues else ""),
        f"  trials:   {', '.join(plan.trials)}",
        f"  storage:  {plan.storage}",
        f"  tracking: {plan.tracking_uri}",
    ]
    if plan.needs:
        needs = ", ".join(f"{_num(v)} {k}" for k, v in sorted(plan.needs.items(), reverse=True))
        lines.append(f"  at once:  {needs}")
    if plan.capacity is not None:
        most = plan.capacity.resources
        where = "; ".join(plan.capacity.sources)
        lines.append(f"  cluster:  at most {_num(most.get('GPU', 0))} GPU, {_num(most.get('CPU', 0))} CPU ({where})")
    groups: dict[tuple[str, ...], list[str]] = {}
    for trial_id, stages in plan.stages.items():
        footprint = plan.checkpoints.get(trial_id)
        checkpoint_lines = [] if footprint is None else _checkpoint_lines(footprint)
        evaluation_line = _evaluation_line(plan.evaluation.get(trial_id)) if trial_id in plan.evaluation else []
        groups.setdefault(tuple(_stage_lines(stages) + evaluation_line + checkpoint_lines), []).append(trial_id)
    for stage_lines, members in groups.items():
        who = "every trial" if len(groups) == 1 else ", ".join(members)
        lines.append(f"Stages of {who}:")
        lines.extend(stage_lines)
    lines.extend(f"Note: {note}" for note in plan.notes)
    if plan.problems:
        lines.append(f"{len(plan.problems)} problem(s):")
        lines.extend(f"  - {problem}" for problem in plan.problems)
    else:
        lines.append("Pre-flight passed: nothing missing.")
    return "\n".join(lines)
