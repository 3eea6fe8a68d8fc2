"""The standalone network of a genotype ("train from scratch", and the target of inheritance).

`build_network(genotype)` needs the genotype alone (DARTS/once-for-all style). Weight inheritance
from a supernet ("train from search") lives with the supernet (`search_space.supernet.inherit`), so
this module never imports the supernet.
"""

from __future__ import annotations

from torch import Tensor, nn

from search_space.backbones import Head, UpLayer, make_stem
from search_space.genotype import Genotype
from search_space.ops import RESIDUAL_SCALE, SlimOp, build_op

__all__ = ["DerivedNetwork", "RiRBlock", "build_network"]


class RiRBlock(nn.Module):
    """Five ops in sequence; output = x + 0.2 · op5(…op1(x)) (AGD `Cell`, method.md §1)."""

    def __init__(self, cell: tuple, nf: int) -> None:
        super().__init__()
        widths = [c.width for c in cell]
        cins = [nf, *widths[:-1]]
        self.widths = widths
        self.ops = nn.ModuleList(
            build_op(c.op, cin, c.width, slimmable=False) for c, cin in zip(cell, cins, strict=True)
        )

    def forward(self, x: Tensor) -> Tensor:
        h = x
        op: SlimOp
        for op, width in zip(self.ops, self.widths, strict=True):
            h = op(h, width)
        return x + RESIDUAL_SCALE * h


class DerivedNetwork(nn.Module):
    """stem → the path's RiR blocks and "1"-layers in order → head."""

    def __init__(self, genotype: Genotype) -> None:
        super().__init__()
        self.genotype = genotype
        nf = genotype.nf
        self.stem = make_stem(nf)
        self.blocks = nn.ModuleList(RiRBlock(cell, nf) for cell in genotype.cells)
        self.ups = nn.ModuleList(UpLayer(genotype.backbone, nf) for _ in range(genotype.path.count(1)))
        self.head = Head(genotype.backbone, nf, genotype.scale)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        blocks, ups = iter(self.blocks), iter(self.ups)
        for step in self.genotype.path:
            h = next(blocks)(h) if step == 0 else next(ups)(h)
        return self.head(h)


def build_network(genotype: Genotype) -> DerivedNetwork:
    """The derived network of `genotype`, randomly initialised ("train from scratch")."""
    return DerivedNetwork(genotype)
