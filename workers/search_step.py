"""One step of the search (Alg. 1 lines 14-23): the code the search loop and `bench/search_step.py` share.

- **Sandwich with one graph alive.** Every sandwich pass (pretrain: max/min/random/random; search:
  Gumbel/max/min) runs its backward right after its forward, so gradients accumulate and only one
  pass's graph is held at a time; the optimiser still steps once. The gradient equals that of the
  summed loss (AGD `_loss`) up to floating-point summation order.
- **Arch step first, first-order** (ambiguity 9): on χ2, loss + λ_flops·(ω1 F_max + ω2 F_gumbel) +
  ordering penalty, gradients to the architecture only.
- **SSN freezing** (method.md §5): after each arch step every row whose combiner output became
  one-hot is frozen; a frozen row's gradient is zeroed before every step and its Adam moments are
  zero, so Adam moves it by exactly 0 (no term, not even the ordering penalty, can push it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from search_space.combiners import ordering_penalty
from search_space.supernet import Supernet, WidthSample
from workers.distributed import average_gradients
from workers.losses import bind_target
from workers.precision import run_forward

__all__ = [
    "PRETRAIN_WIDTHS",
    "SEARCH_FIXED_WIDTHS",
    "FlopsController",
    "SearchStepLosses",
    "arch_step",
    "frozen",
    "optimizer_step",
    "pretrain_step",
    "radius_at",
    "sandwich_backward",
    "search_step",
    "weight_step",
]

PRETRAIN_WIDTHS: tuple[str, ...] = ("max", "min", "random", "random")
SEARCH_FIXED_WIDTHS: tuple[str, ...] = ("max", "min")

Loss = Callable[[Tensor, Tensor], Tensor]


def sandwich_backward(
    net: Supernet,
    lr: Tensor,
    target: Tensor,
    widths: Sequence[WidthSample | str],
    loss_fn: Loss,
    generator: torch.Generator | None,
    extra: Tensor | None = None,
    precision: str = "fp32",
) -> float:
    """Σ over width settings of the loss, backpropagated pass by pass; returns the summed loss.

    `extra` (penalties that share the first pass's graph, e.g. the FLOPs term on the Gumbel gates)
    joins the first pass's backward. What depends on the target alone (a perceptual loss's VGG
    features of it) is computed once for all passes (`bind_target`). The sum is kept on the device
    in float64 and read once: one host-device sync per sandwich instead of one per pass, and the same
    number as adding the passes' float losses on the host.
    """
    against = bind_target(loss_fn, target)
    total: Tensor | None = None
    for i, width in enumerate(widths):
        loss = against(run_forward(net, precision, lr, width, generator=generator))
        (loss + extra if i == 0 and extra is not None else loss).backward()
        value = loss.detach().double()
        total = value if total is None else total + value
    return 0.0 if total is None else float(total)


@contextlib.contextmanager
def frozen(params: Iterable[nn.Parameter]) -> Iterator[None]:
    """Skip gradients of `params` for one step (the other level's step needs none)."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def optimizer_step(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], clip: float | None) -> None:
    """Average gradients over ranks, clip, step (the weight update of every stage)."""
    average_gradients(params)
    if clip:
        nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()


def pretrain_step(
    net: Supernet,
    optimizer: torch.optim.Optimizer,
    lr: Tensor,
    target: Tensor,
    loss_fn: Loss,
    widths_gen: torch.Generator,
    grad_clip: float | None,
    precision: str = "fp32",
) -> float:
    """One pretrain step (Alg. 1 lines 5-11): the {max, min, random, random} sandwich on the weights.

    The architecture is fixed in pretrain, so its combiners are evaluated once per step.
    """
    optimizer.zero_grad(set_to_none=True)
    with net.fixed_architecture():
        loss = sandwich_backward(net, lr, target, PRETRAIN_WIDTHS, loss_fn, widths_gen, precision=precision)
    optimizer_step(optimizer, net.weight_parameters(), grad_clip)
    return loss


def radius_at(step: int, total_steps: int, start: float, end: float) -> float:
    """Sparsestmax radius of search step `step` of `total_steps` (ambiguity 6: per iteration, linear).

    r = start + (end − start)·t/(T − 1): `start` on the first step and exactly `end` on the last, so
    the last arch step already sees one-hot combiners when `end` ≥ √(1 − 1/K).
    """
    if total_steps <= 1:
        return end
    return start + (end - start) * min(step, total_steps - 1) / (total_steps - 1)


@dataclass
class SearchStepLosses:
    loss_a: float
    loss_w: float
    flops_penalty: float
    order_penalty: float


@dataclass
class FlopsController:
    """λ_flops of the search, adapted by AGD's rule when a FLOPs target is set (beyond the paper).

    Without a target the penalty is the paper's λ·(ω1 F_max + ω2 F_gumbel) in MACs with a fixed λ.
    With a target T (GFLOPs at the cost input size) the penalty is measured in units of T, and every
    `interval` epochs λ is doubled when the expected FLOPs lie above `high`·T and halved below
    `low`·T (AGD `train_search.py`: ×2 above 400 G, ÷2 below 100 G).
    """

    weight: float
    target_gflops: float | None
    band: tuple[float, float]
    interval: int

    def penalty(self, net: Supernet, gumbel: WidthSample) -> Tensor | None:
        """The weighted FLOPs term of one arch step (None when the weight is 0)."""
        if not self.weight:
            return None
        flops = net.flops_penalty(gumbel)
        unit = self.target_gflops * 1e9 if self.target_gflops else 1.0
        return self.weight * flops / unit

    def adapt(self, epoch: int, expected_gflops: float) -> None:
        """Apply the ×2/÷2 rule after `epoch` (0-based) when it ends an interval."""
        if self.target_gflops is None or (epoch + 1) % self.interval:
            return
        low, high = self.band
        if expected_gflops > high * self.target_gflops:
            self.weight *= 2.0
        elif expected_gflops < low * self.target_gflops:
            self.weight /= 2.0


def _zero_frozen_moments(net: Supernet, optimizer: torch.optim.Optimizer) -> None:
    """Adam moments of frozen rows stay exactly 0, so their update m/(√v + ε) is exactly 0."""
    with torch.no_grad():
        for param, mask in net.frozen_masks():
            state = optimizer.state.get(param)
            if not state:
                continue
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key].masked_fill_(mask, 0.0)


def arch_step(
    net: Supernet,
    optimizer: torch.optim.Optimizer,
    lr: Tensor,
    target: Tensor,
    loss_fn: Loss,
    widths_gen: torch.Generator,
    flops: FlopsController,
    lambda_order: float,
    full_paths: Tensor,
    freeze: bool = True,
    precision: str = "fp32",
) -> tuple[float, float, float]:
    """One architecture step on χ2; returns (sandwich loss, FLOPs penalty, ordering penalty).

    `freeze=False` turns SSN freezing off (only to study the drift it prevents).
    """
    with frozen(net.weight_parameters()):
        gumbel = net.sample_widths("gumbel", widths_gen)
        penalty = flops.penalty(net, gumbel)
        order = _order(net, full_paths, lambda_order)
        extra = [t for t in (penalty, order) if t is not None]
        optimizer.zero_grad(set_to_none=True)
        loss = sandwich_backward(
            net,
            lr,
            target,
            (gumbel, *SEARCH_FIXED_WIDTHS),
            loss_fn,
            None,
            sum(extra) if extra else None,
            precision=precision,
        )
        params = net.arch_parameters()
        average_gradients(params)
        net.zero_frozen_grads()
        _zero_frozen_moments(net, optimizer)
        optimizer.step()
    if freeze:
        net.freeze_decided(counts=False)
    return loss, _value(penalty), _value(order)


def weight_step(
    net: Supernet,
    optimizer: torch.optim.Optimizer,
    lr: Tensor,
    target: Tensor,
    loss_fn: Loss,
    widths_gen: torch.Generator,
    grad_clip: float | None,
    precision: str = "fp32",
) -> float:
    """One weight step on χ1 with the architecture fixed; returns the sandwich loss."""
    with frozen(net.arch_parameters()), net.fixed_architecture():
        gumbel = net.sample_widths("gumbel", widths_gen)
        optimizer.zero_grad(set_to_none=True)
        loss = sandwich_backward(net, lr, target, (gumbel, *SEARCH_FIXED_WIDTHS), loss_fn, None, precision=precision)
        optimizer_step(optimizer, net.weight_parameters(), grad_clip)
    return loss


def search_step(
    net: Supernet,
    weight_opt: torch.optim.Optimizer,
    arch_opt: torch.optim.Optimizer,
    batch_w: tuple[Tensor, Tensor],
    batch_a: tuple[Tensor, Tensor],
    loss_fn: Loss,
    widths_gen: torch.Generator,
    *,
    flops: FlopsController,
    lambda_order: float,
    full_paths: Tensor,
    grad_clip: float | None,
    freeze: bool = True,
    precision: str = "fp32",
) -> SearchStepLosses:
    """Arch step on χ2 (`batch_a` = LR, target), then weight step on χ1 (`batch_w`)."""
    loss_a, flops_value, order_value = arch_step(
        net, arch_opt, *batch_a, loss_fn, widths_gen, flops, lambda_order, full_paths, freeze, precision
    )
    loss_w = weight_step(net, weight_opt, *batch_w, loss_fn, widths_gen, grad_clip, precision)
    return SearchStepLosses(loss_a, loss_w, flops_value, order_value)


def _order(net: Supernet, full_paths: Tensor, lam: float) -> Tensor | None:
    """The ordering penalty on the raw path logits (None when the path is fixed or λ is 0)."""
    if not lam or net.config.levels != "trilevel":
        return None
    return ordering_penalty(net.path_logits, full_paths, lam)


def _value(term: Tensor | None) -> float:
    return 0.0 if term is None else float(term.detach())
