"""Typed settings of the stage loops, built once by the orchestrator from the validated experiment.

These dataclasses have no defaults on purpose: every value comes from the experiment schema
(`orchestrator/experiment.py`, the one place defaults live) through the trial plan
(`orchestrator/plan.py`), so a default can never drift between the two. They are frozen and
picklable: Ray ships them to the Train workers inside `train_loop_config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from search_space.genotype import Genotype
from search_space.supernet import SupernetConfig
from workers.stage_list import STAGES

if TYPE_CHECKING:
    from workers.stage_store.stage_key import StageKey

__all__ = [
    "STAGES",
    "DatasetSource",
    "OptimSettings",
    "RunSettings",
    "SearchSettings",
    "StageSettings",
    "StoreSettings",
    "Supervision",
    "TrainSettings",
]


@dataclass(frozen=True)
class OptimSettings:
    """One phase of optimisation (method.md §3): length, batch, learning-rate schedule and loss."""

    epochs: int
    steps_per_epoch: int  # resolved by the plan: the experiment's value, else one pass over the data
    batch_size: int
    lr: float
    milestones: tuple[int, ...]  # epochs at which lr is multiplied by gamma
    gamma: float
    loss: str  # content | perceptual
    grad_clip: float | None


@dataclass(frozen=True)
class Supervision:
    """Where targets come from: a frozen teacher (ESRGAN RRDBNet weights file) or the HR images."""

    kind: str  # hr | teacher
    weights: str | None
    nb: int
    nf: int
    gc: int


@dataclass(frozen=True)
class SearchSettings:
    """The architecture side of the search stage (Alg. 1 lines 13-24, method.md §2/§4)."""

    arch_lr: float
    arch_betas: tuple[float, float]
    radius_start: float
    radius_end: float
    lambda_order: float
    lambda_flops: float  # weight of the FLOPs penalty (raw MACs; in units of the target when one is set)
    flops_target: float | None  # GFLOPs at a 256×256 LR input; None: the paper's fixed λ_flops
    flops_band: tuple[float, float]  # (low, high) multiples of the target outside which λ_flops is adapted
    flops_interval: int  # epochs between adaptations (AGD: 20)
    ssn_freeze: bool  # freeze rows once their combiner output is one-hot (method.md §5)


@dataclass(frozen=True)
class TrainSettings:
    """The derived network's training (train from search, or from scratch for Fig. 1)."""

    from_search: bool
    genotype: Genotype | None  # a given architecture; None: the one the search derived
    finetune: OptimSettings | None  # second, perceptual phase (visualization-oriented models)
    random_draw: int | None = None  # train the k-th random, FLOPs-matched architecture instead (the baseline)
    random_tolerance: float = 0.1  # its GFLOPs within ± this share of the searched network's


@dataclass(frozen=True)
class StageSettings:
    """Everything one stage loop needs."""

    stage: str  # pretrain | search | train
    seed: int
    scale: int
    patch: int
    crops_per_image: int  # random crops cut from each decoded training row (workers.batches.patch_batches)
    cut_threads: int  # threads cutting those crops: the same batches at any count (result-neutral)
    optim: OptimSettings
    supernet: SupernetConfig
    datasets: dict[str, str]  # role (workers.stage_list: w = χ1, a = χ2, all) → dataset name for the TorchTrainer
    supervision: Supervision
    vgg_weights: str | None
    checkpoint_every: int  # epochs
    keep_checkpoints: int | None  # the run's last K checkpoints kept (plus those stage results name); None: all
    precision: str  # fp32 | bf16 (workers.precision)
    deterministic: bool  # torch.use_deterministic_algorithms for the run
    search: SearchSettings | None  # search stage only
    train: TrainSettings | None  # train stage only

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        if (self.search is not None) != (self.stage == "search") or (self.train is not None) != (self.stage == "train"):
            raise ValueError(f"stage {self.stage}: search settings only for search, train settings only for train")

    @property
    def total_epochs(self) -> int:
        """Epochs of the stage, the train stage's fine-tuning phase included."""
        finetune = self.train.finetune if self.train else None
        return self.optim.epochs + (finetune.epochs if finetune else 0)


@dataclass(frozen=True)
class DatasetSource:
    """A training dataset of a run: which rows of which prepared set, and how a worker gets them.

    `role`: w = χ1 (first half of the sorted image ids), a = χ2, all = every row. `in_memory`: the
    set is small, so each worker decodes its equal share once and keeps it (no Ray Data pipeline
    to start, no decoding per pass); otherwise Ray Data streams it, split across the workers.
    """

    path: str
    role: str
    in_memory: bool


@dataclass(frozen=True)
class StoreSettings:
    """The stage store of a run (`workers.stage_store`): where finished stages are published, under which keys.

    `reuse` False (`--no-reuse`): the trial computes every stage itself; what it computes still
    replaces the stored entries. `computed_by` names the computing trial (sweep, trial) in the entry.
    """

    storage: str
    keys: dict[str, StageKey]  # stage → its key
    reuse: bool
    computed_by: dict[str, Any]


@dataclass(frozen=True)
class RunSettings:
    """One Train run: consecutive stages sharing a worker group, and where their outputs go.

    `outputs` is `<storage>/<sweep>/stages/<trial>`: each finished stage leaves
    `<outputs>/<stage>/_STAGE_DONE.json` there, which is also how the first stage of a later run
    finds the weights it starts from. `checkpoints` is the Train run's own directory, where every
    reported checkpoint lands as `<stage>-e<epoch>`.
    """

    stages: tuple[StageSettings, ...]
    outputs: str
    checkpoints: str
    val_path: str | None
    val_max_images: int | None
    datasets: dict[str, DatasetSource]  # every training dataset a stage of the run reads, by name
    threads: int  # torch threads per worker (the CPUs it asked for)
    store: StoreSettings | None  # publish finished stages by key; None: no stage store

    @property
    def streamed(self) -> list[str]:
        """The datasets Ray Data streams to the workers (the others the workers decode themselves)."""
        return [name for name, source in self.datasets.items() if not source.in_memory]

    def __post_init__(self) -> None:
        names = [s.stage for s in self.stages]
        if not names or names != sorted(names, key=STAGES.index) or len(set(names)) != len(names):
            raise ValueError(f"a run holds distinct stages in pipeline order, got {names}")
