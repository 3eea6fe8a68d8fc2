"""Supernet: shapes, width modes, sparse == dense execution, derive/inherit/cost consistency."""

from __future__ import annotations

import pytest
import torch

from search_space.cost import count
from search_space.supernet import Supernet, SupernetConfig, inherit

SMALL = {"nf": 16, "widths": (8, 12, 16), "num_cells": 3}


def _random_arch(net: Supernet, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (net.alpha, net.width_logits, net.path_logits):
            p.copy_(torch.randn(p.shape, generator=generator))


def test_default_supernet_has_the_papers_shapes():
    net = Supernet()
    assert net.alpha.shape == (35, 5, 4)
    assert net.width_logits.shape == (35, 4, 5)
    assert net.path_logits.shape == (55,)
    assert len(net.cells) == 35 and len(net.ups) == 20
    assert torch.allclose(net.path_logits, torch.full((55,), 0.3))
    assert {id(p) for p in net.arch_parameters()} == {id(net.alpha), id(net.width_logits), id(net.path_logits)}


@pytest.mark.parametrize("backbone", ["A", "B"])
@pytest.mark.parametrize("mode", ["max", "min", "random", "gumbel", "argmax"])
def test_forward_shapes_for_every_width_mode(backbone, mode):
    net = Supernet(SupernetConfig(backbone=backbone, **SMALL))
    out = net(torch.rand(2, 3, 6, 6), mode, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 24, 24)


def test_gumbel_widths_pass_gradient_to_width_logits_only_through_the_gates():
    net = Supernet(SupernetConfig(**SMALL))
    sample = net.sample_widths("gumbel", torch.Generator().manual_seed(1))
    assert sample.gates is not None
    torch.testing.assert_close(sample.gates.detach(), torch.ones_like(sample.gates))
    net(torch.rand(1, 3, 5, 5), sample).mean().backward()
    assert net.width_logits.grad is not None and net.width_logits.grad.abs().sum() > 0


@pytest.mark.parametrize("backbone", ["A", "B"])
@pytest.mark.parametrize("radius", [0.0, 0.3, 0.6, 1.0])
def test_sparse_execution_equals_dense_in_outputs_and_gradients(backbone, radius):
    config = SupernetConfig(backbone=backbone, **SMALL)
    sparse = Supernet(config)
    dense = Supernet(SupernetConfig(backbone=backbone, sparse_execution=False, **SMALL))
    _random_arch(sparse, seed=3)
    dense.load_state_dict(sparse.state_dict())
    for net in (sparse, dense):
        net.set_radius(radius)
    x = torch.rand(2, 3, 5, 5)
    widths = sparse.sample_widths("random", torch.Generator().manual_seed(2))
    out_sparse, out_dense = sparse(x, widths), dense(x, widths)
    torch.testing.assert_close(out_sparse, out_dense, rtol=1e-5, atol=1e-6)
    out_sparse.square().mean().backward()
    out_dense.square().mean().backward()
    for (name, p_s), p_d in zip(sparse.named_parameters(), dense.parameters(), strict=True):
        grad_s = torch.zeros_like(p_s) if p_s.grad is None else p_s.grad
        grad_d = torch.zeros_like(p_d) if p_d.grad is None else p_d.grad
        torch.testing.assert_close(grad_s, grad_d, rtol=1e-4, atol=1e-7, msg=name)


def test_sparse_execution_skips_zero_weight_work_at_radius_one():
    net = Supernet(SupernetConfig(**SMALL))
    _random_arch(net, seed=4)
    net.set_radius(1.0)
    calls = []
    for cell in net.cells:
        cell.register_forward_hook(lambda *args: calls.append(1))
    net(torch.rand(1, 3, 4, 4))
    genotype = net.derive()
    assert len(calls) == genotype.path.count(0)


@pytest.mark.parametrize("backbone", ["A", "B"])
@pytest.mark.parametrize("seed", [5, 6])
def test_one_hot_supernet_equals_the_inherited_derived_network(backbone, seed):
    net = Supernet(SupernetConfig(backbone=backbone))
    _random_arch(net, seed)
    net.set_radius(1.0)
    genotype = net.derive()
    derived = inherit(net, genotype)
    x = torch.rand(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(derived(x), net(x, "argmax"), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backbone", ["A", "B"])
def test_expected_cost_at_one_hot_equals_the_derived_networks_macs(backbone):
    net = Supernet(SupernetConfig(backbone=backbone))
    _random_arch(net, seed=7)
    net.set_radius(1.0)
    genotype = net.derive()
    expected = net.expected_cost(net.op_weights(), net.path_weights(), net.sample_widths("argmax"))
    assert float(expected.detach()) == pytest.approx(count(genotype).macs, rel=1e-5)


def test_a_supernet_built_on_meta_first_does_not_leave_meta_cost_tables_behind():
    from search_space.supernet import _per_pixel_op_macs

    _per_pixel_op_macs.cache_clear()  # as in a fresh process whose first supernet is a size estimate on meta
    with torch.device("meta"):
        Supernet(SupernetConfig(**SMALL))
    net = Supernet(SupernetConfig(**SMALL))
    assert {b.device.type for b in net.buffers()} == {"cpu"}
    assert float(net.expected_cost(net.op_weights(), net.path_weights(), net.sample_widths("argmax"))) > 0


def test_flops_penalty_reaches_every_level():
    net = Supernet(SupernetConfig(**SMALL))
    _random_arch(net, seed=8)
    net.set_radius(0.2)
    net.flops_penalty(net.sample_widths("gumbel", torch.Generator().manual_seed(0))).backward()
    for p in net.arch_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_bilevel_fixes_the_path():
    net = Supernet(SupernetConfig(backbone="A", levels="bilevel", fixed_path=(0, 0, 0, 0, 0, 1, 1)))
    assert all(p is not net.path_logits for p in net.arch_parameters())
    _random_arch(net, seed=9)
    assert net.derive().path == (0, 0, 0, 0, 0, 1, 1)
    # without a fixed path, AGD's for the supernet at hand: every cell, then the "1"-layers
    assert SupernetConfig(levels="bilevel", num_cells=3).bilevel_path == (0, 0, 0, 1, 1)
    assert SupernetConfig(levels="bilevel").bilevel_path == (0, 0, 0, 0, 0, 1, 1)


def test_softmax_supernet_is_dense_and_derives():
    net = Supernet(SupernetConfig(combiner="softmax", **SMALL))
    _random_arch(net, seed=10)
    assert (net.op_weights() > 0).all()
    assert net.derive().backbone == "B"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbone": "C"}, r"supernet.backbone: must be one of A, B"),
        ({"combiner": "max"}, r"supernet.combiner: must be one of softmax, sparsemax, sparsestmax"),
        ({"widths": (24, 48)}, r"supernet.widths: .* ending at nf=64"),
        ({"levels": "quadlevel"}, r"supernet.levels: must be one of trilevel, bilevel"),
        ({"levels": "bilevel", "fixed_path": (0, 1, 1, 1)}, r"supernet.fixed_path: path \[0, 1, 1, 1\].*num_cells=5"),
        ({"backbone": "A", "num_ups": 1}, r"supernet.num_ups: backbone A at scale 4 needs exactly 2"),
        ({"ops": ("conv1x1", "zero")}, r"supernet.ops: must be distinct names"),
    ],
)
def test_invalid_configs_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SupernetConfig(**kwargs)
