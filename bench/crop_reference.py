"""The per-crop `collate_crops` as it was on main at 99bd259, kept verbatim as a reference.

Why kept: `workers.pipeline.collate_crops` now cuts a batch's crops into one uint8 buffer and converts
it to float once; it must give byte-identical batches from the same generator (same draws, crops and
flips). `tests/workers/test_pipeline.py` checks that on real images (`bench/data_feed.py` measured the
two interleaved once: BENCHMARKS.md, 1.4-1.8x less CPU per pair). Not used by the package.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from workers.pipeline import _column, _ids

__all__ = ["collate_crops_per_crop"]


def _draws(n: int, augment: bool, generator: torch.Generator) -> torch.Tensor:
    return torch.rand((n, 5 if augment else 3), generator=generator, dtype=torch.float64)


def _offset(
    lr_hw: Sequence[int], hr_hw: Sequence[int], patch: int, scale: int, u: torch.Tensor, name: str
) -> tuple[int, int]:
    h, w = int(lr_hw[0]), int(lr_hw[1])
    if h < patch or w < patch:
        raise ValueError(f"{name}: LR image {h}x{w} is smaller than the patch {patch}")
    if (int(hr_hw[0]), int(hr_hw[1])) != (h * scale, w * scale):
        raise ValueError(f"{name}: HR {tuple(hr_hw)} is not LR {h}x{w} x{scale}")
    y = min(int(u[0] * (h - patch + 1)), h - patch)
    x = min(int(u[1] * (w - patch + 1)), w - patch)
    return y, x


def _flips(lp: torch.Tensor, hp: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if u[2] < 0.5:
        lp, hp = lp.flip(-1), hp.flip(-1)
    if u.numel() > 3:
        if u[3] < 0.5:
            lp, hp = lp.flip(-2), hp.flip(-2)
        if u[4] < 0.5:
            lp, hp = lp.transpose(-1, -2), hp.transpose(-1, -2)
    return lp, hp


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def collate_crops_per_crop(
    batch_rows: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    patch: int,
    scale: int,
    generator: torch.Generator,
    *,
    augment: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """main@99bd259's `workers.pipeline.collate_crops`: one tensor per crop, flipped, stacked, then float."""
    lrs, hrs = _column(batch_rows, "lr"), _column(batch_rows, "hr")
    ids = _ids(batch_rows, len(lrs))
    u = _draws(len(lrs), augment, generator)
    out_lr, out_hr = [], []
    for i, (lr, hr) in enumerate(zip(lrs, hrs, strict=True)):
        lr, hr = np.asarray(lr), np.asarray(hr)
        y, x = _offset(lr.shape[:2], hr.shape[:2], patch, scale, u[i], ids[i])
        lp = torch.from_numpy(np.ascontiguousarray(lr[y : y + patch, x : x + patch])).permute(2, 0, 1)
        hp = torch.from_numpy(
            np.ascontiguousarray(hr[y * scale : (y + patch) * scale, x * scale : (x + patch) * scale])
        ).permute(2, 0, 1)
        lp, hp = _flips(lp, hp, u[i])
        out_lr.append(lp)
        out_hr.append(hp)
    return _to_unit(torch.stack(out_lr)), _to_unit(torch.stack(out_hr))
