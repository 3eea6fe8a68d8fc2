"""The standalone network of a genotype, and weight inheritance from a supernet ("train from search").

`build_network(genotype)` needs the genotype alone (DARTS/once-for-all style). `inherit` builds it
and slices the supernet's weights in along the derived path, so that a supernet whose combiners
are one-hot on the genotype's choices and the inherited network compute the same function
(see the note on ambiguity 8 in `search_space.ops`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from search_space.backbones import Head, UpLayer, make_stem
from search_space.genotype import Genotype
from search_space.ops import SlimOp, build_op, slice_like

if TYPE_CHECKING:
    from search_space.supernet import Supernet

__all__ = ["DerivedNetwork", "RiRBlock", "build_network", "inherit"]

RESIDUAL_SCALE = 0.2


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


@torch.no_grad()
def inherit(supernet: Supernet, genotype: Genotype) -> DerivedNetwork:
    """The derived network with the supernet's weights sliced in along the genotype's path.

    Copies the stem, the chosen op of every slot of every RiR cell on the path (leading-channel
    slices, DwsBlock hidden = first 4·Cin channels, no projection shortcut where Cin == Cout),
    the "1"-layers on the path, and the head (method.md §4 "train from search", ambiguity 8).
    """
    config = supernet.config
    if genotype.backbone != config.backbone or genotype.nf != config.nf or genotype.scale != config.scale:
        raise ValueError(
            f"genotype (backbone {genotype.backbone}, nf {genotype.nf}, ×{genotype.scale}) does not fit the supernet "
            f"(backbone {config.backbone}, nf {config.nf}, ×{config.scale})"
        )
    net = build_network(genotype).to(next(supernet.parameters()).device)
    tree = supernet.tree
    chain = tree.ancestry(tree.index_of(genotype.path))
    net.stem.load_state_dict(supernet.stem.state_dict())
    net.head.load_state_dict(supernet.head.state_dict())
    blocks, ups = iter(net.blocks), iter(net.ups)
    for node_index in chain:
        node = tree.nodes[node_index]
        if node.cell is not None:
            block = next(blocks)
            cell = genotype.cells[node.path.count(0) - 1]
            for slot, (choice, op) in enumerate(zip(cell, block.ops, strict=True)):
                slice_like(supernet.cells[node.cell].slots[slot][choice.op], op)
        else:
            assert node.up is not None
            next(ups).load_state_dict(supernet.ups[node.up].state_dict())
    return net
