"""Precision of the stage loops: `fp32`, or `bf16` autocast for the convolutions with the rest in fp32.

Why bf16 and not fp16: bf16 keeps fp32's exponent range, so no loss scaling is needed, and on an
H100/A100 its convolutions run on tensor cores at about twice the fp32 (TF32) rate with half the
activation memory. What must stay exact stays fp32: the combiners (sparsestmax and its pattern; it
decides what runs and what freezes), the cost model, the losses (the network's output is cast back
to fp32 before any loss, VGG included) and the optimisers (the weights are fp32; autocast casts
copies). With bf16 the convolution weights and inputs are channels-last, the layout tensor cores use.

`deterministic` asks torch for deterministic kernels (`torch.use_deterministic_algorithms`, plus the
cuBLAS workspace setting CUDA needs for it): reproducible GPU runs at a cost in speed (some kernels,
e.g. cuDNN's fastest convolution algorithms and atomics-based backward passes, are excluded; typically
10-30 % slower; an op with no deterministic kernel raises an error naming it).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["PRECISIONS", "autocast", "prepare", "run_forward", "set_deterministic"]

PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
CUBLAS_WORKSPACE = ":4096:8"


def _check(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"stages.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str) -> Iterator[None]:
    """bf16 autocast on `device` for `precision="bf16"`; nothing for fp32."""
    _check(precision)
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
        yield


def run_forward(net: Callable[..., Tensor], precision: str, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    """`net(x, ...)` at `precision`, the output back in fp32 for the losses."""
    if precision == "fp32":
        _check(precision)
        return net(x, *args, **kwargs)
    with autocast(precision, x.device):
        out = net(x.contiguous(memory_format=torch.channels_last), *args, **kwargs)
    return out.float()


def prepare(net: nn.Module, precision: str) -> nn.Module:
    """The network in the layout its precision runs fastest in (channels-last for bf16), in place."""
    _check(precision)
    return net.to(memory_format=torch.channels_last) if precision == "bf16" else net


def set_deterministic(on: bool) -> None:
    """Deterministic kernels on or off for this process (set before the first CUDA call)."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(on)
