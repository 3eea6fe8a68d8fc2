"""Wall-clock latency of one forward pass, measured the same way wherever it is reported."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

__all__ = ["measure_latency"]


def measure_latency(
    net: nn.Module, lr_size: tuple[int, int] = (256, 256), repeats: int = 3, device: str | torch.device = "cpu"
) -> float:
    """Median seconds of `repeats` inference passes on one 3×H×W input, after one warm-up pass."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    net = net.to(device).eval()
    x = torch.rand(1, 3, *lr_size, device=device)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            net(x)
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize(device)
            if i:  # the first pass warms up allocators and kernels
                times.append(time.perf_counter() - start)
    return statistics.median(times)
