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
  what the cluster has now or can scale to (:func:`cluster_capacity`).

It returns a :class:`Plan` (trials, stages, workers, GPUs and steps per stage) that lists every
problem found, each naming the field and the path or value, rather than stopping at the first.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.experiment import DEMO, Experiment, ExperimentError, PhaseSpec, trials
from workers.shards import join_storage

__all__ = [
    "STAGES",
    "Capacity",
    "DataSet",
    "PhasePlan",
    "Plan",
    "StagePlan",
    "cluster_capacity",
    "format_plan",
    "max_resources",
    "preflight",
]

STAGES: tuple[str, ...] = ("pretrain", "search", "train")
# Which part of a stage's training data it reads (orchestrator.plan, the roles w, a and all).
_SPLITS = {"pretrain": ("chi1",), "search": ("chi1", "chi2"), "train": ("all",)}
_SPLIT_NAMES = {"chi1": "χ1 (first half of the sorted image ids)", "chi2": "χ2 (second half)", "all": "all images"}
_SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` puts the autoscaling config on the head


# --- what the plan holds ------------------------------------------------------------------------
@dataclass(frozen=True)
class DataSet:
    """A prepared data set as the stages will read it: rows per split (sub-images share an image id)."""

    path: str
    scale: int
    images: int
    rows: dict[str, int]  # "all", "chi1", "chi2" → rows
    split_images: dict[str, int]  # "all", "chi1", "chi2" → images


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
    splits: tuple[str, ...]
    images: int | None
    rows: int | None
    workers: int
    gpus: float
    cpus: float
    phases: tuple[PhasePlan, ...]


@dataclass(frozen=True)
class Capacity:
    """The most of each resource the cluster has now or can scale to, and where each number came from."""

    resources: dict[str, float]
    sources: tuple[str, ...]

    def describe(self, resource: str) -> str:
        return f"{_num(self.resources.get(resource, 0))} {resource} ({'; '.join(self.sources) or 'no source'})"


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

    @property
    def ok(self) -> bool:
        return not self.problems


# --- the checks ---------------------------------------------------------------------------------
def preflight(experiment: Experiment, capacity: Capacity | None = None) -> Plan:
    """Check everything `experiment` needs and plan it; `capacity` None skips the resource check.

    Writes only what the run itself would write first: a probe file under the storage path (removed
    again) and, for `demo` data, the built-in data set under `<storage>/_data/demo`.
    """
    from orchestrator.sweep import absolutize

    experiment = absolutize(experiment)
    grid = trials(experiment)
    plan = Plan(
        sweep=experiment.name,
        storage=experiment.storage,
        tracking_uri=experiment.tracking.uri,
        trials=[t.trial_id for t in grid],
        concurrent=min(experiment.resources.max_concurrent_trials, len(grid)),
        stages={},
        capacity=capacity,
    )
    storage_ok = _check(plan, _storage_check(experiment))
    _check(plan, _tracking_check(experiment))
    if storage_ok:
        _check(plan, lambda: _existing_sweep(experiment, plan))
    data: dict[str, DataSet | None] = {}
    loaded: set[tuple[Any, ...]] = set()
    if storage_ok and any(path == DEMO for t in grid for _, path in t.experiment.data_fields()):
        from workers.shards import write_demo_dataset

        demo = join_storage(experiment.storage, "_data", DEMO)
        write_demo_dataset(demo)  # what the run writes first (orchestrator.plan.resolve_data)
        plan.notes.append(f"demo data: the built-in data set is at {demo}")
    for trial in grid:
        resolved = trial.experiment
        for name, path in resolved.data_fields():
            if path != DEMO or storage_ok:
                _data_set(plan, data, name, path, resolved)
        _check_weights(plan, resolved, loaded)
        plan.stages[trial.trial_id] = [_stage_plan(plan, resolved, stage, data) for stage in STAGES]
    _check_resources(plan, grid_experiments={t.trial_id: t.experiment for t in grid})
    return plan


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
    return join_storage(experiment.storage, "_data", DEMO, "val" if field_name.startswith("data.val.") else "train")


def _data_set(plan: Plan, cache: dict[str, DataSet | None], name: str, path: str, experiment: Experiment) -> None:
    """Read the manifest and image ids of one data set (once per path); problems name the field."""
    path = _actual_path(path, name, experiment)
    if path not in cache:
        cache[path] = _inspect(path, name, plan)
    found = cache[path]
    if found is not None and found.scale != experiment.data.scale:
        plan.problems.append(
            f"{name}: {path} was prepared for scale x{found.scale}, but data.scale is {experiment.data.scale}: "
            f"prepare it with `trilevel data prepare … --scale {experiment.data.scale}`"
        )
        cache[path] = None


def _inspect(path: str, name: str, plan: Plan) -> DataSet | None:
    from workers.pipeline import image_ids, split_image_ids
    from workers.shards import read_manifest

    try:
        manifest = read_manifest(path)
        ids = image_ids(path)
    except Exception as err:
        plan.problems.append(
            f"{name}: {path} is not a prepared data set ({' '.join(str(err).split())}); "
            f"prepare it with `trilevel data prepare <image folders> --out {path}`"
        )
        return None
    chi1, chi2 = (set(half) for half in split_image_ids(ids))
    rows = {"all": len(ids), "chi1": sum(i in chi1 for i in ids), "chi2": sum(i in chi2 for i in ids)}
    images = {"all": len(chi1) + len(chi2), "chi1": len(chi1), "chi2": len(chi2)}
    return DataSet(path, manifest.scale, manifest.images, rows, images)


def _stage_data(cache: Mapping[str, DataSet | None], experiment: Experiment, stage: str) -> tuple[str, DataSet | None]:
    field_name = f"stages.{stage}.data" if getattr(experiment.stages, stage).data else "data.train"
    return field_name, cache.get(_actual_path(experiment.stage_data(stage), field_name, experiment))


def _stage_plan(plan: Plan, experiment: Experiment, stage: str, cache: Mapping[str, DataSet | None]) -> StagePlan:
    """Workers, GPUs and steps of one stage; a split too small for its workers is a problem."""
    resources = experiment.resources
    workers = resources.workers[stage]
    spec = getattr(experiment.stages, stage)
    field_name, data = _stage_data(cache, experiment, stage)
    splits = _SPLITS[stage]
    phases_spec: list[tuple[str, PhaseSpec]] = [(stage, spec)]
    if stage == "train" and experiment.stages.train.finetune:
        phases_spec.append(("train finetune", experiment.stages.train.finetune))
    rows = None if data is None else min(data.rows[s] for s in splits)
    if data is not None:
        if stage in ("pretrain", "search") and (data.split_images["chi1"] < 1 or data.split_images["chi2"] < 1):
            plan.problems.append(
                f"{field_name}: {data.path} holds {data.images} image(s); the search split needs at least 2"
            )
        elif rows is not None and rows // workers < 1:
            plan.problems.append(
                f"resources.workers.{stage}={workers}: {_SPLIT_NAMES[splits[0]]} of {data.path} has {rows} row(s), "
                f"fewer than the {workers} Train workers; each worker needs at least one"
            )
    phases = tuple(_phase_plan(name, phase, rows, workers, stage) for name, phase in phases_spec)
    images = None if data is None else min(data.split_images[s] for s in splits)
    return StagePlan(
        stage=stage,
        data=experiment.stage_data(stage) if data is None else data.path,
        splits=splits,
        images=images,
        rows=rows,
        workers=workers,
        gpus=workers * resources.gpus_per_worker,
        cpus=workers * resources.cpus_per_worker,
        phases=phases,
    )


def _phase_plan(name: str, phase: PhaseSpec, rows: int | None, workers: int, stage: str) -> PhasePlan:
    """Steps per epoch: the configured `steps_per_epoch`, else one pass over each worker's equal share.

    Ray Train splits a training set equally across the workers (`streaming_split(equal=True)`), and
    a worker's last batch may be partial: ⌈⌊rows / workers⌋ / batch⌉. The search alternates χ1 and χ2
    batches until either runs out, so it counts the smaller split.
    """
    where = f"stages.{stage}.finetune" if name.endswith("finetune") else f"stages.{stage}"
    if phase.steps_per_epoch is not None:
        return PhasePlan(name, phase.epochs, phase.batch_size, phase.steps_per_epoch, f"{where}.steps_per_epoch")
    if rows is None:
        return PhasePlan(name, phase.epochs, phase.batch_size, None, "from the data (unreadable)")
    steps = math.ceil((rows // workers) / phase.batch_size)
    return PhasePlan(name, phase.epochs, phase.batch_size, steps, f"⌈⌊{rows} rows / {workers}⌋ / {phase.batch_size}⌉")


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
            for resource, amount in (("GPU", stage.gpus), ("CPU", stage.cpus + experiment.resources.trial_cpus)):
                if amount > peak.get(resource, (0.0, "", experiment))[0]:
                    peak[resource] = (amount, stage.stage, experiment)
    plan.needs = {resource: amount * plan.concurrent for resource, (amount, _, _) in peak.items()}
    if plan.capacity is None:
        return
    for resource, (amount, stage, experiment) in peak.items():
        have = plan.capacity.resources.get(resource, 0.0)
        res = experiment.resources
        per_worker = res.gpus_per_worker if resource == "GPU" else res.cpus_per_worker
        knob = "gpus_per_worker" if resource == "GPU" else "cpus_per_worker"
        if amount > have:
            plan.problems.append(
                f"resources.workers.{stage}={res.workers[stage]} × resources.{knob}={_num(per_worker)}: the {stage} "
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


def max_resources(autoscaling_config: Mapping[str, Any]) -> dict[str, float]:
    """The most CPU/GPU/… an autoscaling config (`ray up` YAML or KubeRay's derived one) can bring up.

    Head node type once, every worker type at its `max_workers`, all workers capped by the global
    `max_workers`: the same numbers the autoscaler plans with.
    """
    types = autoscaling_config.get("available_node_types", {})
    head = autoscaling_config.get("head_node_type")
    budget = autoscaling_config.get("max_workers")
    total: dict[str, float] = {}
    for name, node_type in types.items():
        count = 1 if name == head else int(node_type.get("max_workers", 0))
        if name != head and budget is not None:
            count = min(count, int(budget))
        for resource, amount in (node_type.get("resources") or {}).items():
            total[resource] = total.get(resource, 0.0) + count * float(amount)
    return total


def cluster_capacity() -> Capacity:
    """What the connected Ray cluster has now, or can scale to, per resource (the larger of the two).

    Sources, each used when present: `ray.cluster_resources()` (nodes up now); the limits the
    autoscaler reported to the GCS (what Ray Train itself checks); on a `ray up` head the autoscaling
    config `~/ray_bootstrap_config.yaml`; in a KubeRay pod the RayCluster (`RAY_CLUSTER_NAME`), read with
    the pod's service account and converted by Ray's own KubeRay autoscaler code.
    """
    import ray

    found: list[tuple[str, Mapping[str, float]]] = [("now", ray.cluster_resources())]
    for name, source in (
        ("autoscaler limits", _reported_limits),
        (f"autoscaling config {_BOOTSTRAP_CONFIG}", _bootstrap_limits),
        ("RayCluster", _kuberay_limits),
    ):
        try:
            limits = source()
        except Exception as err:  # a source that cannot be read is named, never fatal
            found.append((f"{name}: unreadable ({type(err).__name__}: {err})", {}))
            continue
        if limits is not None:
            found.append(limits if isinstance(limits, tuple) else (name, limits))
    resources: dict[str, float] = {}
    for _, limits in found:
        for resource in ("CPU", "GPU"):
            resources[resource] = max(resources.get(resource, 0.0), float(limits.get(resource, 0.0)))
    sources = tuple(
        name if not limits else f"{name}: {', '.join(f'{_num(limits.get(r, 0))} {r}' for r in ('GPU', 'CPU'))}"
        for name, limits in found
    )
    return Capacity(resources, sources)


def _reported_limits() -> Mapping[str, float] | None:
    import ray._private.state

    return ray._private.state.state.get_max_resources_from_cluster_config() or None


def _bootstrap_limits() -> Mapping[str, float] | None:
    import yaml

    path = Path(os.path.expanduser(_BOOTSTRAP_CONFIG))
    if not path.is_file():
        return None
    return max_resources(yaml.safe_load(path.read_text()))


def _kuberay_limits() -> tuple[str, Mapping[str, float]] | None:
    name = os.environ.get("RAY_CLUSTER_NAME")
    if not name or not (_SA_DIR / "token").is_file():
        return None
    namespace = os.environ.get("RAY_CLUSTER_NAMESPACE") or (_SA_DIR / "namespace").read_text().strip()
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
    from ray.autoscaler._private.kuberay.node_provider import KubernetesHttpApiClient

    cr = KubernetesHttpApiClient(namespace=namespace).get(f"rayclusters/{name}")
    return f"RayCluster {namespace}/{name}", max_resources(_derive_autoscaling_config_from_ray_cr(cr))


# --- output -------------------------------------------------------------------------------------
def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _stage_lines(stages: Iterable[StagePlan]) -> list[str]:
    lines = []
    for s in stages:
        size = "?" if s.images is None else f"{s.images} images / {s.rows} rows"
        split = " + ".join(_SPLIT_NAMES[x].split(" (")[0] for x in s.splits)
        resources = f"{s.workers} worker(s), {_num(s.gpus)} GPU, {_num(s.cpus)} CPU"
        lines.append(f"  {s.stage:<8} {resources}; data {s.data} [{split}: {size}]")
        for p in s.phases:
            steps = "?" if p.steps_per_epoch is None else str(p.steps_per_epoch)
            total = "?" if p.steps_per_epoch is None else f"{p.epochs * p.steps_per_epoch:,}"
            how = f"batch {p.batch_size}; {p.steps_from}"
            lines.append(f"    {p.name}: {p.epochs} epochs × {steps} steps ({how}) = {total} steps")
    return lines


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
        groups.setdefault(tuple(_stage_lines(stages)), []).append(trial_id)
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
