"""Per-epoch streams of LR/HR patch batches for a stage loop, deterministic given (seed, epoch, rank).

Ray Data delivers decoded image pairs (`workers.pipeline.read_pairs`); the random crop and flip
happen here, from a generator seeded by (seed, epoch, rank, stream), so an epoch replays exactly on
resume and every rank draws different patches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from workers.pipeline import collate_crops
from workers.shards import DataError

__all__ = ["epoch_generator", "patch_batches"]

_MIX = (1_000_003, 7_919, 104_729, 31)


def epoch_generator(seed: int, epoch: int, rank: int = 0, stream: int = 0) -> torch.Generator:
    """A torch generator whose draws depend only on (seed, epoch, rank, stream)."""
    mixed = (seed * _MIX[0] + epoch * _MIX[1] + rank * _MIX[2] + stream * _MIX[3]) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


def patch_batches(
    shard: Any,
    *,
    batch_size: int,
    patch: int,
    scale: int,
    generator: torch.Generator,
    steps: int | None,
    name: str,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (LR, HR) float batches from a Ray `DataIterator` shard.

    `steps=None` makes one pass; an integer yields exactly that many batches, starting new passes
    over the shard as needed (small data sets and long epochs).
    """
    produced = 0
    while steps is None or produced < steps:
        seen = False
        for rows in shard.iter_batches(batch_size=batch_size, batch_format="numpy"):
            seen = True
            yield collate_crops(rows, patch, scale, generator)
            produced += 1
            if steps is not None and produced >= steps:
                return
        if not seen:
            raise DataError(f"training data {name!r} gave this worker no images; use fewer workers or more data")
        if steps is None:
            return
