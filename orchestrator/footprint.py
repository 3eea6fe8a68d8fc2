"""Bytes of checkpoints a trial leaves on its storage path: the line the `--dry-run` plan prints.

Why: every stage saves a checkpoint every `stages.checkpoint_every` epochs; at paper size a supernet
checkpoint (weights, their two Adam moments, the architecture's) is ~341 MB and a trial saves hundreds.
The plan says what the storage must hold, and what `stages.keep_checkpoints` keeps (the run's last
K, every stage's final checkpoint and the train stage's best: `workers.retention`).

Sizes are counted, not guessed: the supernet is built on the meta device (no memory, no compute) and
its float32 parameters and persistent buffers counted; Adam keeps two moments per trained parameter.
The train stage's network is the given genotype, or before a search the largest it can be (the
deepest path, every slot the op with the most parameters at full width): an upper bound.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from orchestrator.experiment import Experiment
from search_space.cost import count
from search_space.genotype import SLOTS_PER_CELL, Genotype, OpChoice, load_genotype
from search_space.ops import build_op
from search_space.supernet import Supernet, SupernetConfig

__all__ = ["CheckpointFootprint", "checkpoint_footprint"]

FLOAT_BYTES = 4


@dataclass(frozen=True)
class CheckpointFootprint:
    """Per stage: bytes of one checkpoint, checkpoints saved, checkpoints kept at the end of the trial."""

    bytes_each: dict[str, int]
    saved: dict[str, int]
    kept: dict[str, int]
    keep_last: int | None
    exact_train: bool  # False: the train stage's size is the upper bound (architecture decided by the search)

    @property
    def kept_bytes(self) -> int:
        return sum(self.bytes_each[s] * n for s, n in self.kept.items())

    @property
    def all_bytes(self) -> int:
        return sum(self.bytes_each[s] * n for s, n in self.saved.items())


@functools.lru_cache(maxsize=32)
def _supernet_sizes(config: SupernetConfig) -> tuple[int, int, int]:
    """(weights, architecture parameters, persistent buffer elements) of the supernet, built on meta."""
    with torch.device("meta"):
        net = Supernet(config)
    weights = sum(p.numel() for p in net.weight_parameters())
    arch = sum(p.numel() for p in net.arch_parameters())
    persistent = set(net.state_dict())
    buffers = sum(b.numel() for name, b in net.named_buffers() if name in persistent)
    return weights, arch, buffers


def _largest_genotype(config: SupernetConfig) -> Genotype:
    """The deepest path with the op of most parameters at full width in every slot (an upper bound)."""
    with torch.device("meta"):
        sizes = {
            op: sum(p.numel() for p in build_op(op, config.nf, config.nf, slimmable=False).parameters())
            for op in config.ops
        }
    op = max(sizes, key=sizes.__getitem__)
    cells = tuple(tuple(OpChoice(op, config.nf) for _ in range(SLOTS_PER_CELL)) for _ in range(config.num_cells))
    path = (0,) * config.num_cells + (1,) * config.num_ups
    return Genotype(backbone=config.backbone, path=path, cells=cells, nf=config.nf, scale=config.scale)


def checkpoint_footprint(experiment: Experiment) -> CheckpointFootprint:
    """What one trial of `experiment` writes in checkpoints, and keeps with its retention setting."""
    config = experiment.supernet_config()
    weights, arch, buffers = _supernet_sizes(config)
    given = experiment.stages.train.genotype
    genotype = load_genotype(given) if given else _largest_genotype(config)
    derived = count(genotype).params
    bytes_each = {
        "pretrain": (weights + arch + buffers + 2 * weights) * FLOAT_BYTES,
        "search": (weights + arch + buffers + 2 * (weights + arch)) * FLOAT_BYTES,
        "train": 3 * derived * FLOAT_BYTES,
    }
    stages = experiment.stages
    every = stages.checkpoint_every
    epochs = {"pretrain": stages.pretrain.epochs, "search": stages.search.epochs, "train": stages.train.epochs}
    if stages.train.finetune is not None:
        epochs["train"] += stages.train.finetune.epochs
    saved = {stage: math.ceil(n / every) for stage, n in epochs.items()}
    keep = stages.keep_checkpoints
    return CheckpointFootprint(bytes_each, saved, _kept(saved, keep), keep, exact_train=bool(given))


def _kept(saved: dict[str, int], keep: int | None) -> dict[str, int]:
    """Checkpoints left per stage: the run's last `keep`, each stage's final one, the train stage's best."""
    if keep is None:
        return dict(saved)
    order = [stage for stage, n in saved.items() for _ in range(n)]  # oldest first
    last = order[-keep:]
    kept = {stage: last.count(stage) for stage in saved}
    for stage, n in saved.items():
        if n and not kept[stage]:
            kept[stage] = 1  # its final checkpoint: the stage result points to it
    if saved.get("train", 0) > kept["train"]:
        kept["train"] += 1  # the best may be older than the last K
    return kept
