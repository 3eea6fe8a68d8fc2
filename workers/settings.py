"""The plain-dict config a stage loop receives, read into one typed object.

The orchestrator validates experiments once, at the top, and hands each stage a plain
`train_loop_config` dict (serialisable, so Ray can ship it). This module only gives that dict a
typed shape inside the worker; unknown keys are an error so a typo never silently becomes a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["STAGES", "OptimSettings", "StageSettings", "Supervision"]

STAGES: tuple[str, ...] = ("pretrain", "search", "train")


@dataclass(frozen=True)
class OptimSettings:
    """One phase of optimisation: length, learning-rate schedule and loss (method.md §3)."""

    epochs: int = 1
    steps_per_epoch: int | None = None  # None: one pass over the (smaller) training shard
    lr: float = 1e-4
    milestones: tuple[int, ...] = ()  # epochs at which lr is multiplied by gamma
    gamma: float = 0.5
    loss: str = "content"  # content | perceptual
    grad_clip: float | None = 5.0


@dataclass(frozen=True)
class Supervision:
    """Where targets come from: a frozen teacher (ESRGAN RRDBNet weights file) or the HR images."""

    kind: str = "hr"  # hr | teacher
    weights: str | None = None
    nb: int = 23
    nf: int = 64
    gc: int = 32


@dataclass(frozen=True)
class StageSettings:
    """Everything one stage loop needs; built from the stage's `train_loop_config`."""

    stage: str
    seed: int = 0
    scale: int = 4
    patch: int = 32
    batch_size: int = 3
    optim: OptimSettings = field(default_factory=OptimSettings)
    supernet: dict[str, Any] = field(default_factory=dict)  # SupernetConfig fields
    # search
    arch_lr: float = 3e-4
    arch_betas: tuple[float, float] = (0.5, 0.999)
    radius_start: float = 0.0
    radius_end: float = 1.0
    lambda_flops: float = 0.0
    lambda_order: float = 0.0
    # train
    genotype: dict[str, Any] | None = None  # train a given genotype; default: the search's result
    from_search: bool = True  # inherit the supernet's weights (False: train from scratch, Fig. 1)
    finetune: OptimSettings | None = None  # second, perceptual phase (visualization-oriented models)
    # io
    init_from: str | None = None  # previous stage's checkpoint directory
    val_path: str | None = None
    val_max_images: int | None = None
    vgg_weights: str | None = None
    supervision: Supervision = field(default_factory=Supervision)
    checkpoint_every: int = 1  # epochs

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> StageSettings:
        """Typed settings from a plain dict; unknown keys are an error naming them."""
        data = dict(config)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"stage config: unknown key(s) {', '.join(unknown)}")
        if data.get("stage") not in STAGES:
            raise ValueError(f"stage config: stage must be one of {', '.join(STAGES)}, got {data.get('stage')!r}")
        for key, kind in (("optim", OptimSettings), ("finetune", OptimSettings), ("supervision", Supervision)):
            if isinstance(data.get(key), dict):
                sub = dict(data[key])
                if "milestones" in sub:
                    sub["milestones"] = tuple(sub["milestones"])
                data[key] = kind(**sub)
        if "arch_betas" in data:
            data["arch_betas"] = tuple(data["arch_betas"])
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
