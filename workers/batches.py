"""Per-epoch streams of LR/HR patch batches for a stage loop, deterministic given (seed, epoch, rank).

Rows come either from a Ray data iterator (large data, streamed pass after pass) or from a list of
decoded rows the worker keeps in memory (small data: decoding PNGs and the MATLAB bicubic once,
instead of once per pass). The random crop and flip happen here, from a generator seeded by
(seed, epoch, rank, stream), so an epoch replays exactly on resume and every rank draws different
patches.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from workers.pipeline import DeviceCrops, crop_draws, cut_crops, cut_device_crops
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
    cut_threads: int = 1,
    for_device: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]] | Iterator[DeviceCrops]:
    """Yield exactly `steps` (LR, HR) float batches from `source` (`DeviceCrops` with `for_device=True`).

    A list of rows (cached in memory) is drawn in seeded random order, permutation after
    permutation, so every batch holds `batch_size` crops even when the data has fewer images. A
    Ray `DataIterator` is read pass after pass in its (preserved) order; a pass's last batch may be
    smaller.

    `crops_per_image` = k: every decoded row gives k independent random crops, so a pass over the
    data gives k times the crops (`orchestrator.plan.steps_per_epoch` counts them) while each row is
    decoded (PNG, and the MATLAB bicubic when no LR is stored) once per k crops instead of once per
    crop. The k crops of a row go to different batches, so a batch still mixes `batch_size` rows:
    cached rows are drawn from permutations of k copies of every row; streamed rows wait in a pool of
    2 × `batch_size` decoded rows, each batch drawing distinct rows from it at random and a row
    leaving it after its k-th crop (:func:`_pooled`). k = 1 draws exactly what it always did.

    `cut_threads` > 1 cuts batches on that many threads (numpy's copies and torch's float conversion
    release the GIL) while rows and crop draws are still taken in order on the calling thread, so the
    batches are the same bytes in the same order as with one; up to 2 × `cut_threads` batches are
    drawn ahead. The stage loop takes it from `data.cut_threads` (`bench/data_feed.py` measures the
    scaling).

    `for_device=True` yields each batch as `workers.pipeline.cut_device_crops` cuts it (uint8 NHWC crops of
    whole pixel rows and their flips) for `finish_crops` on the training device: the same float batches,
    bit for bit, for ~0.3 of the cutting thread's CPU (`bench/data_feed.py`).
    """
    if crops_per_image < 1:
        raise ValueError(f"data.crops_per_image must be >= 1, got {crops_per_image}")
    if cut_threads < 1:
        raise ValueError(f"cut_threads must be >= 1, got {cut_threads}")
    if isinstance(source, Sequence):
        drawn = _cached_draws(source, batch_size, crops_per_image, generator, steps, name)
    else:
        drawn = _streamed_draws(source, batch_size, crops_per_image, generator, steps, name)
    yield from _cut_in_order(drawn, patch, scale, cut_threads, cut_device_crops if for_device else cut_crops)


def _cut_in_order(
    drawn: Iterator[tuple[Any, list[list[float]]]], patch: int, scale: int, threads: int, cut: Callable[..., Any]
) -> Iterator[Any]:
    """`cut` of every (rows, draws) in order: here at 1 thread, else on a pool, 2 × threads ahead."""
    if threads == 1:
        for rows, draws in drawn:
            yield cut(rows, patch, scale, draws)
        return
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(threads, thread_name_prefix="crop-cut") as pool:
        try:
            for rows, draws in drawn:
                pending.append(pool.submit(cut, rows, patch, scale, draws))
                if len(pending) >= 2 * threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # a consumer that stops early: drop the cuts not started
            for future in pending:
                future.cancel()


def _streamed_draws(
    source: Any, batch_size: int, k: int, generator: torch.Generator, steps: int, name: str
) -> Iterator[tuple[Any, list[list[float]]]]:
    """Exactly `steps` (rows, crop draws) from a Ray DataIterator, pass after pass."""
    produced = 0
    while produced < steps:
        seen = False
        for rows in _streamed(source, batch_size, k, generator):
            seen = True
            yield rows, crop_draws(len(rows["lr"]) if isinstance(rows, Mapping) else len(rows), generator)
            produced += 1
            if produced >= steps:
                return
        if not seen:
            raise DataError(f"training data {name!r} gave this worker no images; use fewer workers or more data")


def _streamed(source: Any, batch_size: int, k: int, generator: torch.Generator) -> Iterator[Any]:
    """One pass of a Ray DataIterator as batches of rows to crop: its own batches at k = 1, else pooled."""
    batches = source.iter_batches(batch_size=batch_size, batch_format="numpy")
    if k == 1:
        yield from batches
        return
    rows = (row for batch in batches for row in _row_list(batch))
    yield from _pooled(rows, batch_size, k, generator)


def _row_list(batch: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A Ray Data numpy batch (a dict of columns) as one dict per row."""
    n = len(batch["lr"])
    return [{key: batch[key][i] for key in ("id", "lr", "hr") if key in batch} for i in range(n)]


def _pooled(rows: Iterator[Any], batch_size: int, k: int, generator: torch.Generator) -> Iterator[list[Any]]:
    """Batches of distinct rows drawn at random from a pool of 2 × `batch_size` rows; each row drawn k times.

    Every row of `rows` is drawn exactly k times, in different batches while rows keep coming; when
    they run out, the pool's remaining draws are shuffled into full batches (a row may then appear
    twice in one) and a smaller last one, so a pass of R rows gives ⌈R·k / batch_size⌉ batches, as
    the plan counts. Memory: the pool's decoded rows.
    """
    capacity = 2 * batch_size
    pool: list[list[Any]] = []  # [row, draws left]
    while True:
        while len(pool) < capacity and (row := next(rows, None)) is not None:
            pool.append([row, k])
        if len(pool) < capacity:  # the pass has no more rows: drain the pool's draws
            left = [entry[0] for entry in pool for _ in range(entry[1])]
            order = torch.randperm(len(left), generator=generator).tolist()
            for start in range(0, len(order), batch_size):
                yield [left[i] for i in order[start : start + batch_size]]
            return
        picks = torch.randperm(capacity, generator=generator)[:batch_size].tolist()
        yield [pool[i][0] for i in picks]
        for i in picks:
            pool[i][1] -= 1
        pool = [entry for entry in pool if entry[1] > 0]


def _cached_draws(
    rows: Sequence[dict[str, Any]],
    batch_size: int,
    crops_per_image: int,
    generator: torch.Generator,
    steps: int,
    name: str,
) -> Iterator[tuple[list[dict[str, Any]], list[list[float]]]]:
    """`steps` (rows, crop draws) of cached rows drawn in seeded random order."""
    if not rows:
        raise DataError(f"training data {name!r} gave this worker no images; use fewer workers or more data")
    order: list[int] = []
    n = len(rows)
    for _ in range(steps):
        while len(order) < batch_size:  # k copies of every row, mixed (at k = 1: a permutation, as always)
            order += (torch.randperm(n * crops_per_image, generator=generator) % n).tolist()
        chosen, order = order[:batch_size], order[batch_size:]
        yield [rows[i] for i in chosen], crop_draws(batch_size, generator)
