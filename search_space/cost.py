"""Parameters and MACs of a network, in the paper's convention (method.md §2).

"GFLOPs" in the paper are thop MACs at a 256×256 **LR** input: per conv N_out·(Cin/groups·k² + bias),
plus one per output element of every LeakyReLU; ReLU, nearest upsampling, PixelShuffle and tanh
count 0. We count with forward hooks on a copy of the module, so the count is exactly what the module
executes (including the slimmable convs of the supernet, which count at their sliced widths).

A whole network is counted on two tiny real inputs (4×4 and 8×8, on the CPU) and scaled to the asked
size when the two counts prove its MACs proportional to the input area, as in every fully
convolutional SR network (stride-1 same-padded convs, integer upsampling); otherwise on a meta-device
copy at the asked size. The meta device costs no memory, but its Python reference kernels import
torch._dynamo on first use: ~2.5 s in every trial and Train worker process that counted a network.
"""

from __future__ import annotations

import copy
import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from search_space.derived import build_network
from search_space.genotype import Genotype

__all__ = ["Cost", "count", "count_macs", "macs_per_output"]


@dataclass(frozen=True)
class Cost:
    """Parameter count and multiply-accumulates of one forward pass."""

    params: int
    macs: int

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9


def macs_per_output(conv: nn.Conv2d, cin: int) -> int:
    """MACs per output element of `conv` applied to `cin` input channels (slimmable convs included)."""
    kh, kw = conv.kernel_size
    per_group = 1 if getattr(conv, "depthwise", False) else cin // conv.groups
    return per_group * kh * kw + (1 if conv.bias is not None else 0)


def count_macs(
    module: nn.Module,
    input_shape: tuple[int, ...],
    call: Callable[[nn.Module, Tensor], Tensor] | None = None,
    device: str = "meta",
) -> int:
    """MACs of one call of `module` on an input of `input_shape`, counted on a copy on `device`.

    `call(module, x)` runs it when its forward needs more than `x` (e.g. a slimmable op's width).
    The meta device costs no compute at any size; "cpu" is cheaper for tiny inputs (1×1 pixel
    tables), since meta-device kernels run as Python reference implementations.
    """
    meta = copy.deepcopy(module)
    on_meta = any(t.is_meta for t in itertools.chain(meta.parameters(), meta.buffers()))
    meta = meta.to_empty(device=device) if on_meta and device != "meta" else meta.to(device)
    total = 0

    def on_conv(conv: nn.Conv2d, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        total += output.numel() * macs_per_output(conv, inputs[0].shape[1])

    def on_leaky(leaky: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        total += output.numel()

    handles = []
    for sub in meta.modules():
        if isinstance(sub, nn.Conv2d):
            handles.append(sub.register_forward_hook(on_conv))
        elif isinstance(sub, nn.LeakyReLU):
            handles.append(sub.register_forward_hook(on_leaky))
    try:
        with torch.no_grad():
            x = torch.zeros(*input_shape, device=device)
            meta(x) if call is None else call(meta, x)
    finally:
        for handle in handles:
            handle.remove()
    return total


def count(net: nn.Module | Genotype, lr_size: tuple[int, int] = (256, 256)) -> Cost:
    """Params and MACs of `net` (or of the network of a genotype) for one 3×H×W LR input."""
    if isinstance(net, Genotype):
        return _count_genotype(net, tuple(lr_size))
    params = sum(p.numel() for p in net.parameters())
    return Cost(params=params, macs=_network_macs(net, tuple(lr_size)))


_PROBE = 4  # side of the smaller probe input; the larger one has twice the side, four times the area


def _network_macs(net: nn.Module, lr_size: tuple[int, int]) -> int:
    """MACs of `net` on a 3×H×W input: scaled from two tiny CPU probes when provably area-proportional."""
    small = count_macs(net, (1, 3, _PROBE, _PROBE), device="cpu")
    large = count_macs(net, (1, 3, 2 * _PROBE, 2 * _PROBE), device="cpu")
    if small > 0 and large == 4 * small and small % _PROBE**2 == 0:
        return small // _PROBE**2 * lr_size[0] * lr_size[1]
    return count_macs(net, (1, 3, *lr_size))


@functools.lru_cache(maxsize=256)
def _count_genotype(genotype: Genotype, lr_size: tuple[int, int]) -> Cost:
    """A genotype's cost is a pure function of it: counted once per process (searches ask every epoch).

    Built on the CPU (derived networks are small): a meta-device build would need `to_empty` for the
    probes, whose meta kernels import torch's symbolic-shape machinery (~1 s per process). The build
    draws its initial weights from a forked RNG: a count made once per process (cached) must not
    change what a seeded run draws next, or a run would depend on what the process did before.
    """
    with torch.random.fork_rng(devices=[]):  # the build's weight init must not move the caller's seeded RNG
        return count(build_network(genotype), lr_size)
