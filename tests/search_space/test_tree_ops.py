"""The network-level tree and the candidate ops (generated over the op registry)."""

from __future__ import annotations

import itertools

import pytest
import torch

from search_space.ops import PRIMITIVES, build_op, slice_like
from search_space.tree import PathTree


def test_default_tree_matches_the_paper_numbering():
    tree = PathTree(5, 2)
    assert len(tree) == 55
    assert tree.num_cell_edges == 35 and tree.num_up_edges == 20
    assert tree.nodes[0].path == (0,)
    assert tree.nodes[1].path == (0, 1)
    assert tree.nodes[21].path == (0, 0)
    assert tree.nodes[54].path == (0, 0, 0, 0, 0, 1, 1)
    assert tree.full_paths.shape == (15, 7)
    for row in tree.full_paths.tolist():
        assert row[0] == 0
        assert all(tree.nodes[b].parent == a for a, b in itertools.pairwise(row))


def test_tree_parents_precede_children_and_paths_are_unique():
    tree = PathTree(3, 1)
    seen = set()
    for node in tree.nodes:
        assert node.path not in seen
        seen.add(node.path)
        if node.parent is not None:
            assert node.parent < node.index
            assert tree.nodes[node.parent].path == node.path[:-1]
    assert tree.ancestry_matrix[5].sum() == len(tree.nodes[5].path)


def test_index_of_rejects_paths_outside_the_space():
    tree = PathTree(5, 2)
    with pytest.raises(ValueError, match=r"path \[0, 1, 1, 1\] is not in the search space"):
        tree.index_of([0, 1, 1, 1])


@pytest.mark.parametrize("name", PRIMITIVES)
@pytest.mark.parametrize(("cin", "cout"), [(64, 64), (64, 24), (32, 56), (40, 40)])
def test_every_op_forward_backward_and_shapes(name, cin, cout):
    op = build_op(name, 64, 64, slimmable=True)
    x = torch.randn(2, cin, 6, 6, requires_grad=True)
    y = op(x, cout)
    assert y.shape == (2, cout, 6, 6)
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", PRIMITIVES)
@pytest.mark.parametrize(("cin", "cout"), [(64, 64), (64, 24), (32, 56), (40, 40)])
def test_sliced_supernet_op_equals_the_derived_op(name, cin, cout):
    """The derived op with inherited slices computes exactly the supernet op at that width."""
    torch.manual_seed(0)
    big = build_op(name, 64, 64, slimmable=True)
    small = build_op(name, cin, cout, slimmable=False)
    slice_like(big, small)
    x = torch.randn(2, cin, 5, 5)
    torch.testing.assert_close(small(x, cout), big(x, cout), rtol=1e-5, atol=1e-6)


def test_derived_blocks_drop_the_projection_only_when_widths_match():
    assert build_op("resblock", 40, 40, slimmable=False).shortcut is None
    assert build_op("resblock", 40, 56, slimmable=False).shortcut is not None
    assert build_op("dwsblock", 32, 32, slimmable=False).expand.out_channels == 128


def test_unknown_op_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown op 'sepconv'; allowed: conv1x1, conv3x3, resblock, dwsblock"):
        build_op("sepconv", 8, 8, slimmable=False)


def _reference(op, x: torch.Tensor, cout: int) -> torch.Tensor:
    """The op's function written out of place (a new tensor per ReLU and per sum), as it was before ReLU ran
    in place: the in-place form must give the same output and gradients bit for bit."""
    from torch.nn import functional as F

    from search_space.ops import Conv1x1, Conv3x3, DwsBlock, ResBlock

    def shortcut(h: torch.Tensor) -> torch.Tensor:
        return x if x.shape[1] == cout else op.shortcut(x, cout)

    if isinstance(op, (Conv1x1, Conv3x3)):
        return F.relu(op.conv(x, cout))
    if isinstance(op, ResBlock):
        return F.relu(op.conv2(F.relu(op.conv1(x, cout)), cout) + shortcut(x))
    assert isinstance(op, DwsBlock)
    h = F.relu(op.depthwise(F.relu(op.expand(x, DwsBlock.EXPANSION * x.shape[1]))))
    return F.relu(op.project(h, cout) + shortcut(x))


def test_a_mixed_cell_equals_its_out_of_place_sum_bit_for_bit():
    """ReLU in place and the weighted sums added in place (search_space.supernet._accumulate) change no bit of
    the cell's output or of any gradient (weights, combiner weights, input), widths narrower than nf included."""
    from search_space.ops import RESIDUAL_SCALE
    from search_space.supernet import MixedCell

    torch.manual_seed(0)
    cell = MixedCell(16, PRIMITIVES)
    x = torch.randn(2, 16, 12, 12, requires_grad=True)
    op_weights = torch.rand(5, len(PRIMITIVES), requires_grad=True)
    gates = torch.rand(5)
    widths = [16, 8, 12, 16, 16]
    out = cell(x, op_weights, widths, gates)
    h = x
    for i, slot in enumerate(cell.slots):
        terms = [op_weights[i, k] * _reference(slot[name], h, widths[i]) for k, name in enumerate(PRIMITIVES)]
        h = sum(terms[1:], terms[0]) * gates[i]
    expected = x + RESIDUAL_SCALE * h
    assert torch.equal(out, expected)
    inputs = [x, op_weights, *cell.parameters()]
    grad = torch.randn_like(out)
    for got, want in zip(
        torch.autograd.grad(out, inputs, grad, allow_unused=True),
        torch.autograd.grad(expected, inputs, grad, allow_unused=True),
        strict=True,
    ):
        assert (got is None and want is None) or torch.equal(got, want)
