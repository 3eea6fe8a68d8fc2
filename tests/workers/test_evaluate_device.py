"""Evaluation on the stage's device: the caller's network is not moved, the figure feeds the net's device.

No GPU here; the meta device stands in for "another device than the CPU": moving a module there is
real (`Module.to`), and a forward records the device of the input it was fed.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from search_space.derived import build_network
from search_space.genotype import load_genotype
from workers.comparison import _network_output
from workers.evaluate import latencies, on_device


class _Recorder(nn.Module):
    """A ×4 "network" with its weight on `device` that records where its input lives."""

    def __init__(self, device: str) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, device=device))
        self.seen: list[torch.device] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.device)
        n, c, h, w = x.shape
        return torch.zeros(n, c, 4 * h, 4 * w)  # on the CPU, so the figure can read it here


def test_evaluating_elsewhere_copies_the_network_and_leaves_the_callers_where_it_was():
    net = nn.Conv2d(3, 3, 3)
    moved = on_device(net, "meta")
    assert moved is not net and moved.weight.device.type == "meta"
    assert net.weight.device.type == "cpu"
    assert on_device(net, "cpu") is net  # already there: no copy


def test_the_comparison_figure_feeds_the_network_on_its_own_device():
    net = _Recorder("meta")
    out = _network_output(net, np.zeros((4, 5, 3), dtype=np.uint8))
    assert net.seen == [torch.device("meta")] and out.shape == (16, 20, 3) and out.dtype == np.uint8
    cpu = _Recorder("cpu")
    _network_output(cpu, np.zeros((4, 5, 3), dtype=np.uint8))
    assert cpu.seen == [torch.device("cpu")]


def test_latency_is_reported_per_device_with_the_cpu_threads():
    net = build_network(load_genotype("trilevel-b-psnr"))
    measured = latencies(net, (16, 16), 1, "cpu")
    assert set(measured) == {"latency_s", "latency_s/cpu", "latency_cpu_threads"}
    assert measured["latency_s"] == measured["latency_s/cpu"] > 0
    assert measured["latency_cpu_threads"] == torch.get_num_threads()


def test_the_evaluation_task_loads_the_checkpoint_and_returns_plain_data_on_the_cpu(tmp_path):
    """What a GPU run's evaluation task runs (`evaluate_checkpoint`), here with no GPU share: the CPU, threads set."""
    from search_space.genotype import Genotype, OpChoice
    from workers.evaluate_on_device import evaluate_checkpoint

    genotype = Genotype(backbone="B", path=(0,), cells=((OpChoice("conv3x3", 8),) * 5,), nf=8, scale=4, name="t")
    torch.save({"model": build_network(genotype).state_dict(), "epoch": 1}, tmp_path / "state.pt")
    (tmp_path / "genotype.json").write_text(genotype.to_json())
    metrics, per_image, picture = evaluate_checkpoint(str(tmp_path), {}, 4, {"kind": "hr"}, 0, 1)
    assert per_image == [] and picture is None  # no test sets here: only the network's own numbers
    assert metrics["gflops"] > 0 and metrics["latency_s/cpu"] > 0 and metrics["latency_cpu_threads"] == 1
