"""The experiment: one validated schema, loaded from a YAML file or a shipped preset.

A value is defined once, validated once, here at the top; errors name the field and the allowed
values. A sweep is the experiment plus grid axes (dotted field paths → values); each trial is the
experiment with one combination of axis values filled in and validated again. The trial's typed
plan (`orchestrator.plan`) is built from it; this module holds every default there is.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.tracking import DEFAULT_TRACKING_URI
from search_space.supernet import SupernetConfig
from workers.stage_list import STAGES

__all__ = [
    "DEMO",
    "PRESET_SCALES",
    "RANDOM_AXIS",
    "RESULT_NEUTRAL_FIELDS",
    "SCALE_HELP",
    "SEED_AXIS",
    "Experiment",
    "ExperimentError",
    "Trial",
    "TuneSpec",
    "apply_overrides",
    "load_experiment",
    "preset_names",
    "trial_for",
    "trial_id",
    "trials",
    "with_random",
    "with_seeds",
]

SEED_AXIS = "seed"  # the sweep axis `--seeds N` adds: every arm at seeds 0..N-1
RANDOM_AXIS = "stages.train.random"  # the axis `--random K` adds: searched (None) and K random draws

DEMO = "demo"  # data.train / data.val / data.test value meaning "the built-in data set" (its part of it)
PRESET_SCALES: tuple[str, ...] = ("tiny", "small", "paper")
# Fields that change how a sweep runs but never its results: a resumed sweep may change them
# (`trilevel resume NAME --set resources.max_concurrent_trials=1`), a re-submitted one may differ in them.
RESULT_NEUTRAL_FIELDS: tuple[str, ...] = (
    "resources.max_concurrent_trials",
    "resources.max_failures",
    "resources.trial_cpus",
    "data.data_cpus",
    "data.cache_mb",
    "data.cut_threads",  # the same batches in the same order (tests/workers/test_search_step.py)
    "tracking.flush_timeout_s",
    "search_space.recompute_cells",  # the same gradients bit for bit (tests/workers/test_search_step.py)
    "stages.keep_checkpoints",  # which old checkpoints stay on disk, never what is computed
    "stages.reuse",  # a reused stage is the stored output of the same key: what computing it again gives
)
SCALE_HELP = "Preset scale: tiny (the demo, minutes), small (about 30 min per sweep on a laptop) or paper."


class ExperimentError(ValueError):
    """An experiment that does not validate; the message names the source, the field and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(_Strict):
    """Prepared shard folders (`trilevel data prepare`), or "demo" for the built-in photographs.

    Selection and reporting use different images: `val` gives the per-epoch curves and the train
    stage's best-of-epochs checkpoint (its first set) and nothing else; `test` is only evaluated,
    never used by any choice, and is what every report shows. "demo" means the built-in set's own
    val or test part (`workers.shards.demo`), disjoint from its training photographs and each other.
    """

    train: str = DEMO
    val: dict[str, str] = Field(
        default_factory=lambda: {"demo-val": DEMO},
        description="selection sets (name → path): per-epoch curves and the best-checkpoint choice only",
    )
    test: dict[str, str] = Field(
        default_factory=lambda: {DEMO: DEMO},
        description="test sets (name → path): evaluated once at the end, what reports show; never selects",
    )
    scale: int = Field(4, ge=2, le=8)
    data_cpus: float = Field(0.25, gt=0, lt=1, description="CPU fraction of each Ray Data task")
    crops_per_image: int = Field(
        1,
        ge=1,
        le=64,
        description="random LR/HR crops cut from each decoded training row (decode once, crop k times): a pass "
        "over the data gives k times the steps; 1 is the paper's one crop per image per epoch",
    )
    cut_threads: int = Field(
        1,
        ge=1,
        le=16,
        description="threads of a training worker that cut the random crops from decoded rows (the same batches in "
        "the same order at any count); one fed a GPU's train step ~9x over in BENCHMARKS.md, a second gained nothing "
        "where it could be measured",
    )
    cache_mb: float = Field(
        1024.0,
        ge=0,
        description="a training set whose decoded images take at most this much per worker is decoded once and "
        "kept in memory instead of being streamed again every pass",
    )

    @model_validator(mode="after")
    def _test_is_not_val(self) -> DataSpec:
        if not self.test:
            raise ValueError("data.test: needs at least one test set (name: path); reports show only test numbers")
        for name, path in self.test.items():
            if name in self.val:
                raise ValueError(
                    f"data.test.{name}: {name!r} is also a validation set (data.val.{name}); a test set must never "
                    "select a checkpoint: give the test set another name and other images"
                )
            for val_name, val_path in self.val.items():
                if path == val_path and path != DEMO:
                    raise ValueError(
                        f"data.test.{name}: {path} is also data.val.{val_name}; selecting and reporting on the same "
                        "images overstates the result: use separate prepared sets"
                    )
        return self


class SearchSpaceSpec(_Strict):
    backbone: Literal["A", "B"] = "B"
    combiner: Literal["softmax", "sparsemax", "sparsestmax"] = "sparsestmax"
    levels: Literal["trilevel", "bilevel"] = "trilevel"
    fixed_path: list[int] | None = Field(
        None,
        description="the path of a bilevel search; default AGD's: every cell, then the '1'-layers "
        "([0,0,0,0,0,1,1] for 5 cells and 2 ups; it follows num_cells)",
    )
    nf: int = Field(64, ge=4)
    widths: list[int] = Field(default_factory=lambda: [24, 32, 40, 56, 64])
    num_cells: int = Field(5, ge=1, le=8)
    num_ups: int = Field(2, ge=0, le=4)
    omega_ops: float = Field(2 / 7, ge=0)
    omega_widths: float = Field(5 / 7, ge=0)
    recompute_cells: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of cells whose activations are recomputed in backward instead of stored: "
        "less memory per step for more compute (a dense paper-size search step at 0.5: 0.62x the memory of 0, "
        "~1.2x the time; BENCHMARKS.md)",
    )


class PhaseSpec(_Strict):
    """One optimisation phase (method.md §3); milestones in epochs, lr ×gamma at each."""

    epochs: int = Field(1, ge=1)
    steps_per_epoch: int | None = Field(None, ge=1)
    batch_size: int = Field(3, ge=1)
    lr: float = Field(1e-4, gt=0)
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(0.5, gt=0, le=1)
    loss: Literal["content", "perceptual"] = "content"
    grad_clip: float | None = Field(5.0, gt=0)


class StageSpec(PhaseSpec):
    """A training stage: one phase plus, optionally, its own training data (overrides `data.train`)."""

    data: str | None = Field(
        None, description="prepared shard folder (or demo) this stage trains on instead of data.train"
    )


class SearchPhaseSpec(StageSpec):
    arch_lr: float = Field(3e-4, gt=0)
    arch_betas: tuple[float, float] = (0.5, 0.999)
    radius_start: float = Field(0.0, ge=0)
    radius_end: float = Field(1.0, ge=0)
    lambda_order: float = Field(0.0, ge=0)
    lambda_flops: float = Field(
        1e-20,
        ge=0,
        description="FLOPs penalty weight on raw MACs (the paper's 1e-20); with flops_target, the initial weight "
        "of the penalty measured in units of the target",
    )
    flops_target: float | None = Field(
        None, gt=0, description="steer the search to this many GFLOPs at a 256x256 LR input (AGD's adaptive rule)"
    )
    flops_band: tuple[float, float] = Field(
        (0.5, 2.0), description="λ_flops doubles above high·target and halves below low·target (AGD: 100-400 G)"
    )
    flops_interval: int = Field(20, ge=1, description="epochs between λ_flops adaptations (AGD: 20)")
    ssn_freeze: bool = Field(
        True, description="freeze combiner rows once one-hot (SSN); off only to study the drift it prevents"
    )

    @model_validator(mode="after")
    def _flops_target_needs_weight(self) -> SearchPhaseSpec:
        low, high = self.flops_band
        if not 0 < low <= 1 <= high:
            raise ValueError(f"flops_band must be (low, high) with 0 < low <= 1 <= high, got {self.flops_band}")
        if self.flops_target is not None and self.lambda_flops < 1e-6:
            raise ValueError(
                f"lambda_flops: with a flops_target it is the initial weight of the penalty in units of the target "
                f"(e.g. 0.01), got {self.lambda_flops}"
            )
        return self


class TrainPhaseSpec(StageSpec):
    from_search: bool = True
    genotype: str | None = Field(None, description="zoo name or JSON file: train it instead of the searched one")
    random: int | None = Field(
        None,
        ge=0,
        description="the random baseline: train the k-th random architecture of this seed whose GFLOPs are within "
        "±random_tolerance of the searched one's (same space, same supernet's weights, same budget); `--random K`",
    )
    random_tolerance: float = Field(0.1, gt=0, lt=1)
    finetune: PhaseSpec | None = None


class StagesSpec(_Strict):
    patch: int = Field(32, ge=4)
    checkpoint_every: int = Field(1, ge=1)
    keep_checkpoints: int | None = Field(
        None,
        ge=1,
        description="keep each run's last K checkpoints (plus every stage's final one and the train stage's best); "
        "unset keeps all (a paper-size supernet checkpoint is ~341 MB)",
    )
    val_max_images: int | None = Field(None, ge=1)
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: autocast convolutions (channels-last); combiners, costs, losses stay fp32"
    )
    deterministic: bool = Field(False, description="deterministic kernels (torch.use_deterministic_algorithms): slower")
    reuse: bool = Field(
        True,
        description="reuse a finished stage stored under the same key on this storage (by any trial of any sweep; "
        "workers/stage_store); false (--no-reuse) computes every stage again and stores the new result",
    )
    pretrain: StageSpec = Field(default_factory=StageSpec)
    search: SearchPhaseSpec = Field(default_factory=SearchPhaseSpec)
    train: TrainPhaseSpec = Field(default_factory=TrainPhaseSpec)


class SupervisionSpec(_Strict):
    kind: Literal["hr", "teacher"] = "hr"
    weights: str | None = None
    nb: int = Field(23, ge=1)
    nf: int = Field(64, ge=1)
    gc: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _teacher_needs_weights(self) -> SupervisionSpec:
        if self.kind == "teacher" and not self.weights:
            raise ValueError("a teacher needs weights: the path of RRDB_PSNR_x4.pth or RRDB_ESRGAN_x4.pth")
        return self


class PerceptualSpec(_Strict):
    vgg_weights: str | None = None


class ResourcesSpec(_Strict):
    """Per-stage Ray Train workers (≥ 1), their CPUs/GPUs, and how trials are scheduled and retried."""

    workers: dict[Literal[STAGES], int] = Field(  # type: ignore[valid-type]  # the stage names, as literals
        default_factory=lambda: dict.fromkeys(STAGES, 1)
    )
    gpus_per_worker: float = Field(0.0, ge=0)
    cpus_per_worker: float = Field(0.5, gt=0)
    trial_cpus: float = Field(0.01, gt=0, description="what a Tune trial reserves; tiny so trials never deadlock")
    max_concurrent_trials: int | None = Field(
        None,
        ge=1,
        description="trials running at once, for a new sweep and a resumed one; unset: as many as the cluster's "
        "resources fit (each trial reserves trial_reservation() CPUs, its stages their workers)",
    )
    max_failures: int = Field(1, ge=0, description="retries of a failed Train worker group and of a failed trial")
    single_worker_in_trial: bool = Field(
        True,
        description="a run of stages with one CPU worker runs in its trial's process, which then reserves "
        "cpus_per_worker: no Ray Train start (~15 s per trial); false starts a TorchTrainer for it too",
    )

    def in_trial(self, stage: str) -> bool:
        """Whether `stage` runs in its trial's process (one CPU worker) rather than as a TorchTrainer."""
        return self.single_worker_in_trial and self.workers[stage] == 1 and self.gpus_per_worker == 0

    def evaluation_resources(self) -> dict[str, float] | None:
        """What a trial's evaluation holds: None in the trial's process (CPU runs), else a Ray task's CPU and GPU.

        A GPU run evaluates on a GPU (`workers.evaluate_on_device`): a task asking one worker's share
        (at most one GPU: evaluation uses one device) and CPUs, after the stages gave theirs back.
        """
        if self.gpus_per_worker == 0:
            return None
        return {"CPU": self.cpus_per_worker, "GPU": min(self.gpus_per_worker, 1.0)}

    def trial_reservation(self) -> float:
        """CPUs a Tune trial reserves: its one worker's when a stage runs in it, else a token share."""
        if any(self.in_trial(stage) for stage in self.workers):
            return max(self.trial_cpus, self.cpus_per_worker)
        return self.trial_cpus

    @field_validator("workers")
    @classmethod
    def _non_negative(cls, value: dict[str, int]) -> dict[str, int]:
        for stage, count in value.items():
            if count < 1:
                raise ValueError(f"workers.{stage} must be >= 1, got {count}")
        return value


class TrackingSpec(_Strict):
    uri: str = DEFAULT_TRACKING_URI
    experiment: str = "trilevel"
    registered_model: str | None = Field(
        None,
        description="MLflow registered model of the best trial's image model (PNG in, ×scale PNG out), its alias "
        "`champion` moved when a better trial finishes (serve it: mlflow models serve -m models:/NAME@champion); "
        "default: the sweep's name",
    )
    register_model: bool = Field(True, description="register the best trial's model; false: log models, register none")
    system_metrics: bool = Field(
        True, description="MLflow system metrics (CPU, memory, disk, network, GPU) of every stage run"
    )
    flush_timeout_s: float = Field(
        300.0,
        ge=0,
        description="how long a finished trial (and the driver) waits for an unreachable tracking server to take "
        "what was queued during an outage; what is still queued then is listed under <storage>/<sweep>/"
        "tracking-backlog/",
    )


class SchedulerSpec(_Strict):
    """A Tune trial scheduler acting on every epoch's report (`epochs_done` counts epochs over all stages)."""

    kind: Literal["fifo", "asha", "median"] = Field(
        "fifo", description="fifo: run every trial to the end; asha: ASHA; median: median stopping rule"
    )
    metric: str = Field(
        "objective",
        description="a metric every epoch reports: objective (the validation PSNR, 0 dB when the network diverged, "
        "less the GFLOPs budget's penalty), val_psnr, loss",
    )
    mode: Literal["max", "min"] = "max"
    grace_period: int = Field(1, ge=1, description="epochs (over all stages) before a trial may be stopped")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA: keep the best 1/reduction_factor at each rung")
    max_t: int | None = Field(None, ge=1, description="ASHA: epochs of a whole trial (default: the experiment's)")


class SpaceAxis(_Strict):
    """A searched axis: a distribution a search algorithm draws (or suggests) the field's value from."""

    kind: Literal["uniform", "loguniform", "randint", "choice"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _complete(self) -> SpaceAxis:
        if self.kind == "choice":
            if not self.values:
                raise ValueError("a choice needs values: [..]")
            return self
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"{self.kind} needs low < high, got low={self.low} high={self.high}")
        if self.kind == "loguniform" and self.low <= 0:
            raise ValueError(f"loguniform needs low > 0, got {self.low}")
        return self


class SearchSpec(_Strict):
    """How trials are chosen: Tune's variant generator (grid axes × random draws) or Optuna (pip extra `tune`)."""

    kind: Literal["random", "optuna"] = Field(
        "random",
        description="random: every grid combination of sweep:, each searched axis drawn at random; "
        "optuna: Optuna's TPE suggests the searched axes from the trials so far",
    )
    metric: str = Field("objective", description="what the search maximises/minimises: a trial's final report")
    mode: Literal["max", "min"] = "max"
    space: dict[str, SpaceAxis] = Field(default_factory=dict, description="searched axes: dotted field → distribution")
    points: list[dict[str, Any]] = Field(
        default_factory=list, description="trials to run first, as {field: value} (warm start)"
    )
    seed: int | None = None


class TuneSpec(_Strict):
    """What Ray Tune does with the trials: scheduler, search algorithm, samples, callbacks."""

    num_samples: int = Field(1, ge=1, description="random: draws of the searched axes per grid point; optuna: trials")
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    gflops_budget: float | None = Field(
        None, gt=0, description="the objective is the validation PSNR minus 10 dB per 100% over this many GFLOPs"
    )
    callbacks: list[str] = Field(
        default_factory=list, description="Tune callbacks to add, as importable dotted paths of classes (no arguments)"
    )

    @field_validator("callbacks")
    @classmethod
    def _dotted(cls, value: list[str]) -> list[str]:
        for path in value:
            if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", path):
                raise ValueError(f"a callback is a dotted path such as package.module.Class, got {path!r}")
        return value


class Experiment(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    seed: int = 0
    data: DataSpec = Field(default_factory=DataSpec)
    search_space: SearchSpaceSpec = Field(default_factory=SearchSpaceSpec)
    stages: StagesSpec = Field(default_factory=StagesSpec)
    supervision: SupervisionSpec = Field(default_factory=SupervisionSpec)
    perceptual: PerceptualSpec = Field(default_factory=PerceptualSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    storage: str = "./trilevel-runs"
    sweep: dict[str, list[Any]] = Field(default_factory=dict, description="grid axes: dotted field → values")
    labels: dict[str, str] = Field(default_factory=dict, description="display names of axis values (reports)")
    tune: TuneSpec = Field(default_factory=TuneSpec)

    @model_validator(mode="after")
    def _consistent(self) -> Experiment:
        try:
            self.supernet_config()
        except ValueError as err:
            raise ValueError(str(err).replace("supernet.", "search_space.")) from None
        for axis, values in self.sweep.items():
            if not values:
                raise ValueError(f"sweep.{axis}: needs at least one value")
            shown = [json.dumps(v, sort_keys=True, default=str) for v in values]
            if repeated := sorted({v for v in shown if shown.count(v) > 1}):
                raise ValueError(f"sweep.{axis}: the value {', '.join(repeated)} appears more than once")
            _get(self.model_dump(), axis, where=f"sweep.{axis}")
        self._consistent_tune()
        if self.stages.search.radius_end < self.stages.search.radius_start:
            raise ValueError("stages.search.radius_end must be >= radius_start")
        return self

    def _consistent_tune(self) -> None:
        tune = self.tune
        dumped = self.model_dump()
        for axis in tune.search.space:
            _get(dumped, axis, where=f"tune.search.space.{axis}")
            if axis in self.sweep:
                raise ValueError(f"tune.search.space.{axis}: also a grid axis in sweep:; give it in one place")
        axes = set(self.sweep) | set(tune.search.space)
        for i, point in enumerate(tune.search.points):
            if unknown := sorted(set(point) - axes):
                raise ValueError(f"tune.search.points.{i}: {', '.join(unknown)} is not an axis of sweep: or the space")
        if tune.search.kind == "optuna" and self.sweep:
            raise ValueError(
                f"tune.search.kind: optuna suggests values and cannot take grid axes (sweep.{next(iter(self.sweep))}): "
                "give them as choice axes in tune.search.space"
            )
        if tune.search.kind == "optuna" and not tune.search.space:
            raise ValueError("tune.search.kind: optuna needs at least one axis in tune.search.space")
        if tune.num_samples > 1 and not tune.search.space:
            raise ValueError(
                f"tune.num_samples: {tune.num_samples} samples of a sweep with no searched axis would repeat the "
                "same trials; add tune.search.space"
            )

    def stage_data(self, stage: str) -> str:
        """The training data of a stage: its own `stages.<stage>.data`, else `data.train`."""
        return getattr(self.stages, stage).data or self.data.train

    def stage_data_field(self, stage: str) -> str:
        """The field that sets a stage's training data (`stage_data`), for errors that name it."""
        return f"stages.{stage}.data" if getattr(self.stages, stage).data else "data.train"

    def data_fields(self) -> list[tuple[str, str]]:
        """Every data set the experiment reads, as (field, path): what a pre-flight check must find."""
        fields = [("data.train", self.data.train)]
        fields += [(f"stages.{s}.data", getattr(self.stages, s).data) for s in STAGES]
        fields += [(f"data.val.{name}", path) for name, path in self.data.val.items()]
        fields += [(f"data.test.{name}", path) for name, path in self.data.test.items()]
        return [(field, path) for field, path in fields if path]

    def supernet_config(self) -> SupernetConfig:
        s = self.search_space
        return SupernetConfig(
            backbone=s.backbone,
            nf=s.nf,
            scale=self.data.scale,
            num_cells=s.num_cells,
            num_ups=s.num_ups,
            widths=tuple(s.widths),
            combiner=s.combiner,
            levels=s.levels,
            fixed_path=None if s.fixed_path is None else tuple(s.fixed_path),
            omega_ops=s.omega_ops,
            omega_widths=s.omega_widths,
            recompute_cells=s.recompute_cells,
        )


# --- loading ----------------------------------------------------------------------------------
def preset_names() -> list[str]:
    files = resources.files("orchestrator.presets").iterdir()
    return sorted(p.name[: -len(".yaml")] for p in files if p.name.endswith(".yaml"))


# Mappings a child replaces whole instead of merging into: a preset (or file) that names its val or test
# sets means exactly those (AIM reports on DIV2K-val, which its parent uses to select); in `scales` too.
_REPLACED: frozenset[tuple[str, ...]] = frozenset({("data", "val"), ("data", "test")})


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any], at: tuple[str, ...] = ()) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in over.items():
        where = (*at, key)
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict) and where[-2:] not in _REPLACED:
            merged[key] = _deep_merge(merged[key], value, where)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ExperimentError(f"{source}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ExperimentError(f"{source}: expected a mapping of fields at the top level")
    return data


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ExperimentError(f"override {item!r}: expected FIELD=VALUE, e.g. stages.search.epochs=10")
    key, raw = item.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def _preset_data(name: str, chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """A preset's raw fields with its `extends:` chain merged in (child over parent, scales too)."""
    entry = resources.files("orchestrator.presets") / f"{name}.yaml"
    if not entry.is_file():
        where = f" (extended by preset {chain[-1]})" if chain else ""
        raise ExperimentError(
            f"unknown experiment {name!r}{where}: presets are {', '.join(preset_names())}, or give a YAML file"
        )
    if name in chain:
        raise ExperimentError(f"preset {name}: circular extends ({' -> '.join((*chain, name))})")
    data = _read_yaml(entry.read_text(), f"preset {name}")
    parent = data.pop("extends", None)
    return _deep_merge(_preset_data(parent, (*chain, name)), data) if parent else data


def _at_scale(data: dict[str, Any], scale: str, source: str) -> dict[str, Any]:
    """`data` with its `scales:` block resolved: the block of `scale` merged over the other fields."""
    scales = data.pop("scales", None)
    if scales is None:
        return data
    if not isinstance(scales, Mapping) or scale not in scales:
        known = ", ".join(scales) if isinstance(scales, Mapping) else "none (scales is not a mapping)"
        raise ExperimentError(f"{source}: scale must be one of {known}, got {scale!r}")
    return _deep_merge(data, scales[scale] or {})


def load_experiment(
    name_or_path: str | Path, scale: str = "tiny", overrides: Sequence[str] = (), **fields: Any
) -> Experiment:
    """A preset name (see `preset_names`) at `scale`, or a YAML file; then `FIELD=VALUE` overrides.

    A YAML file may `extends: <preset>` to start from a preset at `scale` and change only what differs:
    what the file sets wins over the preset (at every scale), `--set` overrides win over both.
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ExperimentError(f"{path}: no such experiment file")
        source = str(path)
        data = _read_yaml(path.read_text(), source)
        parent = data.pop("extends", None)
        # The preset is resolved at `scale` first and the file goes on top: a preset's scale block used to
        # be merged last, so it silently beat the user's own `data.train` or `epochs` (GPU-days on the
        # wrong experiment). The file's own `scales:` block, if any, is the last word of the file.
        base = _at_scale(_preset_data(parent), scale, f"preset {parent} (extended by {source})") if parent else {}
        data = _at_scale(_deep_merge(base, data), scale, source)
    else:
        source = f"preset {name_or_path}"
        data = _at_scale(_preset_data(str(name_or_path)), scale, source)
    for item in overrides:
        key, value = _parse_override(item)
        data = _set(data, key, value)
    for key, value in fields.items():
        if value is not None:
            data = _set(data, key, value)
    return validate(data, source)


def apply_overrides(
    experiment: Experiment, overrides: Sequence[str], allowed: Sequence[str] | None = None
) -> Experiment:
    """`experiment` with `FIELD=VALUE` overrides applied and validated; `allowed` limits the fields."""
    data = experiment.model_dump(mode="json")
    for item in overrides:
        key, value = _parse_override(item)
        if allowed is not None and key not in allowed:
            raise ExperimentError(
                f"override {key}: only fields that do not change results may change here: {', '.join(allowed)}"
            )
        data = _set(data, key, value)
    return validate(data, f"experiment {experiment.name}")


def validate(data: Mapping[str, Any], source: str = "experiment") -> Experiment:
    try:
        return Experiment.model_validate(data)
    except ValidationError as err:
        raise ExperimentError(_describe(err, source)) from None


def _describe(err: ValidationError, source: str) -> str:
    lines = [f"{source}: {err.error_count()} problem(s)"]
    for problem in err.errors():
        field = ".".join(str(p) for p in problem["loc"]) or "(top level)"
        message = problem["msg"].removeprefix("Value error, ")
        got = problem.get("input")
        shown = "" if isinstance(got, dict) or problem["type"] == "missing" else f" (got {got!r})"
        lines.append(f"  {field}: {message}{shown}")
    return "\n".join(lines)


def _get(data: Mapping[str, Any], dotted: str, where: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ValueError(f"{where}: no field {dotted!r} in the experiment")
        node = node[part]
    return node


def _set(data: Mapping[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    updated = copy.deepcopy(dict(data))
    node = updated
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ExperimentError(f"override {dotted}: {part!r} is not a section")
    node[parts[-1]] = value
    return updated


# --- sweeps -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Trial:
    """One grid point of a sweep: its id, its axis values and the resolved experiment."""

    trial_id: str
    axes: dict[str, Any]
    experiment: Experiment


_SAFE_ID = re.compile(r"[A-Za-z0-9_.,=+-]+")


def trial_id(axes: Mapping[str, Any]) -> str:
    """`lambda_order=0.01,...`: readable, and always one safe folder name under the sweep.

    The id names the trial's folder: an axis value such as `../../x.json` must not lead out of the
    sweep folder, so characters other than letters, digits and `_.,=+-` become `_` and a short hash of
    the exact values keeps two such ids apart. Ids that were already safe are unchanged (resume finds them).
    """
    if not axes:
        return "default"
    readable = ",".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in axes.items())
    if _SAFE_ID.fullmatch(readable) and readable not in (".", ".."):
        return readable
    digest = hashlib.sha256(json.dumps(axes, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_.,=+-]', '_', readable).strip('.')}-{digest}"


def with_seeds(experiment: Experiment, seeds: int) -> Experiment:
    """`experiment` with every arm repeated at seeds 0..seeds-1: a `seed` sweep axis, last, so trial ids read
    ``lambda_order=0.1,seed=2`` and the report groups by arm. Arms of one seed share initial weights,
    patches and Gumbel draws (the seed reaches every stage), so they can be compared seed by seed.
    """
    if seeds < 1:
        raise ExperimentError(f"--seeds must be at least 1, got {seeds}")
    if SEED_AXIS in experiment.sweep:
        raise ExperimentError(
            f"--seeds {seeds}: the experiment already sweeps {SEED_AXIS} ({experiment.sweep[SEED_AXIS]}); use one"
        )
    data = experiment.model_dump(mode="json")
    data["sweep"] = {**experiment.sweep, SEED_AXIS: list(range(seeds))}
    return validate(data, f"experiment {experiment.name}")


def with_random(experiment: Experiment, draws: int = 3) -> Experiment:
    """`experiment` with a random, FLOPs-matched baseline beside every arm: a `stages.train.random` axis of
    None (the searched network) and draws 0..K-1 (before the seed axis, if any). Each random trial
    searches as its searched twin does (same seed: the same supernet and derived path) and then trains
    the k-th random architecture of the space within ±10 % of the searched GFLOPs, from the same supernet.
    """
    if draws < 1:
        raise ExperimentError(f"--random must be at least 1, got {draws}")
    if RANDOM_AXIS in experiment.sweep:
        raise ExperimentError(f"--random {draws}: the experiment already sweeps {RANDOM_AXIS}; use one")
    axes = {k: v for k, v in experiment.sweep.items() if k != SEED_AXIS}
    axes[RANDOM_AXIS] = [None, *range(draws)]
    if SEED_AXIS in experiment.sweep:
        axes[SEED_AXIS] = experiment.sweep[SEED_AXIS]
    data = experiment.model_dump(mode="json")
    data["sweep"] = axes
    return validate(data, f"experiment {experiment.name}")


def trial_for(experiment: Experiment, assignment: Mapping[str, Any]) -> Trial:
    """The trial of one assignment of axis values (a grid point, or values a search algorithm suggested).

    Inside a Tune trial this is how its config becomes its experiment, so a suggested value is planned,
    resumed and tracked exactly like a grid value.
    """
    data = experiment.model_dump() | {"sweep": {}}
    for key, value in assignment.items():
        data = _set(data, key, value)
    name = trial_id(assignment)
    return Trial(name, dict(assignment), validate(data, f"{experiment.name} trial {name}"))


def trials(experiment: Experiment) -> list[Trial]:
    """Every combination of the sweep axes, in a deterministic order, each validated.

    Searched axes (`tune.search.space`) are not known before Tune runs: these are the grid points only.
    """
    axes = list(experiment.sweep)
    out = []
    for values in itertools.product(*(experiment.sweep[a] for a in axes)):
        trial = trial_for(experiment, dict(zip(axes, values, strict=True)))
        if any(t.trial_id == trial.trial_id for t in out):
            raise ExperimentError(
                f"{experiment.name}: two grid points get the same trial id {trial.trial_id!r} "
                f"(sweep values {trial.axes}): make the values of each axis distinct"
            )
        out.append(trial)
    return out
