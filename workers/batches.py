"""Per-epoch streams of LR/HR patch batches for a stage loop, deterministic given (seed, epoch, rank).

Rows come either from a Ray data iterator (large data, streamed pass after pass) or from a list of
decoded rows the worker keeps in memory (small data: decoding PNGs and the MATLAB bicubic once,
instead of once per pass). The random crop and flip happen here, from a generator seeded by
(seed, epoch, rank, stream), so an epoch replays exactly on resume and every rank draws different
patches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from workers.pipeline import collate_crops
from workers.shards.format import DataError

__all__ = ["epoch_generator", "patch_batches"]

_MIX = (1_000_003, 7_919, 104_729, 31)


def epoch_generator(seed: int, epoch: int, rank: int = 0, stream: int = 0) -> torch.Generator:
    """A torch generator whose draws depend only on (seed, epoch, rank, stream)."""
    mixed = (seed * _MIX[0] + epoch * _MIX[1] + rank * _MIX[2] + stream * _MIX[3]) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


def patch_batches(
    source: Any,
    *,
    batch_size: int,
    patch: int,
    scale: int,
    generator: torch.Generator,
    steps: int,
    name: str,
    crops_per_image: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield exactly `steps` (LR, HR) float batches from `source`.

    A list of rows (cached in memory) is drawn in seeded random order, permutation after
    permutation, so every batch holds `batch_size` crops even when the data has fewer images. A
    Ray `DataIterator` is read pass after pass in its (preserved) order; a pass's last batch may be
    smaller.

    `crops_per_image` = k cuts k independent random crops from each decoded row, so a batch holds
    ⌈batch_size / k⌉ rows (the last one's crops cut to fill exactly `batch_size`): a row is decoded
    (PNG, and the MATLAB bicubic when no LR is stored) once per k crops instead of once per crop,
    and a pass over the data gives k times the crops (`orchestrator.plan.steps_per_epoch` counts
    them). k = 1 draws exactly what it always did.
    """
    if crops_per_image < 1:
        raise ValueError(f"data.crops_per_image must be >= 1, got {crops_per_image}")
    rows_per_batch = math.ceil(batch_size / crops_per_image)
    if isinstance(source, Sequence):
        yield from _cached_batches(source, batch_size, crops_per_image, patch, scale, generator, steps, name)
        return
    produced = 0
    while produced < steps:
        seen = False
        for rows in source.iter_batches(batch_size=rows_per_batch, batch_format="numpy"):
            seen = True
            if crops_per_image > 1:
                rows = _repeated(_row_list(rows), crops_per_image, batch_size)
            yield collate_crops(rows, patch, scale, generator)
            produced += 1
            if produced >= steps:
                return
        if not seen:
            raise DataError(f"training data {name!r} gave this worker no images; use fewer workers or more data")


def _row_list(batch: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A Ray Data numpy batch (a dict of columns) as one dict per row."""
    n = len(batch["lr"])
    return [{key: batch[key][i] for key in ("id", "lr", "hr") if key in batch} for i in range(n)]


def _repeated(rows: Sequence[Any], k: int, batch_size: int) -> list[Any]:
    """Each row k times in a row (k crops of it), cut to `batch_size` crops."""
    return [row for row in rows for _ in range(k)][:batch_size]


def _cached_batches(
    rows: Sequence[dict[str, Any]],
    batch_size: int,
    crops_per_image: int,
    patch: int,
    scale: int,
    generator: torch.Generator,
    steps: int,
    name: str,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if not rows:
        raise DataError(f"training data {name!r} gave this worker no images; use fewer workers or more data")
    order: list[int] = []
    rows_per_batch = math.ceil(batch_size / crops_per_image)
    for _ in range(steps):
        while len(order) < rows_per_batch:
            order += torch.randperm(len(rows), generator=generator).tolist()
        chosen, order = order[:rows_per_batch], order[rows_per_batch:]
        chosen_rows = _repeated([rows[i] for i in chosen], crops_per_image, batch_size)
        yield collate_crops(chosen_rows, patch, scale, generator)
