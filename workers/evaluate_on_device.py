"""A trial's evaluation where its stages trained: test metrics and the comparison picture of a train checkpoint.

Why: a trial whose stages trained on a GPU used to evaluate in its own process (a hundredth of a CPU,
no GPU), so its test numbers took CPU hours at paper scale and its ``latency_s`` was a single-thread
CPU latency. For a GPU run the orchestrator runs :func:`evaluate_checkpoint` as a Ray task holding a
GPU share (the one the Train workers gave back), which evaluates on that GPU and measures latency
there and on the task's CPU threads (``latency_s/cuda``, ``latency_s/cpu``, ``latency_cpu_threads``).
A CPU run evaluates in the trial's process exactly as before (:func:`evaluate_here`).

Plain data in and out (a checkpoint path, set paths, the supervision section; metrics, per-image
rows and the picture as a uint8 array), so the task's result crosses Ray's object store as is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from search_space.derived import DerivedNetwork
from workers.comparison import comparison_for_sets
from workers.evaluate import Evaluation, evaluate_sets, load_derived, load_supervision_teacher, on_device
from workers.gpu_probe import cuda_device

__all__ = ["evaluate_checkpoint", "evaluate_here", "evaluation_device"]


def evaluation_device(gpus: float) -> torch.device:
    """Where an evaluation holding `gpus` GPUs computes: the CPU without one, else the GPU Ray assigned.

    A GPU share on a node where torch sees no CUDA is an error naming the node and what is missing
    (`workers.gpu_probe.NoCudaError`), never a silent fall-back to the CPU: the trial's latency would
    then be a CPU number reported as the GPU's.
    """
    if gpus < 0:
        raise ValueError(f"evaluation gpus must be >= 0, got {gpus}")
    if gpus == 0:
        return torch.device("cpu")
    return cuda_device("evaluation")


def evaluate_here(
    net: DerivedNetwork,
    sets: Mapping[str, str],
    scale: int,
    supervision: Mapping[str, Any],
    device: str | torch.device = "cpu",
) -> tuple[Evaluation, np.ndarray | None]:
    """Test metrics (with bicubic and the teacher) and the comparison picture of `net`, computed on `device`.

    `net` itself stays where it is (a copy is moved when `device` differs).
    """
    moved = on_device(net, device)  # one copy on `device` (none on the CPU), for the metrics and the picture
    evaluation = evaluate_sets(moved, sets, scale, device=str(device), teacher=load_supervision_teacher(supervision))
    return evaluation, comparison_for_sets(moved, sets, scale)


def evaluate_checkpoint(
    checkpoint: str,
    sets: Mapping[str, str],
    scale: int,
    supervision: Mapping[str, Any],
    gpus: float,
    cpu_threads: int,
) -> tuple[dict[str, Any], list[dict[str, Any]], np.ndarray | None]:
    """Load a train checkpoint's network and evaluate it on the GPU this task holds (`gpus` > 0) or the CPU.

    Returns (metrics, per-image rows, picture); on a GPU the metrics hold ``latency_s/cuda`` and ``latency_s/cpu``.
    `cpu_threads` is what the task reserved: the CPU latency is measured with that many torch threads.
    """
    torch.set_num_threads(max(1, cpu_threads))
    device = evaluation_device(gpus)
    net = load_derived(checkpoint)
    evaluation, picture = evaluate_here(net, sets, scale, supervision, device)
    return evaluation.metrics, evaluation.per_image, picture
