"""`stages.precision: bf16` (autocast convolutions, channels-last; combiners, costs, losses fp32) and `deterministic`.

On the CPU, torch's bf16 autocast runs the same ops as on CUDA (convolutions and matmuls in bf16), so
the drift it causes is measured here: the PSNR of one network in fp32 and in bf16 on the same image.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch

from search_space.supernet import Supernet, SupernetConfig
from workers.losses import content_loss
from workers.metrics import psnr_y
from workers.precision import prepare, run_forward, set_deterministic
from workers.search_step import pretrain_step

SMALL = SupernetConfig(backbone="B", nf=16, widths=(8, 16), num_cells=2, num_ups=2)


def _net() -> Supernet:
    torch.manual_seed(0)
    net = Supernet(SMALL)
    net.set_radius(0.5)
    with torch.no_grad():
        for p in net.arch_parameters():
            p.normal_()
    return net


def test_bf16_runs_the_convolutions_in_bf16_and_keeps_combiners_costs_and_output_in_fp32():
    net = prepare(_net(), "bf16")
    assert net.stem.weight.is_contiguous(memory_format=torch.channels_last)
    dtypes = []
    net.stem.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    x = torch.rand(1, 3, 12, 12)
    out = run_forward(net, "bf16", x, "max")
    assert dtypes == [torch.bfloat16] and out.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        op_w, path_w, _, _ = net._combined()
        cost = net.expected_cost(op_w, path_w, net.sample_widths("max"))
    assert op_w.dtype == path_w.dtype == cost.dtype == torch.float32
    assert torch.equal(op_w, net.op_weights())
    reference = net(x, "max")
    assert (out - reference).abs().max() < 0.03  # bf16 keeps 8 bits of mantissa


def test_bf16_psnr_drift_of_one_network_is_small():
    """The measured drift: the same network's Y-PSNR against the same target in fp32 and in bf16."""
    net = _net().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 24, 24, generator=g)
    with torch.no_grad():
        fp32 = net(x, "max")
        target = (fp32 + 0.05 * torch.randn(fp32.shape, generator=g)).clamp(0, 1)  # a PSNR near 26 dB
        bf16 = run_forward(prepare(copy.deepcopy(net), "bf16"), "bf16", x, "max")

    def psnr(image: torch.Tensor) -> float:
        to_np = lambda t: t[0].permute(1, 2, 0).numpy().astype(np.float64)  # noqa: E731
        return psnr_y(to_np(image), to_np(target), crop=4)

    drift = abs(psnr(bf16) - psnr(fp32))
    assert drift < 0.05, drift


def test_a_bf16_pretrain_step_trains_fp32_weights_with_a_loss_close_to_fp32():
    g = torch.Generator().manual_seed(2)
    lr, hr = torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    losses = {}
    for precision in ("fp32", "bf16"):
        net = prepare(_net(), precision)
        for p in net.arch_parameters():
            p.requires_grad_(False)
        before = net.stem.weight.detach().clone()
        opt = torch.optim.Adam(net.weight_parameters(), lr=1e-3)
        losses[precision] = pretrain_step(
            net, opt, lr, hr, content_loss, torch.Generator().manual_seed(3), 5.0, precision
        )
        assert net.stem.weight.dtype == torch.float32 and not torch.equal(net.stem.weight, before)
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.02)


def test_deterministic_turns_on_deterministic_kernels_and_the_cublas_setting():
    saved = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] in (":4096:8", saved)
    finally:
        set_deterministic(False)
        if saved is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    with pytest.raises(ValueError, match=r"stages\.precision must be one of fp32, bf16"):
        run_forward(_net(), "fp16", torch.rand(1, 3, 8, 8))
