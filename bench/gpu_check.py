"""One command for the first GPU node: can it run the image's torch, and at what rate, before a sweep spends it.

    python -m bench.gpu_check                 # paper shapes, on the node's GPU (CPU when there is none)
    python -m bench.gpu_check --quick         # tiny shapes, seconds on a CPU (what the test suite runs)

Prints one Markdown table (and writes `bench/results/gpu_check.json`):

- **driver**: torch and its CUDA version, the GPU, its compute capability, the driver (nvidia-smi).
  The image's CUDA 13 torch needs driver R580 or newer and compute capability ≥ 7.5 (no V100): a
  mismatch is flagged here, not three hours into a sweep. (`workers.gpu_probe`: the same checks and
  dense step that `trilevel sweep --preflight` runs on one GPU worker of a cluster.)
- **peak memory of a dense pretrain step** at paper shapes (backbone B supernet, 55 nodes, radius 0:
  every op and node computed; LR 32×32, batch 3): the worst step of a trial. Compare it with the
  GPU's memory: above ~90 % means set `search_space.recompute_cells=0.5` (about a third of the peak,
  same gradients) or a smaller batch or patch.
- **seconds per step**: pretrain (dense), late search (radius 0.95: sparse, nearly one-hot) and train
  (the zoo's trilevel-b-psnr at batch 16, LR 32×32), each the median of `--steps` after a warm-up,
  synchronised. Steps per epoch × epochs × these = a stage's GPU time.
- **data rate vs consumption**: LR/HR patch pairs per second one worker's feed produces at `--cpus`
  CPUs (`bench.data_feed`'s measurement: process CPU seconds to read + decode a shard row and cut its
  crops, on a DIV2K-sized photograph prepared by `data prepare`'s own code) against the pairs a train
  step consumes per second at the step time measured here, for two ways of preparing the data: the
  default (whole PNGs, LR computed on every read, 1 crop per row) and the recommended one
  (`--subimages 480/240 --compute-lr --encoding raw`, `data.crops_per_image=16`). On a GPU the cut is
  the one a GPU run uses (uint8 crops, finished on the device). Below 1× the GPU waits for data.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import peak_rss_mib  # noqa: E402
from search_space.derived import build_network  # noqa: E402
from search_space.genotype import load_genotype  # noqa: E402
from search_space.supernet import Supernet, SupernetConfig  # noqa: E402
from workers.gpu_probe import dense_step_probe, driver_info, timed_step  # noqa: E402
from workers.losses import content_loss  # noqa: E402
from workers.search_step import FlopsController, search_step  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PAPER = {"config": SupernetConfig(), "lr": 32, "batch": 3, "train_batch": 16}
QUICK = {
    "config": SupernetConfig(nf=16, num_cells=2, widths=(8, 12, 16)),
    "lr": 8,
    "batch": 1,
    "train_batch": 2,
}


def _supernet(shapes: dict[str, Any], device: torch.device, radius: float) -> Supernet:
    torch.manual_seed(0)
    net = Supernet(shapes["config"]).to(device)
    with torch.no_grad():
        for p in net.arch_parameters():
            p.normal_()
    net.set_radius(radius)
    return net


def _batch(shapes: dict[str, Any], device: torch.device, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    lr, scale = shapes["lr"], shapes["config"].scale
    return torch.rand(batch, 3, lr, lr, device=device), torch.rand(batch, 3, lr * scale, lr * scale, device=device)


def step_seconds(shapes: dict[str, Any], device: torch.device, steps: int) -> dict[str, float]:
    """Peak memory of a dense pretrain step, and seconds per pretrain, late-search and train step."""
    out: dict[str, float] = {}
    dense = dense_step_probe(shapes["config"], shapes["lr"], shapes["batch"], device, steps)  # what --preflight probes
    out["pretrain_s"] = dense["seconds"]
    if device.type == "cuda":
        out["pretrain_peak_gib"] = dense["peak_gib"]
    else:
        out["pretrain_peak_rss_gib"] = peak_rss_mib() / 1024
    lr, hr = _batch(shapes, device, shapes["batch"])
    gen = torch.Generator().manual_seed(1)

    late = _supernet(shapes, device, 0.95)
    weight_opt = torch.optim.Adam(late.weight_parameters(), lr=1e-4)
    arch_opt = torch.optim.Adam(late.arch_parameters(), lr=3e-4, betas=(0.5, 0.999))
    flops = FlopsController(1e-20, None, (0.25, 1.0), 20)
    paths = late.tree.full_paths.to(device)
    batch_a = _batch(shapes, device, shapes["batch"])

    def search() -> None:
        search_step(
            late, weight_opt, arch_opt, (lr, hr), batch_a, content_loss, gen,
            flops=flops, lambda_order=0.01, full_paths=paths, grad_clip=5.0,
        )  # fmt: skip

    out["search_late_s"] = timed_step(search, steps, device)

    derived = build_network(load_genotype("trilevel-b-psnr")).to(device)
    opt = torch.optim.Adam(derived.parameters(), lr=2e-4)
    lr_t, hr_t = _batch(shapes, device, shapes["train_batch"])

    def train() -> None:
        loss = content_loss(derived(lr_t), hr_t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    out["train_s"] = timed_step(train, steps, device)
    return out


RECOMMENDED = {"compute_lr": True, "subimages": (480, 240), "encoding": "raw"}  # README's `data prepare` advice
DATA_LAYOUTS = (  # (name, `data prepare` options, data.crops_per_image)
    ("default: whole PNGs, LR on read, k = 1", {}, 1),
    ("recommended: raw 480/240 sub-images, stored LR, k = 16", RECOMMENDED, 16),
)


def data_rates(quick: bool, cpus: float, device: torch.device) -> dict[str, dict[str, float]]:
    """Pairs/s one worker's feed produces at `cpus` CPUs per data layout (`bench.data_feed`'s measurement).

    Rate = min(cpus / CPU s per pair, 1 / cut s per pair): decoding spreads over the worker's CPUs (Ray Data
    tasks), the crops run on one cutting thread (`data.cut_threads` = 1).
    """
    from bench.data_feed import SCALE, cpu_seconds_per_crop, photograph_folder
    from workers.shards.folders import prepare_dataset
    from workers.shards.format import read_manifest

    cut = "device" if device.type == "cuda" else "float"  # what a run on this device cuts on the CPU
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        source = photograph_folder(Path(tmp) / "src", 1, (1020, 680) if quick else (2040, 1356))
        for n, (name, options, crops) in enumerate(DATA_LAYOUTS):
            prepared = str(Path(tmp) / f"layout{n}")
            prepare_dataset([str(source)], prepared, SCALE, workers=1, **options)
            spent = cpu_seconds_per_crop(prepared, read_manifest(prepared).encoding, crops)
            per_pair, cut_s = spent[f"s_per_crop_{cut}"], spent[f"crop_s_{cut}"]
            out[name] = {"cpu_s_per_pair": per_pair, "pairs_per_s": min(cpus / per_pair, 1 / cut_s)}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes (a CPU smoke run)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement (after one warm-up)")
    parser.add_argument("--cpus", type=float, default=4.0, help="CPUs per worker the data rate is scaled to")
    args = parser.parse_args(argv)
    shapes = QUICK if args.quick else PAPER
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    info = driver_info()
    steps = step_seconds(shapes, device, args.steps)
    data = data_rates(args.quick, args.cpus, device)
    consumed = shapes["train_batch"] / steps["train_s"]
    produced = data[DATA_LAYOUTS[-1][0]]["pairs_per_s"]  # the recommended layout
    report = {"driver": info, "device": str(device), "shapes": "quick" if args.quick else "paper", **steps}
    report |= {"data": data, "cpus_per_worker": args.cpus, "train_pairs_per_s": consumed}
    report |= {"data_pairs_per_s": produced, "data_headroom": produced / consumed}
    rows = [
        ("torch / CUDA", f"{info['torch']} / {info['cuda'] or 'none'}"),
        ("GPU (capability, memory)", f"{info.get('gpu') or 'none'} ({info.get('capability', '-')}, "
         f"{info.get('memory_gib', 0):.0f} GiB)"),
        ("driver", info.get("driver", "-") + ("" if info["ok"] else f" — PROBLEM: {info['note']}")),
    ]  # fmt: skip
    if "pretrain_peak_gib" in steps:
        rows.append(("dense pretrain step, peak GPU memory", f"{steps['pretrain_peak_gib']:.1f} GiB"))
    else:
        rows.append(("dense pretrain step, peak process RSS (CPU run)", f"{steps['pretrain_peak_rss_gib']:.1f} GiB"))
    rows += [
        ("pretrain step (dense, radius 0)", f"{steps['pretrain_s']:.3f} s"),
        ("search step (late, radius 0.95)", f"{steps['search_late_s']:.3f} s"),
        (f"train step (trilevel-b-psnr, batch {shapes['train_batch']})", f"{steps['train_s']:.3f} s"),
        ("train step consumes pairs/s", f"{consumed:.1f}"),
    ]
    for name, rate in data.items():
        rows.append((f"data, {name}: pairs/s at {args.cpus:g} CPUs", f"{rate['pairs_per_s']:.1f}"))
        rows.append((f"data headroom, {name} (≥ 1: the GPU never waits)", f"{rate['pairs_per_s'] / consumed:.2f}×"))
    print(f"gpu_check on {device} ({report['shapes']} shapes)\n\n| check | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    if info.get("note"):
        print(f"\nNote: {info['note']}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / ("gpu_check_quick.json" if args.quick else "gpu_check.json")).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
