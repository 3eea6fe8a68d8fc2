"""The evaluate stage: the trained derived network on every validation set, beside its baselines, plus its cost.

Runs wherever it is called (the trial process): validation sets are small, read whole and never
split. Returns plain numbers the orchestrator logs: Y-PSNR/SSIM per set, params, GFLOPs at a
256×256 LR input, and latency of one such input on the evaluating device.

Every score is also kept per image (:func:`evaluate_sets`: one row per set, image and network, the
network's, bicubic's and the teacher's), so two arms can be compared image by image.

Why the baselines are computed here: a PSNR means little alone (a network can score below plain
upscaling and look like a result), so every set is also scored with MATLAB bicubic ×scale of the
same LR inputs (``psnr_bicubic/<set>``, ``ssim_bicubic/<set>``) and, when the trial distils from a
teacher, with the teacher (``psnr_teacher/<set>``, ``ssim_teacher/<set>``): the same pairs, the same
Y-channel convention (:mod:`workers.metrics`: 8-bit quantised, crop = scale), so the differences
are exact comparisons, not numbers from elsewhere.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
from workers.pipeline import decoded_rows
from workers.validation import score_pairs

__all__ = [
    "PER_IMAGE_COLUMNS",
    "Evaluation",
    "bicubic_upscale",
    "evaluate_bicubic",
    "evaluate_network",
    "evaluate_sets",
    "load_derived",
    "load_supervision_teacher",
]

PER_IMAGE_COLUMNS = ("set", "image_id", "network", "psnr", "ssim")  # one row per set, image and network


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


def score_bicubic(pairs: Sequence[tuple[np.ndarray, np.ndarray]], scale: int) -> list[tuple[float, float]]:
    """(Y-PSNR, SSIM) of bicubic ×scale on each (LR, HR) uint8 pair, as :func:`score_pairs` scores a network."""
    scores = []
    for lr, hr in pairs:
        up = bicubic_upscale(lr, scale).astype(np.float64) / 255.0
        target = hr.astype(np.float64) / 255.0
        scores.append((psnr_y(up, target, crop=scale), ssim_y(up, target, crop=scale)))
    return scores


def evaluate_bicubic(pairs: Sequence[tuple[np.ndarray, np.ndarray]], scale: int) -> dict[str, float]:
    """Mean Y-PSNR / SSIM of bicubic ×scale over (LR, HR) uint8 pairs, as :func:`evaluate_pairs` scores a network."""
    if not pairs:
        return {}
    scores = np.array(score_bicubic(pairs, scale))
    return {"val_psnr": float(scores[:, 0].mean()), "val_ssim": float(scores[:, 1].mean())}


@dataclass(frozen=True)
class Evaluation:
    """Headline numbers (:func:`evaluate_network`'s keys) and every image's score behind them."""

    metrics: dict[str, Any]
    per_image: list[dict[str, Any]] = field(default_factory=list)  # PER_IMAGE_COLUMNS each

    def table(self) -> dict[str, list]:
        """The per-image rows as columns (the dict form of a table artifact: `Tracker.log_table`)."""
        return {column: [row[column] for row in self.per_image] for column in PER_IMAGE_COLUMNS}


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
    return evaluate_sets(
        net,
        val_sets,
        scale,
        max_images=max_images,
        latency_size=latency_size,
        latency_repeats=latency_repeats,
        device=device,
        teacher=teacher,
    ).metrics


def evaluate_sets(
    net: DerivedNetwork,
    sets: Mapping[str, str],
    scale: int,
    *,
    max_images: int | None = None,
    latency_size: tuple[int, int] = (256, 256),
    latency_repeats: int = 1,
    device: str = "cpu",
    teacher: nn.Module | None = None,
) -> Evaluation:
    """:func:`evaluate_network`'s metrics and, per image of every set, the scores their means are made of.

    Per-image rows: ``network`` is ``ours``, ``bicubic`` or ``teacher``; ``image_id`` the row's image id
    (sub-images of one photograph share it, the rows keep their order).
    """
    net = on_device(net, device).eval()
    if teacher is not None:
        teacher = on_device(teacher, device).eval()
    cost = count(net.genotype)
    metrics: dict[str, Any] = {"params_m": cost.params_m, "gflops": cost.gmacs}
    per_image: list[dict[str, Any]] = []
    for name, path in sets.items():
        rows = decoded_rows(path, scale)[:max_images]
        if not rows:
            continue
        pairs = [(row["lr"], row["hr"]) for row in rows]
        scored = {"ours": score_pairs(net, pairs, scale, device), "bicubic": score_bicubic(pairs, scale)}
        if teacher is not None:
            scored["teacher"] = score_pairs(teacher, pairs, scale, device)
        for network, scores in scored.items():
            suffix = "" if network == "ours" else f"_{network}"
            metrics[f"psnr{suffix}/{name}"] = float(np.mean([p for p, _ in scores]))
            metrics[f"ssim{suffix}/{name}"] = float(np.mean([s for _, s in scores]))
            per_image += [
                {"set": name, "image_id": row["image_id"], "network": network, "psnr": float(p), "ssim": float(s)}
                for row, (p, s) in zip(rows, scores, strict=True)
            ]
    if latency_repeats > 0:
        metrics |= latencies(net, latency_size, latency_repeats, device)
    return Evaluation(metrics, per_image)


def on_device(module: nn.Module, device: str | torch.device) -> nn.Module:
    """`module` on `device`: itself when it is there already, else a copy (the caller's stays where it was).

    Why: `Module.to` moves in place, so evaluating the caller's network on a GPU would leave it there and
    the next CPU consumer (the comparison figure, an export) would feed it CPU tensors.
    """
    target = torch.device(device)
    current = next(itertools.chain(module.parameters(), module.buffers()), None)
    if current is None or current.device == target or (target.index is None and current.device.type == target.type):
        return module
    return copy.deepcopy(module).to(target)


def latencies(net: nn.Module, size: tuple[int, int], repeats: int, device: str | torch.device) -> dict[str, float]:
    """Latency of one `size` LR input per device: ``latency_s`` (the evaluating device, as before),
    ``latency_s/<device type>``, and on a GPU also ``latency_s/cpu`` (with ``latency_cpu_threads``, the
    torch threads it ran with): a GPU number alone says nothing about CPU deployment, and vice versa."""
    target = torch.device(device)
    with torch.inference_mode():
        here = measure_latency(on_device(net, target), size, repeats, target)
        out = {"latency_s": here, f"latency_s/{target.type}": here}
        if target.type != "cpu":
            out["latency_s/cpu"] = measure_latency(on_device(net, "cpu"), size, repeats, "cpu")
    return out | {"latency_cpu_threads": float(torch.get_num_threads())}
