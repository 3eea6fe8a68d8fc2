"""Wall-clock latency of one forward pass, measured the same way wherever it is reported."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["measure_latency", "median_seconds"]


def median_seconds(run: Callable[[], object], repeats: int = 3) -> float:
    """Median seconds of `repeats` calls of `run`, after one warm-up call (allocators, kernels, caches).

    One timing rule for every runtime (PyTorch here, ONNX Runtime in ``orchestrator.export``), so their
    latencies can sit side by side.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        run()
        if i:  # the first pass warms up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_latency(
    net: nn.Module, lr_size: tuple[int, int] = (256, 256), repeats: int = 3, device: str | torch.device = "cpu"
) -> float:
    """Median seconds of `repeats` inference passes on one 3×H×W input, after one warm-up pass."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    net = net.to(device).eval()
    x = torch.rand(1, 3, *lr_size, device=device)
    cuda = torch.device(device).type == "cuda"

    def one_pass() -> None:
        net(x)
        if cuda:  # kernels run asynchronously: wait for them, or only the launch is timed
            torch.cuda.synchronize(device)

    with torch.inference_mode():
        if cuda:
            torch.cuda.synchronize(device)
        return median_seconds(one_pass, repeats)
