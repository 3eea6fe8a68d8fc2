"""Candidate operations of a RiR slot, slimmable so one set of weights serves every width.

Each op stores its weights at the largest (Cin, Cout) it will ever see; a narrower call uses the
leading channels (`W[:Cout, :Cin]`), as in AGD's slimmable ops (method.md §1). The same class
built at exactly (Cin, Cout) is the op of a derived network, so a derived op and the supernet op it
was sliced from compute the same function and inheriting weights is a plain slice
(see `slice_like`).

Ambiguity 8 of method.md (weight inheritance) is resolved by making the supernet's active
sub-network *identical* to the derived network: the DwsBlock hidden width is 4·Cin (the first
4·Cin of the 4·nf hidden channels), and the ResBlock/DwsBlock shortcut is the identity when
Cin == Cout and a sliced 1×1 projection otherwise. AGD always used 4·nf hidden channels and a
projection; our choice trades that for lossless "train from search".
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "OPS",
    "OP_DISPLAY_NAMES",
    "PRIMITIVES",
    "RESIDUAL_SCALE",
    "Conv1x1",
    "Conv3x3",
    "DwsBlock",
    "ResBlock",
    "SlimConv2d",
    "SlimOp",
    "build_op",
    "slice_like",
]

# A RiR cell adds its 5-op branch to its input scaled by this (AGD `Cell`, method.md §1); shared by the
# supernet cell and the derived RiR block so both compute the same function.
RESIDUAL_SCALE = 0.2


class SlimConv2d(nn.Conv2d):
    """A stride-1 conv whose call may use only the leading input/output channels.

    `depthwise=True` makes a depthwise conv whose channel count follows its input.
    """

    def __init__(self, max_in: int, max_out: int, kernel_size: int, *, bias: bool, depthwise: bool = False) -> None:
        groups = max_in if depthwise else 1
        super().__init__(max_in, max_out, kernel_size, padding=kernel_size // 2, bias=bias, groups=groups)
        self.depthwise = depthwise

    def forward(self, x: Tensor, cout: int | None = None) -> Tensor:  # type: ignore[override]
        cin = x.shape[1]
        if self.depthwise:
            weight, groups, cout = self.weight[:cin], cin, cin
        else:
            cout = self.out_channels if cout is None else cout
            weight, groups = self.weight[:cout, :cin], 1
        bias = None if self.bias is None else self.bias[:cout]
        return F.conv2d(x, weight, bias, padding=self.padding, groups=groups)


class SlimOp(nn.Module):
    """Base of the candidate ops: `forward(x, cout)` with Cin read from `x`."""

    def __init__(self, max_in: int, max_out: int) -> None:
        super().__init__()
        self.max_in = max_in
        self.max_out = max_out

    def forward(self, x: Tensor, cout: int) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class Conv1x1(SlimOp):
    """AGD's `skip` primitive: conv 1×1 (no bias) → ReLU. Not an identity."""

    def __init__(self, max_in: int, max_out: int) -> None:
        super().__init__(max_in, max_out)
        self.conv = SlimConv2d(max_in, max_out, 1, bias=False)

    def forward(self, x: Tensor, cout: int) -> Tensor:
        return F.relu(self.conv(x, cout), inplace=True)


class Conv3x3(SlimOp):
    """Conv 3×3 (no bias) → ReLU."""

    def __init__(self, max_in: int, max_out: int) -> None:
        super().__init__(max_in, max_out)
        self.conv = SlimConv2d(max_in, max_out, 3, bias=False)

    def forward(self, x: Tensor, cout: int) -> Tensor:
        return F.relu(self.conv(x, cout), inplace=True)


class _ShortcutMixin:
    """Identity when Cin == Cout, else a (sliced) 1×1 projection; built only where it can be used."""

    shortcut: SlimConv2d | None

    def _make_shortcut(self, max_in: int, max_out: int, slimmable: bool) -> None:
        needs_projection = slimmable or max_in != max_out
        self.shortcut = SlimConv2d(max_in, max_out, 1, bias=False) if needs_projection else None

    def _apply_shortcut(self, x: Tensor, cout: int) -> Tensor:
        if x.shape[1] == cout:
            return x
        assert self.shortcut is not None, "a projection shortcut is needed when Cin != Cout"
        return self.shortcut(x, cout)


class ResBlock(_ShortcutMixin, SlimOp):
    """AGD `BasicResidual`: conv3×3 → ReLU → conv3×3, plus shortcut, then ReLU."""

    def __init__(self, max_in: int, max_out: int, *, slimmable: bool = True) -> None:
        super().__init__(max_in, max_out)
        self.conv1 = SlimConv2d(max_in, max_out, 3, bias=False)
        self.conv2 = SlimConv2d(max_out, max_out, 3, bias=False)
        self._make_shortcut(max_in, max_out, slimmable)

    def forward(self, x: Tensor, cout: int) -> Tensor:
        h = self.conv2(F.relu(self.conv1(x, cout), inplace=True), cout)
        return F.relu(h + self._apply_shortcut(x, cout), inplace=True)


class DwsBlock(_ShortcutMixin, SlimOp):
    """Inverted-bottleneck block: 1×1 Cin→4·Cin → ReLU → depthwise 3×3 → ReLU → 1×1 → Cout, + shortcut, ReLU."""

    EXPANSION = 4

    def __init__(self, max_in: int, max_out: int, *, slimmable: bool = True) -> None:
        super().__init__(max_in, max_out)
        hidden = self.EXPANSION * max_in
        self.expand = SlimConv2d(max_in, hidden, 1, bias=False)
        self.depthwise = SlimConv2d(hidden, hidden, 3, bias=False, depthwise=True)
        self.project = SlimConv2d(hidden, max_out, 1, bias=False)
        self._make_shortcut(max_in, max_out, slimmable)

    def forward(self, x: Tensor, cout: int) -> Tensor:
        h = F.relu(self.expand(x, self.EXPANSION * x.shape[1]), inplace=True)
        h = F.relu(self.depthwise(h), inplace=True)
        h = self.project(h, cout)
        return F.relu(h + self._apply_shortcut(x, cout), inplace=True)


# AGD's PRIMITIVES order [skip, conv3x3, residual, dwsblock] (method.md §1); index = column of α.
PRIMITIVES: tuple[str, ...] = ("conv1x1", "conv3x3", "resblock", "dwsblock")
OP_DISPLAY_NAMES: dict[str, str] = {
    "conv1x1": "Conv 1×1",
    "conv3x3": "Conv 3×3",
    "resblock": "ResBlock",
    "dwsblock": "DwsBlock",
}
OPS: dict[str, Callable[..., SlimOp]] = {
    "conv1x1": lambda cin, cout, slimmable: Conv1x1(cin, cout),
    "conv3x3": lambda cin, cout, slimmable: Conv3x3(cin, cout),
    "resblock": lambda cin, cout, slimmable: ResBlock(cin, cout, slimmable=slimmable),
    "dwsblock": lambda cin, cout, slimmable: DwsBlock(cin, cout, slimmable=slimmable),
}


def build_op(name: str, cin: int, cout: int, *, slimmable: bool) -> SlimOp:
    """Build op `name` at maximum widths (cin, cout); `slimmable=False` builds a derived op."""
    if name not in OPS:
        raise ValueError(f"unknown op {name!r}; allowed: {', '.join(PRIMITIVES)}")
    return OPS[name](cin, cout, slimmable)


@torch.no_grad()
def slice_like(source: nn.Module, target: nn.Module) -> None:
    """Copy into `target` the leading-channel slices of `source`'s same-named tensors.

    Every slimmable dimension keeps its leading entries, so one rule covers weights, biases and
    depthwise kernels. Tensors `source` lacks are an error: `target` must be a narrower copy.
    """
    source_tensors = dict(source.named_parameters()) | dict(source.named_buffers())
    for name, tensor in list(target.named_parameters()) + list(target.named_buffers()):
        if name not in source_tensors:
            raise KeyError(f"cannot inherit {name!r}: the source op has no such tensor")
        big = source_tensors[name]
        if big.dim() != tensor.dim() or any(b < t for b, t in zip(big.shape, tensor.shape, strict=True)):
            raise ValueError(f"cannot slice {name!r}: source {tuple(big.shape)} < target {tuple(tensor.shape)}")
        tensor.copy_(big[tuple(slice(0, s) for s in tensor.shape)])
