"""Does the Ray Data pipeline keep one search worker fed?

Producer: LR/HR patch pairs per second out of ``read_pairs`` → ``iter_batches`` → ``collate_crops``
(read Parquet, decode PNG, MATLAB bicubic when no LR is stored, crop 32x32 at x4, batch 3), over
several epochs of the demo data set (each epoch re-executes the Ray Data pipeline, as training does).

Consumer: patch pairs per second one search worker uses: one search step = arch step on a chi_2
batch + weight step on a chi_1 batch, each = frozen teacher forward for the targets + the sandwich
{gumbel, max, min} supernet forwards summed + one backward + one optimizer step (method.md §3),
so 2 x 3 = 6 pairs per step. Timed at radius 0 (search start: sparsemax of uniform logits is
uniform, every op and node is computed) and radius 1 (search end: one-hot, sparse execution).
The stand-in model is one line (``consumer_model``); without ``search_space.supernet`` it falls
back to a 2-layer conv net.

Both sides are measured alone on this machine; the ratio producer/consumer > 1 means the data
pipeline is not the bottleneck. Writes ``bench/results/data_pipeline.json``.

    python bench/data_pipeline.py [--epochs 5] [--steps 1] [--radii 0,1] [--subimages 480/240]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.pipeline import collate_crops, split_search
from workers.shards.demo import write_demo_dataset

PATCH, SCALE, BATCH = 32, 4, 3
RESULTS = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------- consumer


class _TwoLayerStandIn(nn.Module):
    """Fallback stand-in when the supernet is not importable: conv-relu-conv + pixel shuffle."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 48, 3, padding=1))
        self.up = nn.PixelShuffle(SCALE)

    def forward(self, x: torch.Tensor, widths: str = "max") -> torch.Tensor:
        return self.up(self.body(x))


def consumer_model() -> tuple[nn.Module, str]:
    """The model a search worker trains; swap this line to bench another network."""
    try:
        from search_space.supernet import Supernet, SupernetConfig

        return Supernet(SupernetConfig()), "search_space.supernet.Supernet(SupernetConfig()) (backbone B, 55 nodes)"
    except ImportError:
        return _TwoLayerStandIn(), "stand-in: conv3x3 3->64, ReLU, conv3x3 64->48, PixelShuffle(4)"


def _teacher() -> tuple[nn.Module, str]:
    try:
        from search_space.teacher import RRDBNet

        return RRDBNet().eval(), "RRDBNet(nb=23) random init"
    except ImportError:
        return nn.Upsample(scale_factor=SCALE, mode="bicubic").eval(), "bicubic upsampling"


def search_step_fn() -> tuple[Callable[[torch.Tensor, torch.Tensor, float], None], dict[str, str]]:
    """One search step (arch on chi_2, then weights on chi_1) of the consumer model."""
    net, net_desc = consumer_model()
    teacher, teacher_desc = _teacher()
    weights = [p for n, p in net.named_parameters() if n not in ("alpha", "width_logits", "path_logits")]
    arch = [p for n, p in net.named_parameters() if n in ("alpha", "width_logits", "path_logits")]
    with torch.no_grad():  # a search in progress: untied logits, so radius 1 really is one-hot
        for p in arch:
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 1e-2)
    w_opt = torch.optim.Adam(weights, lr=1e-4)
    a_opt = torch.optim.Adam(arch, lr=3e-4, betas=(0.5, 0.999)) if arch else None
    has_modes = hasattr(net, "sample_widths")

    def half_step(lr: torch.Tensor, opt: torch.optim.Optimizer | None) -> None:
        with torch.no_grad():
            target = teacher(lr)
        modes = ("gumbel", "max", "min") if has_modes else ("max",) * 3
        loss = sum(torch.nn.functional.l1_loss(net(lr, m), target) for m in modes)
        net.zero_grad(set_to_none=True)
        loss.backward()
        if opt is not None:
            opt.step()

    def step(lr_w: torch.Tensor, lr_a: torch.Tensor, radius: float) -> None:
        if hasattr(net, "set_radius"):
            net.set_radius(radius)
        half_step(lr_a, a_opt)
        half_step(lr_w, w_opt)

    return step, {"model": net_desc, "teacher": teacher_desc}


def measure_consumer(steps: int, radius: float) -> float:
    """Seconds per search step, after a warm-up step (first calls pay one-off kernel set-up)."""
    torch.manual_seed(0)  # Gumbel width samples use the global generator
    step, _ = search_step_fn()
    g = torch.Generator().manual_seed(0)
    lr_w = torch.rand((BATCH, 3, PATCH, PATCH), generator=g)
    lr_a = torch.rand((BATCH, 3, PATCH, PATCH), generator=g)
    step(lr_w, lr_a, radius)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(lr_w, lr_a, radius)
    return (time.perf_counter() - t0) / steps


# --------------------------------------------------------------------------- producer


def measure_producer(data_root: str, epochs: int, num_cpus: float) -> dict[str, float]:
    """Patch pairs per second from the chi_1 + chi_2 pipelines over ``epochs`` passes."""
    w, a = split_search(f"{data_root}/train", SCALE, num_cpus=num_cpus)
    g = torch.Generator().manual_seed(0)
    pairs, first_epoch_s = 0, 0.0
    t0 = time.perf_counter()
    for epoch in range(epochs):
        for ds in (w, a):
            for batch in ds.iter_batches(batch_size=BATCH, batch_format="numpy"):
                lr, _ = collate_crops(batch, PATCH, SCALE, g)
                pairs += lr.shape[0]
        if epoch == 0:
            first_epoch_s = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return {"pairs": pairs, "seconds": total, "pairs_per_s": pairs / total, "first_epoch_s": first_epoch_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1, help="timed search steps per radius")
    parser.add_argument("--radii", default="0,1", help="sparsestmax radii to time the consumer at")
    parser.add_argument("--num-cpus", type=float, default=0.25, help="CPU fraction per Ray Data task")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the consumer [torch default]")
    parser.add_argument("--subimages", default=None, help="SIZE/STEP for the demo train set, e.g. 480/240")
    parser.add_argument("--data", default=None, help="demo data folder (default: a temp folder)")
    args = parser.parse_args()
    sub = tuple(int(v) for v in args.subimages.split("/")) if args.subimages else None

    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory() as tmp:
        data_root = args.data or tmp
        summary = write_demo_dataset(data_root, subimages=sub)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            produced = measure_producer(data_root, args.epochs, args.num_cpus)
        finally:
            ray.shutdown()

    print(f"producer: {produced['pairs_per_s']:.1f} pairs/s", file=sys.stderr, flush=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    _, desc = search_step_fn()
    consumer = {}
    for radius in (float(r) for r in args.radii.split(",") if r):
        s = measure_consumer(args.steps, radius)
        consumer[f"radius_{radius:g}"] = {"seconds_per_step": s, "pairs_per_s": 2 * BATCH / s}
        print(f"consumer at radius {radius:g}: {s:.2f} s per step", file=sys.stderr, flush=True)
    rates = [c["pairs_per_s"] for c in consumer.values()] or [float("nan")]
    slowest, fastest = min(rates), max(rates)
    result = {
        "bench": "data_pipeline",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(),
            "load_avg_1min_at_end": os.getloadavg()[0],
        },
        "data": {"set": "skimage demo train", "rows": summary.parts["train"].rows, "subimages": sub},
        "patch": PATCH,
        "scale": SCALE,
        "batch": BATCH,
        "ray_data_num_cpus": args.num_cpus,
        "producer": produced,
        "consumer": {**desc, **consumer, "pairs_per_step": 2 * BATCH},
        "ratio_producer_over_consumer": {
            "slowest_consumer": produced["pairs_per_s"] / slowest,
            "fastest_consumer": produced["pairs_per_s"] / fastest,
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "data_pipeline" + (f"_sub{sub[0]}" if sub else "") + ".json"
    (RESULTS / name).write_text(json.dumps(result, indent=1))
    print(f"producer: {produced['pairs_per_s']:.1f} pairs/s ({produced['pairs']} pairs in {produced['seconds']:.1f} s)")
    for k, c in consumer.items():
        print(f"consumer ({k}): {c['pairs_per_s']:.2f} pairs/s ({c['seconds_per_step']:.2f} s per search step)")
    for k, r in result["ratio_producer_over_consumer"].items():
        print(f"ratio producer/consumer at {k}: {r:.1f}x")
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()
