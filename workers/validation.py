"""Validation of a stage's current network: Y-PSNR and SSIM on whole validation images.

Validation sets are small and never split across workers: rank 0 reads them directly and
evaluates; the result travels with the epoch's report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from workers.metrics import psnr_y, ssim_y

__all__ = ["evaluate_pairs", "score_pairs"]


@torch.no_grad()
def score_pairs(
    forward: Callable[[torch.Tensor], torch.Tensor],
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    scale: int,
    device: torch.device | str = "cpu",
) -> list[tuple[float, float]]:
    """(Y-PSNR, SSIM) of `forward` on each (LR, HR) uint8 pair, in order (crop = scale, BasicSR convention)."""
    scores = []
    for lr, hr in pairs:
        x = torch.from_numpy(np.ascontiguousarray(lr)).permute(2, 0, 1)[None].float().div(255.0).to(device)
        sr = forward(x)[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy()
        target = hr.astype(np.float64) / 255.0
        scores.append((psnr_y(sr, target, crop=scale), ssim_y(sr, target, crop=scale)))
    return scores


def evaluate_pairs(
    forward: Callable[[torch.Tensor], torch.Tensor],
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    scale: int,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Mean Y-PSNR / SSIM (crop = scale, BasicSR convention) of `forward` over (LR, HR) uint8 pairs."""
    if not pairs:
        return {}
    scores = np.array(score_pairs(forward, pairs, scale, device))
    return {"val_psnr": float(scores[:, 0].mean()), "val_ssim": float(scores[:, 1].mean())}
