"""The evaluate stage: the trained derived network on every validation set, beside its baselines, plus its cost.

Runs wherever it is called (the trial process): validation sets are small, read whole and never
split. Returns plain numbers the orchestrator logs: Y-PSNR/SSIM per set, params, GFLOPs at a
256×256 LR input, and latency of one such input on the evaluating device.

Why the baselines are computed here: a PSNR means little alone (a network can score below plain
upscaling and look like a result), so every set is also scored with MATLAB bicubic ×scale of the
same LR inputs (``psnr_bicubic/<set>``, ``ssim_bicubic/<set>``) and, when the trial distils from a
teacher, with the teacher (``psnr_teacher/<set>``, ``ssim_teacher/<set>``): the same pairs, the same
Y-channel convention (:mod:`workers.metrics`: 8-bit quantised, crop = scale), so the differences
are exact comparisons, not numbers from elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from search_space.cost import count
from search_space.derived import DerivedNetwork, build_network
from search_space.genotype import Genotype
from search_space.latency import measure_latency
from workers.checkpointing import load_state, open_checkpoint, read_genotype_json
from workers.imresize import imresize
from workers.metrics import psnr_y, ssim_y
from workers.pipeline import val_pairs
from workers.validation import evaluate_pairs

__all__ = ["bicubic_upscale", "evaluate_bicubic", "evaluate_network", "load_derived", "load_supervision_teacher"]


def load_derived(checkpoint: str) -> DerivedNetwork:
    """The derived network saved by a train-stage checkpoint (genotype.json + state.pt)."""
    with open_checkpoint(checkpoint) as directory:
        data = read_genotype_json(directory)
        if data is None:
            raise ValueError(f"{checkpoint}: no genotype.json; expected a train-stage checkpoint")
        net = build_network(Genotype.from_dict(data))
        net.load_state_dict(load_state(directory)["model"])
    return net.eval()


def load_supervision_teacher(supervision: Mapping[str, Any]) -> nn.Module | None:
    """The frozen teacher a trial distils from (its resolved ``supervision`` section), or None for HR supervision."""
    if supervision.get("kind") != "teacher":
        return None
    from search_space.teacher import load_teacher

    weights = supervision.get("weights")
    if not weights:
        raise ValueError("supervision.weights: a teacher needs a weights file (RRDB_PSNR_x4.pth or similar)")
    sizes = {key: supervision[key] for key in ("nb", "nf", "gc") if supervision.get(key) is not None}
    return load_teacher(weights, **sizes)


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB ``imresize(lr, scale)`` of a uint8 H×W×3 LR image: the uint8 (H·scale)×(W·scale)×3 baseline."""
    if lr.dtype != np.uint8 or lr.ndim != 3 or lr.shape[2] != 3:
        raise ValueError(f"bicubic_upscale expects a uint8 HxWx3 image, got {lr.dtype} of shape {lr.shape}")
    return imresize(lr, scale)


def evaluate_bicubic(pairs: Sequence[tuple[np.ndarray, np.ndarray]], scale: int) -> dict[str, float]:
    """Mean Y-PSNR / SSIM of bicubic ×scale over (LR, HR) uint8 pairs, as :func:`evaluate_pairs` scores a network."""
    if not pairs:
        return {}
    psnrs, ssims = [], []
    for lr, hr in pairs:
        up = bicubic_upscale(lr, scale).astype(np.float64) / 255.0
        target = hr.astype(np.float64) / 255.0
        psnrs.append(psnr_y(up, target, crop=scale))
        ssims.append(ssim_y(up, target, crop=scale))
    return {"val_psnr": float(np.mean(psnrs)), "val_ssim": float(np.mean(ssims))}


def evaluate_network(
    net: DerivedNetwork,
    val_sets: Mapping[str, str],
    scale: int,
    *,
    max_images: int | None = None,
    latency_size: tuple[int, int] = (256, 256),
    latency_repeats: int = 1,
    device: str = "cpu",
    teacher: nn.Module | None = None,
) -> dict[str, Any]:
    """Metrics of a derived network and its baselines on the same images.

    Keys: ``psnr/<set>``, ``ssim/<set>``, ``psnr_bicubic/<set>``, ``ssim_bicubic/<set>`` (and
    ``psnr_teacher/<set>``, ``ssim_teacher/<set>`` when `teacher` is given), ``params_m``,
    ``gflops`` and ``latency_s`` (unless `latency_repeats` is 0).
    """
    net = net.to(device).eval()
    if teacher is not None:
        teacher = teacher.to(device).eval()
    cost = count(net.genotype)
    metrics: dict[str, Any] = {"params_m": cost.params_m, "gflops": cost.gmacs}
    for name, path in val_sets.items():
        pairs = val_pairs(path, scale)[:max_images]
        scores = evaluate_pairs(net, pairs, scale, device)
        metrics[f"psnr/{name}"] = scores["val_psnr"]
        metrics[f"ssim/{name}"] = scores["val_ssim"]
        bicubic = evaluate_bicubic(pairs, scale)
        metrics[f"psnr_bicubic/{name}"] = bicubic["val_psnr"]
        metrics[f"ssim_bicubic/{name}"] = bicubic["val_ssim"]
        if teacher is not None:
            taught = evaluate_pairs(teacher, pairs, scale, device)
            metrics[f"psnr_teacher/{name}"] = taught["val_psnr"]
            metrics[f"ssim_teacher/{name}"] = taught["val_ssim"]
    if latency_repeats > 0:
        with torch.inference_mode():
            metrics["latency_s"] = measure_latency(net, latency_size, latency_repeats, device)
    return metrics
