"""The few collective operations the stage loops need, no-ops on a single worker.

The supernet is not wrapped in DDP: a search step sums a sandwich of forward passes that each run
a different sparse sub-graph, which DDP's reducer cannot follow. Instead every rank accumulates
its gradients locally and one flat all-reduce averages them before the optimiser step, so all
ranks keep identical weights and architecture parameters.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist

__all__ = ["all_ranks_agree", "average_gradients", "is_distributed", "rank_spread"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Average `.grad` over ranks in one flat all-reduce; a missing grad counts as zeros."""
    params = [p for p in params if p.requires_grad]
    if not is_distributed() or not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def all_ranks_agree(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True only if `flag` is true on every rank, so ranks stop an epoch on the same step."""
    if not is_distributed():
        return flag
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


@torch.no_grad()
def rank_spread(params: Iterable[torch.Tensor]) -> float:
    """Largest difference of any entry across ranks (0.0 when all ranks hold identical values).

    Reported each epoch as a guard: data-parallel ranks must never drift apart.
    """
    flat = torch.cat([p.detach().reshape(-1).float() for p in params])
    if not is_distributed():
        return 0.0
    high, low = flat.clone(), flat.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    return float((high - low).max())
