"""The evaluate stage: the trained derived network on every validation set, plus its cost.

Runs wherever it is called (the trial process): validation sets are small, read whole and never
split. Returns plain numbers the orchestrator logs: Y-PSNR/SSIM per set, params, GFLOPs at a
256×256 LR input, and latency of one such input on the evaluating device.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from search_space.cost import count
from search_space.derived import DerivedNetwork, build_network
from search_space.genotype import Genotype
from search_space.latency import measure_latency
from workers.checkpointing import load_state, open_checkpoint, read_genotype_json
from workers.pipeline import val_pairs
from workers.validation import evaluate_pairs

__all__ = ["evaluate_network", "load_derived"]


def load_derived(checkpoint: str) -> DerivedNetwork:
    """The derived network saved by a train-stage checkpoint (genotype.json + state.pt)."""
    with open_checkpoint(checkpoint) as directory:
        data = read_genotype_json(directory)
        if data is None:
            raise ValueError(f"{checkpoint}: no genotype.json; expected a train-stage checkpoint")
        net = build_network(Genotype.from_dict(data))
        net.load_state_dict(load_state(directory)["model"])
    return net.eval()


def evaluate_network(
    net: DerivedNetwork,
    val_sets: Mapping[str, str],
    scale: int,
    *,
    max_images: int | None = None,
    latency_size: tuple[int, int] = (256, 256),
    latency_repeats: int = 1,
    device: str = "cpu",
) -> dict[str, Any]:
    """Metrics of a derived network: `psnr/<set>`, `ssim/<set>`, params, GFLOPs, latency."""
    net = net.to(device).eval()
    cost = count(net.genotype)
    metrics: dict[str, Any] = {"params_m": cost.params_m, "gflops": cost.gmacs}
    for name, path in val_sets.items():
        pairs = val_pairs(path, scale)[:max_images]
        scores = evaluate_pairs(net, pairs, scale, device)
        metrics[f"psnr/{name}"] = scores["val_psnr"]
        metrics[f"ssim/{name}"] = scores["val_ssim"]
    if latency_repeats > 0:
        with torch.inference_mode():
            metrics["latency_s"] = measure_latency(net, latency_size, latency_repeats, device)
    return metrics
