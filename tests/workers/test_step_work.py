"""Work done once per step, not per pass: the same numbers bit for bit, with fewer launches and host reads.

Each test runs the step the way it ran before the change (the reference, written out here) and the
way production runs it now, from the same state, and compares losses and gradients with
`torch.equal` (bitwise). Host reads (`tolist`, `item`, `bool`, ...) are what a GPU step pays a
host-device sync for; they are counted with a `TorchFunctionMode`.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.overrides import TorchFunctionMode

from search_space.supernet import Supernet, SupernetConfig
from workers.losses import PerceptualLoss, bind_target, content_loss
from workers.search_step import PRETRAIN_WIDTHS, SEARCH_FIXED_WIDTHS, pretrain_step, sandwich_backward, weight_step
from workers.vgg import VGG19Features

SMALL = SupernetConfig(backbone="B", nf=8, widths=(4, 8), num_cells=3, num_ups=2)
HOST_READS = {"item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy"}


class HostReads(TorchFunctionMode):
    """Counts reads of tensor values into Python (each a host-device sync for a GPU tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in HOST_READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _net(radius: float, seed: int = 0) -> Supernet:
    torch.manual_seed(seed)
    net = Supernet(SMALL)
    net.set_radius(radius)
    with torch.no_grad():
        for p in net.arch_parameters():
            p.normal_()
    return net


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 3, 32, 32, generator=g)


def _grads(net: Supernet) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in net.parameters()]


def _reference_sandwich(net, lr, target, widths, loss_fn, gen) -> float:
    """The sandwich as it was: the loss called with the target in every pass, a float per pass."""
    total = 0.0
    for width in widths:
        loss = loss_fn(net(lr, width, generator=gen), target)
        loss.backward()
        total += float(loss.detach())
    return total


def test_perceptual_sandwich_runs_vgg_on_the_target_once_with_the_same_loss_and_gradients():
    lr, target = _batch()
    torch.manual_seed(3)
    loss_fn = PerceptualLoss(VGG19Features().eval())
    calls = []
    loss_fn.vgg.register_forward_hook(lambda module, args, out: calls.append(args[0].requires_grad))
    widths = ("max", "min", "random")
    now, before = _net(0.4), _net(0.4)

    reference = _reference_sandwich(before, lr, target, widths, loss_fn, torch.Generator().manual_seed(1))
    assert len(calls) == 6  # the old way: φ(target) and φ(sr) in each of the 3 passes
    calls.clear()
    value = sandwich_backward(now, lr, target, widths, loss_fn, torch.Generator().manual_seed(1))

    assert len(calls) == 4 and calls.count(False) == 1, "φ(target) once, φ(sr) once per pass"
    assert value == reference
    for a, b in zip(_grads(now), _grads(before), strict=True):
        assert torch.equal(a, b)


def test_bound_perceptual_loss_equals_the_loss_and_checks_shapes():
    torch.manual_seed(4)
    loss_fn = PerceptualLoss(VGG19Features().eval(), pixel_weight=0.5, feature_weight=2.0)
    sr, target = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    assert torch.equal(bind_target(loss_fn, target)(sr), loss_fn(sr, target))
    assert torch.equal(bind_target(content_loss, target)(sr), content_loss(sr, target))
    with pytest.raises(ValueError, match="sr shape"):
        bind_target(loss_fn, target)(sr[..., :16, :16])


def test_weight_step_evaluates_the_combiners_once_with_the_same_result():
    lr, target = _batch(1)
    now, before = _net(0.5), _net(0.5)
    opt_now = torch.optim.Adam(now.weight_parameters(), lr=1e-3)
    opt_before = torch.optim.Adam(before.weight_parameters(), lr=1e-3)

    with HostReads() as reads:
        loss_now = weight_step(now, opt_now, lr, target, content_loss, torch.Generator().manual_seed(2), 5.0)
    for p in before.arch_parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(2)
    with HostReads() as reads_before:
        gumbel = before.sample_widths("gumbel", gen)
        opt_before.zero_grad(set_to_none=True)
        loss_before = _reference_sandwich(before, lr, target, (gumbel, *SEARCH_FIXED_WIDTHS), content_loss, None)
        torch.nn.utils.clip_grad_norm_(before.weight_parameters(), 5.0)
        opt_before.step()

    assert loss_now == loss_before
    for a, b in zip(now.state_dict().values(), before.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert all(p.requires_grad for p in now.arch_parameters()), "the step gives the logits their gradients back"
    # The combiners (their early exit reads), their pattern and the loss are read once, not per pass;
    # the optimiser's own reads (host step counters) are the same in both.
    assert reads.count <= reads_before.count - 2 * (len(SEARCH_FIXED_WIDTHS) + 1 - 1)


def test_pretrain_step_equals_the_old_loop_bit_for_bit():
    lr, target = _batch(2)
    now, before = _net(0.0), _net(0.0)
    for net in (now, before):
        for p in net.arch_parameters():
            p.requires_grad_(False)
    opt_now = torch.optim.Adam(now.weight_parameters(), lr=1e-3)
    opt_before = torch.optim.Adam(before.weight_parameters(), lr=1e-3)

    loss_now = pretrain_step(now, opt_now, lr, target, content_loss, torch.Generator().manual_seed(3), 5.0)
    opt_before.zero_grad(set_to_none=True)
    loss_before = _reference_sandwich(
        before, lr, target, PRETRAIN_WIDTHS, content_loss, torch.Generator().manual_seed(3)
    )
    torch.nn.utils.clip_grad_norm_(before.weight_parameters(), 5.0)
    opt_before.step()

    assert loss_now == loss_before
    for a, b in zip(now.state_dict().values(), before.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_fixed_architecture_refuses_logits_that_still_learn():
    net = _net(0.5)
    with pytest.raises(RuntimeError, match="alpha"), net.fixed_architecture():
        pass


def test_a_forward_reads_the_host_once_whatever_the_number_of_nodes():
    """Sparse execution reads its op and path pattern in one transfer; nothing is read per node."""
    net = _net(0.0)
    sample = net.sample_widths("max")
    with HostReads() as reads:
        net(torch.rand(1, 3, 8, 8), sample)
    assert reads.count == 1


def test_radius_follows_a_loaded_state_dict():
    source, target = _net(0.7, seed=1), _net(0.1, seed=2)
    target.load_state_dict(source.state_dict())
    assert torch.equal(target.op_weights(), source.op_weights())
    assert torch.equal(target.path_weights(), source.path_weights())


def test_cost_tables_live_with_the_net_and_stay_out_of_the_state_dict():
    """On the meta device a host-side table would fail the cost evaluation: every table moved with `.to`."""
    net = _net(0.5)
    keys = set(net.state_dict())
    expected = net.expected_cost(net.op_weights(), net.path_weights(), net.sample_widths("max"))
    meta = copy.deepcopy(net).to("meta")
    cost = meta.expected_cost(
        torch.empty_like(meta.alpha).fill_(0.5), torch.empty_like(meta.path_logits), meta.sample_widths("max")
    )
    assert cost.device.type == "meta" and cost.shape == expected.shape
    assert not any(key.startswith("_cost_") for key in keys)
    assert {"_cost_per_pixel", "_cost_ancestry"} <= {name for name, _ in net.named_buffers()}
