"""A trial's plan: its validated experiment turned into the typed settings of its Train runs.

Everything that can be resolved before any compute is resolved here, once: data paths (the built-in
"demo" data written under the storage path), the facts the steps per epoch follow from (rows of χ1,
χ2 and the whole set), the genotype named by `stages.train.genotype`. Consecutive stages with the
same worker count share one Train run (one worker group from pretrain through train); a stage with
another worker count starts its own. A run with one CPU worker runs in the trial's process
(`resources.single_worker_in_trial`), the others as TorchTrainer runs. The plan is plain, picklable
data: the sweep builds it in the driver and ships it to the trial.

The pre-flight (`orchestrator.preflight`) reads and checks data with the same functions
(`data_facts`, `check_scale`, `check_search_split`, `check_workers`, `steps_per_epoch`): here the
first problem raises, there every problem is listed.
"""

from __future__ import annotations

import math
import posixpath
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.experiment import DEMO, Experiment, ExperimentError, PhaseSpec, Trial
from search_space.genotype import Genotype, load_genotype
from workers.pipeline import image_ids, split_image_ids
from workers.settings import (
    DatasetSource,
    OptimSettings,
    RunSettings,
    SearchSettings,
    StageSettings,
    StoreSettings,
    Supervision,
    TrainSettings,
)
from workers.shards.demo import write_demo_dataset
from workers.shards.format import DataError, read_manifest, verify_shards
from workers.stage_list import ROLES, SEARCH_SPLIT_ROLES, STAGE_ROLES, STAGES
from workers.stage_store import StageKey, code_version, stage_key, stage_key_inputs
from workers.stage_store.keys import reads_upstream
from workers.storage import join_storage

__all__ = [
    "DataFacts",
    "ResolvedData",
    "TrainRunPlan",
    "TrialPlan",
    "check_scale",
    "check_search_split",
    "check_test_apart",
    "check_workers",
    "data_facts",
    "demo_part",
    "plan_trial",
    "resolve_data",
    "shard_digests",
    "stage_outputs",
    "stage_steps",
    "steps_per_epoch",
]

# Decoded RGB pixels (LR + HR) take about this many times the PNG bytes of a prepared shard.
_DECODED_PER_PNG_BYTE = 4.0
_ROLE_DATASET = {"w": "train_w", "a": "train_a", "all": "train"}


@dataclass(frozen=True)
class DataFacts:
    """A prepared training set and the sizes its steps per epoch (and the pre-flight's plan) follow from.

    Rows count sub-images one each; images are distinct image ids, so sub-images of one photograph
    land on the same side of the search split.
    """

    path: str
    scale: int  # the SR factor it was prepared for
    rows: int  # all rows
    rows_w: int  # rows of χ1, the first half of the sorted image ids
    rows_a: int  # rows of χ2
    images: int  # images in its manifest
    images_w: int  # images of χ1
    images_a: int  # images of χ2
    bytes: int  # stored bytes (PNG, or compressed raw pixels)
    fingerprint: str = ""  # the manifest's fingerprint of inputs and options (MLflow's dataset digest, stage keys)
    decoded_bytes: int | None = None  # the decoded pixels (HR + LR) as the manifest counts them; None: older sets

    def rows_of(self, role: str) -> int:
        return {"w": self.rows_w, "a": self.rows_a, "all": self.rows}[role]

    def images_of(self, role: str) -> int:
        return {"w": self.images_w, "a": self.images_a, "all": self.images_w + self.images_a}[role]

    def smallest(self, roles: tuple[str, ...]) -> str:
        """The role with the fewest rows: the one that ends a stage's epoch (the first of equals)."""
        return min(roles, key=self.rows_of)


@dataclass(frozen=True)
class ResolvedData:
    """Where every data set of an experiment is, checked to be a prepared data set."""

    train: dict[str, DataFacts]  # stage → its training data
    val: dict[str, str]  # validation set name → path: per-epoch curves and the best-checkpoint choice
    test: dict[str, str]  # test set name → path: evaluated at the end, reported; never selects
    val_fingerprints: dict[str, str] = field(default_factory=dict)  # path → manifest fingerprint (stage keys)

    @property
    def default_train(self) -> str:
        return self.train["pretrain"].path


def _not_prepared(field: str, path: str, err: Exception) -> ExperimentError:
    return ExperimentError(
        f"{field}: {path} is not a prepared data set ({' '.join(str(err).split())}); "
        f"prepare it with `trilevel data prepare <image folders> --out {path}`"
    )


def data_facts(path: str, field: str) -> DataFacts:
    """Read a prepared data set's manifest and image ids (no image bytes); the error names `field`."""
    try:
        manifest = read_manifest(path)
    except Exception as err:
        raise _not_prepared(field, path, err) from None
    try:
        verify_shards(manifest)  # a damaged shard is named here, before any compute, not met mid-training
    except DataError as err:
        raise ExperimentError(f"{field}: {err}") from None
    try:
        per_image = Counter(image_ids(path))
    except Exception as err:
        raise _not_prepared(field, path, err) from None
    chi1, chi2 = split_image_ids(per_image)
    return DataFacts(
        path=path,
        scale=manifest.scale,
        rows=manifest.rows,
        rows_w=sum(per_image[i] for i in chi1),
        rows_a=sum(per_image[i] for i in chi2),
        images=manifest.images,
        images_w=len(chi1),
        images_a=len(chi2),
        bytes=int(manifest.data.get("bytes", 0)),
        fingerprint=str(manifest.data.get("fingerprint", "")),
        decoded_bytes=manifest.data.get("decoded_bytes"),
    )


def check_scale(facts: DataFacts, scale: int, field: str) -> None:
    """A data set prepared for another SR factor would fail in the first worker that decodes it."""
    if facts.scale != scale:
        raise ExperimentError(
            f"{field}: {facts.path} was prepared for scale x{facts.scale}, but data.scale is {scale}: "
            f"prepare it with `trilevel data prepare … --scale {scale}`"
        )


def check_search_split(stage: str, facts: DataFacts, field: str) -> None:
    """A stage that reads χ1 or χ2 needs an image on each side of the split."""
    if SEARCH_SPLIT_ROLES.intersection(STAGE_ROLES[stage]) and (facts.images_w < 1 or facts.images_a < 1):
        raise ExperimentError(f"{field}: {facts.path} holds {facts.images} image(s); the search split needs at least 2")


def check_workers(stage: str, facts: DataFacts, workers: int) -> None:
    """Ray Train gives each worker an equal share of a split; a share of no rows cannot train."""
    role = facts.smallest(STAGE_ROLES[stage])
    rows = facts.rows_of(role)
    if rows // workers < 1:
        raise ExperimentError(
            f"resources.workers.{stage}={workers}: {ROLES[role]} of {facts.path} has {rows} row(s), "
            f"fewer than the {workers} Train workers; each worker needs at least one"
        )


def steps_per_epoch(
    phase: PhaseSpec, facts: DataFacts, roles: tuple[str, ...], workers: int, crops_per_image: int = 1
) -> int:
    """The phase's `steps_per_epoch`, else one pass over each worker's equal share of the smallest split.

    Ray Train splits a training set equally across the workers (`streaming_split(equal=True)`), and
    a worker's last batch may be partial: ⌈⌊rows / workers⌋ × k / batch⌉ with k = `data.crops_per_image`
    crops cut from each decoded row. The search alternates χ1 and χ2 batches until either runs out,
    so it counts the smaller split.
    """
    rows = facts.rows_of(facts.smallest(roles))
    return phase.steps_per_epoch or math.ceil((rows // workers) * crops_per_image / phase.batch_size)


def demo_part(field: str) -> str:
    """The part of the built-in data set that "demo" means in `field`: val, test or train."""
    for part in ("val", "test"):
        if field.startswith(f"data.{part}."):
            return part
    return "train"


def shard_digests(path: str) -> frozenset[str] | None:
    """The SHA-256 of every shard of a prepared set (its manifest), None when a shard has none (older sets)."""
    digests = [entry.get("sha256") for entry in read_manifest(path).data.get("shards", [])]
    return frozenset(digests) if digests and all(digests) else None


def check_test_apart(
    val: dict[str, str], test: dict[str, str], digests: Callable[[str], frozenset[str] | None] = shard_digests
) -> None:
    """A test set must not be a validation set: not the same folder, not the same shards under another name.

    `val` and `test` map set names to resolved paths; `digests(path)` gives a set's shard digests
    (:func:`shard_digests`; a copy of a set has the same ones, two sets of different images never do).
    The experiment schema already refuses a test set named like a val set (`DataSpec`).
    """
    for test_name, test_path in test.items():
        test_digests = digests(test_path)
        for val_name, val_path in val.items():
            if posixpath.normpath(test_path) == posixpath.normpath(val_path):
                raise ExperimentError(
                    f"data.test.{test_name}: {test_path} is also data.val.{val_name}; a test set must never select "
                    "a checkpoint: use separate prepared sets"
                )
            if test_digests is not None and test_digests == digests(val_path):
                raise ExperimentError(
                    f"data.test.{test_name}: {test_path} holds the same shards as data.val.{val_name} ({val_path}); "
                    "selecting and reporting on the same images overstates the result: use separate prepared sets"
                )


def resolve_data(experiment: Experiment, storage: str) -> ResolvedData:
    """Every data set of `experiment`, checked; "demo" is written once under `<storage>/_data/demo`."""
    demo_root = join_storage(storage, "_data", DEMO)
    if DEMO in (path for _, path in experiment.data_fields()):
        write_demo_dataset(demo_root)

    def where(path: str, field: str) -> str:
        return join_storage(demo_root, demo_part(field)) if path == DEMO else path

    def read(path: str, field: str) -> DataFacts:
        facts = data_facts(path, field)
        check_scale(facts, experiment.data.scale, field)
        return facts

    facts: dict[str, DataFacts] = {}
    train: dict[str, DataFacts] = {}
    for stage in STAGES:
        field = experiment.stage_data_field(stage)
        path = where(experiment.stage_data(stage), field)
        if path not in facts:
            facts[path] = read(path, field)
        check_search_split(stage, facts[path], field)
        train[stage] = facts[path]
    val = {name: where(path, f"data.val.{name}") for name, path in experiment.data.val.items()}
    test = {name: where(path, f"data.test.{name}") for name, path in experiment.data.test.items()}
    fingerprints = {}
    for part, sets in (("val", val), ("test", test)):
        for name, path in sets.items():
            fingerprints[path] = read(path, f"data.{part}.{name}").fingerprint
    check_test_apart(val, test)
    return ResolvedData(train=train, val=val, test=test, val_fingerprints=fingerprints)


@dataclass(frozen=True)
class TrainRunPlan:
    """One Train run of a trial: its run name, worker count and settings (datasets included).

    `in_process`: the run's one CPU worker is the trial's own process (no TorchTrainer is started).
    """

    name: str
    workers: int
    settings: RunSettings
    in_process: bool = False

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(s.stage for s in self.settings.stages)


@dataclass(frozen=True)
class TrialPlan:
    """A trial: its id, axis values, resolved experiment and Train runs, in order."""

    trial_id: str
    axes: dict[str, Any]
    experiment: Experiment
    outputs: str  # <storage>/<sweep>/stages/<trial>: stage markers and Train runs
    runs: tuple[TrainRunPlan, ...]
    val: dict[str, str]  # selection sets (the Train runs read the first)
    test: dict[str, str]  # what the trial's evaluation scores and reports


def stage_outputs(storage: str, sweep: str, trial_id: str) -> str:
    """Where a trial's stages leave their markers and checkpoints."""
    return join_storage(storage, sweep, "stages", trial_id)


def _optim(phase: PhaseSpec, steps: int) -> OptimSettings:
    return OptimSettings(
        epochs=phase.epochs,
        steps_per_epoch=steps,
        batch_size=phase.batch_size,
        lr=phase.lr,
        milestones=tuple(phase.milestones),
        gamma=phase.gamma,
        loss=phase.loss,
        grad_clip=phase.grad_clip,
    )


def _dataset_name(role: str, stage: str, facts: DataFacts, default_path: str) -> str:
    base = _ROLE_DATASET[role]
    return base if facts.path == default_path else f"{base}.{stage}"


def _stage_settings(
    experiment: Experiment, stage: str, data: ResolvedData, workers: int, datasets: dict[str, str]
) -> StageSettings:
    spec = getattr(experiment.stages, stage)
    facts = data.train[stage]
    roles = STAGE_ROLES[stage]
    check_workers(stage, facts, workers)
    crops = experiment.data.crops_per_image
    steps = steps_per_epoch(spec, facts, roles, workers, crops)
    sup = experiment.supervision
    search = train = None
    if stage == "search":
        search = SearchSettings(
            arch_lr=spec.arch_lr,
            arch_betas=tuple(spec.arch_betas),
            radius_start=spec.radius_start,
            radius_end=spec.radius_end,
            lambda_order=spec.lambda_order,
            lambda_flops=spec.lambda_flops,
            flops_target=spec.flops_target,
            flops_band=tuple(spec.flops_band),
            flops_interval=spec.flops_interval,
            ssn_freeze=spec.ssn_freeze,
        )
    if stage == "train":
        finetune = None
        if spec.finetune is not None:
            finetune = _optim(spec.finetune, steps_per_epoch(spec.finetune, facts, roles, workers, crops))
        train = TrainSettings(
            from_search=spec.from_search,
            genotype=_genotype(experiment),
            finetune=finetune,
            random_draw=spec.random,
            random_tolerance=spec.random_tolerance,
        )
    return StageSettings(
        stage=stage,
        seed=experiment.seed,
        scale=experiment.data.scale,
        patch=experiment.stages.patch,
        crops_per_image=crops,
        cut_threads=experiment.data.cut_threads,
        optim=_optim(spec, steps),
        supernet=experiment.supernet_config(),
        datasets=datasets,
        supervision=Supervision(kind=sup.kind, weights=sup.weights, nb=sup.nb, nf=sup.nf, gc=sup.gc),
        vgg_weights=experiment.perceptual.vgg_weights,
        checkpoint_every=experiment.stages.checkpoint_every,
        keep_checkpoints=experiment.stages.keep_checkpoints,
        precision=experiment.stages.precision,
        deterministic=experiment.stages.deterministic,
        search=search,
        train=train,
    )


def _genotype(experiment: Experiment) -> Genotype | None:
    name = experiment.stages.train.genotype
    if name is None:
        return None
    try:
        return load_genotype(name)
    except (ValueError, OSError) as err:
        raise ExperimentError(f"stages.train.genotype: {err}") from None


def _groups(experiment: Experiment) -> list[list[str]]:
    """Consecutive stages that share a worker count, in pipeline order."""
    workers = experiment.resources.workers
    groups: list[list[str]] = []
    for stage in STAGES:
        if groups and workers[groups[-1][-1]] == workers[stage]:
            groups[-1].append(stage)
        else:
            groups.append([stage])
    return groups


def plan_trial(trial: Trial, data: ResolvedData, storage: str, sweep: str) -> TrialPlan:
    """The Train runs of `trial`, with every setting resolved and checked.

    Every stage gets its key in the stage store (`workers.stage_store`); `stages.reuse` false
    (`--no-reuse`) computes every stage again (what it computes still replaces the stored entries).
    """
    experiment = trial.experiment
    outputs = stage_outputs(storage, sweep, trial.trial_id)
    resources = experiment.resources
    first_val = next(iter(data.val.values()), None)
    groups = []
    for group in _groups(experiment):
        workers = resources.workers[group[0]]
        sources: dict[str, DatasetSource] = {}
        stages = []
        for stage in group:
            facts = data.train[stage]
            names = {}
            for role in STAGE_ROLES[stage]:
                name = _dataset_name(role, stage, facts, data.default_train)
                in_memory = _decoded_mb(facts) / workers <= experiment.data.cache_mb
                sources[name] = DatasetSource(facts.path, role, in_memory)
                names[role] = name
            stages.append(_stage_settings(experiment, stage, data, workers, names))
        groups.append((group, workers, sources, stages))
    threads = max(1, int(resources.cpus_per_worker))
    keys = _stage_keys(experiment, data, [s for _, _, _, stages in groups for s in stages], first_val, threads)
    store = StoreSettings(storage, keys, experiment.stages.reuse, {"sweep": sweep, "trial": trial.trial_id})
    runs = []
    for group, workers, sources, stages in groups:
        name = posixpath.join(sweep, "stages", trial.trial_id, "run-" + "-".join(group))
        settings = RunSettings(
            stages=tuple(stages),
            outputs=outputs,
            checkpoints=join_storage(storage, name),
            val_path=first_val,
            val_max_images=experiment.stages.val_max_images,
            datasets=sources,
            threads=threads,
            store=store,
        )
        in_process = resources.in_trial(group[0])
        runs.append(TrainRunPlan(name=name, workers=workers, settings=settings, in_process=in_process))
    return TrialPlan(
        trial_id=trial.trial_id,
        axes=dict(trial.axes),
        experiment=experiment,
        outputs=outputs,
        runs=tuple(runs),
        val=dict(data.val),
        test=dict(data.test),
    )


def _stage_keys(
    experiment: Experiment, data: ResolvedData, stages: list[StageSettings], val: str | None, threads: int
) -> dict[str, StageKey]:
    """Each stage's key in the stage store, in pipeline order (a stage's key holds the one it reads from)."""
    resources = experiment.resources
    device = "cuda" if resources.gpus_per_worker > 0 else "cpu"
    val_fingerprint = data.val_fingerprints.get(val) if val else None
    code = code_version()
    keys: dict[str, StageKey] = {}
    previous: str | None = None
    for settings in stages:
        facts = data.train[settings.stage]
        upstream = previous if reads_upstream(settings) else None
        inputs = stage_key_inputs(
            settings,
            val_max_images=experiment.stages.val_max_images,
            threads=threads,
            upstream=upstream,
            data=dict.fromkeys(settings.datasets, facts.fingerprint),
            val=val_fingerprint,
            workers=resources.workers[settings.stage],
            device=device,
            code=code,
        )
        keys[settings.stage] = StageKey(settings.stage, stage_key(inputs), inputs)
        previous = keys[settings.stage].key
    return keys


def _decoded_mb(facts: DataFacts) -> float:
    """The training set's decoded pixels: counted by its manifest, else (sets from before) estimated from PNG bytes."""
    if facts.decoded_bytes is not None:
        return facts.decoded_bytes / 2**20
    return facts.bytes * _DECODED_PER_PNG_BYTE / 2**20


def stage_steps(plan: TrialPlan) -> dict[str, tuple[int, int]]:
    """(epochs, steps) of every stage of a trial, finetune phase included: what the console's ETA follows."""
    out = {}
    for run in plan.runs:
        for stage in run.settings.stages:
            finetune = stage.train.finetune if stage.train else None
            steps = stage.optim.epochs * stage.optim.steps_per_epoch + (
                finetune.epochs * finetune.steps_per_epoch if finetune else 0
            )
            out[stage.stage] = (stage.total_epochs, steps)
    return out
