"""Benchmark: one trilevel search step of the paper-default supernet, sparse vs dense execution.

A search step is AGD's: an architecture step then a weight step. Each is the sandwich loss
Σ_{widths ∈ gumbel, max, min} L1(net(x, widths), target), one backward and one Adam step
(architecture: Adam lr 3e-4, β = (0.5, 0.999) on `arch_parameters()`, plus 1e-20 · FLOPs penalty
at the Gumbel widths; weights: Adam lr 1e-4 on `weight_parameters()`).

Protocol. Every model lives in a worker process of its own (`bench.common.Worker`), all built from
one seed: same weights, logits, data and Gumbel draws, and every step restarts from that state
(empty Adam moments), so all steps of a configuration are the same computation and the sparse
losses must equal the dense ones (checked). Architecture logits are random N(0, 1), so sparsestmax
has realistic sparsity at intermediate radii.

- Radii (LR 32×32, batch 3 by default): one warm dense worker, re-configured per radius (dense work
  does not depend on r), and one fresh sparse worker per radius. Per radius the dense step sits
  between the sparse ones (S D S S). Speedup = median of all dense steps / median of the sparse ones.
- Worst case (uniform initial logits at r = 0: no weight is zero, sparse computes what dense does
  plus its bookkeeping): fresh dense and sparse workers, steps in ABBA order. At a small patch
  (8×8, batch 1, by default), where the fixed bookkeeping weighs most and steps are cheap enough
  for several pairs.

Both wall-clock and process CPU time are recorded: on a shared machine the CPU time of a
single-threaded worker is the steadier measure of the work. Workers run one torch thread by
default: a 2-thread pool on a loaded 2-core machine stalls on every small op (one LR 8×8 dense
step: 2.7–4.5 s with one thread, 4.4–76 s with two). Peak memory = each worker's peak RSS (why:
`bench/common.py`).

    python -m bench.search_step            # backbone B, LR 32×32, batch 3 (4–6 min on the 2-core box)
    python -m bench.search_step --with-a   # + backbone A at LR 8×8, batch 1
    python -m bench.search_step --quick    # ~20 s smoke run (nf 16, 3 cells, LR 8×8, batch 1)

One file (~780 lines) on purpose: a benchmark is read as one protocol, from the worker that takes a step
to the table in BENCHMARKS.md; split over modules, its method would be harder to check than to run.
The step itself is not here: it is production's (`workers.search_step`).

Prints Markdown tables and writes JSON to `bench/results/search_step.json` (`..._quick.json`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/search_step.py` (the Makefile's `make bench`)
    sys.path.insert(0, str(ROOT))

from bench.common import Worker, machine_info, markdown_table, median, peak_rss_mib, release_memory  # noqa: E402
from search_space.supernet import Supernet, SupernetConfig  # noqa: E402
from workers.search_step import FlopsController, arch_step, weight_step  # noqa: E402

__all__ = [
    "ARCH_BETAS",
    "ARCH_LR",
    "FLOPS_WEIGHT",
    "WEIGHT_LR",
    "StepBatch",
    "StepResult",
    "StepRunner",
    "make_batch",
    "make_optimizers",
    "make_supernet",
    "sandwich_loss",
    "scaled_widths",
    "search_step",
    "set_logits",
    "sparsity",
]

ARCH_LR = 3e-4
ARCH_BETAS = (0.5, 0.999)
WEIGHT_LR = 1e-4
FLOPS_WEIGHT = 1e-20
GRAD_CLIP = 5.0
SANDWICH = ("gumbel", "max", "min")
DEFAULT_WIDTHS = SupernetConfig().widths
RESULTS = ROOT / "bench" / "results"
# Imported once by the workers' fork server; torch._dynamo is what Supernet's meta-device MAC
# counting imports lazily (~1.4 s per process otherwise).
PRELOAD = ("torch", "torch._dynamo", "search_space.supernet")

SPEEDUP_TARGET_R1 = 10.0  # sparse ≥ 10× faster than dense at radius 1
SPEEDUP_TARGET_R0 = 1.0  # sparse never slower than dense at radius 0


# --- the step ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepBatch:
    """LR inputs and HR targets of the architecture step (AGD: a validation batch) and of the weight step."""

    x_arch: torch.Tensor
    y_arch: torch.Tensor
    x_weight: torch.Tensor
    y_weight: torch.Tensor


@dataclass(frozen=True)
class StepResult:
    arch_loss: float
    weight_loss: float
    arch_seconds: float
    weight_seconds: float
    cpu_seconds: float = 0.0  # process CPU time of the whole step: what the step cost, whatever else ran

    @property
    def seconds(self) -> float:
        return self.arch_seconds + self.weight_seconds


def scaled_widths(nf: int) -> tuple[int, ...]:
    """The paper's width set (24, 32, 40, 56, 64) scaled to `nf` (distinct, ending at nf)."""
    if nf == DEFAULT_WIDTHS[-1]:
        return DEFAULT_WIDTHS
    return tuple(sorted({max(1, round(w * nf / DEFAULT_WIDTHS[-1])) for w in DEFAULT_WIDTHS} | {nf}))


def set_logits(net: Supernet, logits: str, seed: int = 0, scale: float = 1.0) -> None:
    """Architecture logits: `"random"` draws every logit from N(0, scale²), seeded (realistic sparsity
    for sparsestmax at intermediate radii; a smaller scale is an earlier, less decided search);
    `"uniform"` restores the constant initial logits (sparsemax then puts no zero anywhere: the
    worst case for sparse execution, which then computes everything)."""
    params = (net.alpha, net.width_logits, net.path_logits)
    config = net.config
    with torch.no_grad():
        if logits == "random":
            generator = torch.Generator().manual_seed(seed + 1)
            for p in params:
                p.copy_(scale * torch.randn(p.shape, generator=generator))
        elif logits == "uniform":
            for p, value in zip(params, (config.alpha_init, config.width_init, config.path_init), strict=True):
                p.fill_(value)
        else:
            raise ValueError(f"logits must be 'random' or 'uniform', got {logits!r}")


def make_supernet(
    *,
    sparse: bool,
    logits: str = "random",
    seed: int = 0,
    logit_scale: float = 1.0,
    backbone: str = "B",
    nf: int = 64,
    num_cells: int = 5,
    num_ups: int = 2,
    recompute_cells: float = 0.0,
) -> Supernet:
    """The supernet (paper defaults unless told) with seeded weights and `set_logits(logits)`."""
    config = SupernetConfig(
        backbone=backbone,
        nf=nf,
        widths=scaled_widths(nf),
        num_cells=num_cells,
        num_ups=num_ups,
        sparse_execution=sparse,
        recompute_cells=recompute_cells,
    )
    torch.manual_seed(seed)
    net = Supernet(config)
    set_logits(net, logits, seed, logit_scale)
    return net


def make_optimizers(net: Supernet) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """(architecture Adam, weight Adam) as in AGD's search."""
    arch = torch.optim.Adam(net.arch_parameters(), lr=ARCH_LR, betas=ARCH_BETAS)
    weight = torch.optim.Adam(net.weight_parameters(), lr=WEIGHT_LR)
    return arch, weight


def make_batch(*, patch: int, batch: int, scale: int = 4, seed: int = 0) -> StepBatch:
    generator = torch.Generator().manual_seed(seed)

    def rand(size: int) -> torch.Tensor:
        return torch.rand(batch, 3, size, size, generator=generator)

    return StepBatch(rand(patch), rand(patch * scale), rand(patch), rand(patch * scale))


def sandwich_loss(
    net: Supernet, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, Any]:
    """Σ over widths {gumbel, max, min} of L1(net(x, widths), y), every pass's graph kept alive until one
    backward; also returns the Gumbel sample. Only the `summed` baseline uses it."""
    gumbel = net.sample_widths("gumbel", generator)
    loss = F.l1_loss(net(x, gumbel), y)
    for mode in SANDWICH[1:]:
        loss = loss + F.l1_loss(net(x, net.sample_widths(mode)), y)
    return loss, gumbel


def search_step(
    net: Supernet,
    arch_opt: torch.optim.Optimizer,
    weight_opt: torch.optim.Optimizer,
    batch: StepBatch,
    generator: torch.Generator,
    flops_weight: float = FLOPS_WEIGHT,
    *,
    summed: bool = False,
) -> StepResult:
    """One AGD search step: architecture step (sandwich + FLOPs penalty), then weight step (sandwich).

    By default it is the production step (`workers.search_step.arch_step` and `weight_step`: a
    backward after every sandwich pass, SSN freezing, gradient clipping at 5). `summed=True` is the
    baseline it replaced, measured in the same run: the passes' losses summed, all their graphs alive,
    one backward.
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    if summed:
        net.zero_grad(set_to_none=True)
        loss, gumbel = sandwich_loss(net, batch.x_arch, batch.y_arch, generator)
        arch_total = loss + flops_weight * net.flops_penalty(gumbel)
        arch_total.backward()
        arch_opt.step()
        arch_loss = float(loss.detach())
        middle = time.perf_counter()
        net.zero_grad(set_to_none=True)
        weight_total, _ = sandwich_loss(net, batch.x_weight, batch.y_weight, generator)
        weight_total.backward()
        torch.nn.utils.clip_grad_norm_(net.weight_parameters(), GRAD_CLIP)
        weight_opt.step()
        weight_loss = float(weight_total.detach())
    else:
        flops = FlopsController(flops_weight, None, (0.5, 2.0), 1)
        arch_loss, _, _ = arch_step(
            net, arch_opt, batch.x_arch, batch.y_arch, F.l1_loss, generator, flops, 0.0, net.tree.full_paths
        )
        middle = time.perf_counter()
        weight_loss = weight_step(net, weight_opt, batch.x_weight, batch.y_weight, F.l1_loss, generator, GRAD_CLIP)
    end, cpu_end = time.perf_counter(), time.process_time()
    return StepResult(arch_loss, weight_loss, middle - start, end - middle, cpu_end - cpu_start)


@torch.no_grad()
def sparsity(net: Supernet) -> dict[str, float]:
    """How much of the supernet the combiners leave non-zero, and what sparse execution computes."""
    op_w, path_w = net.op_weights(), net.path_weights()
    eligible = net.output_mask
    needed = (path_w > 0).tolist()
    for node in reversed(net.tree.nodes):
        if needed[node.index] and node.parent is not None:
            needed[node.parent] = True
    cells_run = [n.cell for n in net.tree.nodes if needed[n.index] and n.cell is not None]
    op_evals = sum(int((op_w[c] > 0).sum()) for c in cells_run)
    return {
        "op_weights_nonzero": float((op_w > 0).float().mean()),
        "path_weights_nonzero": float((path_w[eligible] > 0).float().mean()),
        "cells_run": len(cells_run),
        "cells_total": len(net.cells),
        "op_evals_fraction": op_evals / op_w.numel(),
    }


class StepRunner:
    """One supernet inside a worker process, with its optimisers, data and Gumbel stream.

    Every step, warm-up or timed, first restores the same state: the weights as built, the
    configured logits and radius, empty Adam moments and the same Gumbel draws. So every step of a
    configuration is the identical computation (the first search step from initialisation), and a
    dense and a sparse runner of one configuration must produce the same losses.
    """

    def __init__(
        self,
        *,
        sparse: bool,
        logits: str,
        radius: float,
        patch: int,
        batch: int,
        seed: int,
        logit_scale: float = 1.0,
        threads: int | None = None,
        summed: bool = False,
        **net_kwargs: Any,
    ) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.summed = summed
        self.seed, self.logit_scale = seed, logit_scale
        self.net = make_supernet(sparse=sparse, logits=logits, seed=seed, logit_scale=logit_scale, **net_kwargs)
        self.arch_opt, self.weight_opt = make_optimizers(self.net)
        self.batch = make_batch(patch=patch, batch=batch, scale=self.net.config.scale, seed=seed + 2)
        self.generator = torch.Generator().manual_seed(seed + 3)
        self._generator_state = self.generator.get_state()
        self._weights = [(p, p.detach().clone()) for p in self.net.weight_parameters()]
        self.configure(logits, radius)
        self.base_rss_mib = peak_rss_mib()

    def configure(self, logits: str, radius: float) -> None:
        self.logits, self.radius = logits, radius
        self.restore()

    def _drop_state(self) -> None:
        """Free gradients and Adam moments and trim the heap: an idle worker holds ~its base RSS."""
        self.net.zero_grad(set_to_none=True)
        for opt in (self.arch_opt, self.weight_opt):
            opt.state.clear()
        release_memory()

    def restore(self) -> None:
        with torch.no_grad():
            for p, saved in self._weights:
                p.copy_(saved)
        set_logits(self.net, self.logits, self.seed, self.logit_scale)
        self.net.set_radius(self.radius)
        self.net.frozen_ops.fill_(False)  # a restored step starts with nothing frozen
        self.net.frozen_widths.fill_(False)
        self.net.frozen_path.fill_(False)
        self.net.zero_grad(set_to_none=True)
        for opt in (self.arch_opt, self.weight_opt):
            opt.state.clear()
        self.generator.set_state(self._generator_state)

    def sparsity(self) -> dict[str, float]:
        return sparsity(self.net)

    def step(self) -> dict[str, float]:
        self.restore()
        step = search_step(self.net, self.arch_opt, self.weight_opt, self.batch, self.generator, summed=self.summed)
        result = asdict(step)
        self._drop_state()
        return result

    def memory(self) -> dict[str, float]:
        return {"base_rss_mib": self.base_rss_mib, "peak_rss_mib": peak_rss_mib(), "threads": torch.get_num_threads()}


# --- the benchmark ----------------------------------------------------------------------------
def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _schedule(dense: int, sparse: int) -> list[str]:
    """Spread `dense` dense steps evenly among `sparse` sparse steps (1 and 3 → S D S S)."""
    slots = [((k + 0.5) / dense, 0, "dense") for k in range(dense)]
    slots += [((k + 0.5) / sparse, 1, "sparse") for k in range(sparse)]
    return [mode for *_, mode in sorted(slots)]


def _step_seconds(steps: list[dict[str, float]]) -> list[float]:
    return [s["arch_seconds"] + s["weight_seconds"] for s in steps]


def _timed(worker: Worker, label: str) -> dict[str, float]:
    result = worker.call("step")
    wall = result["arch_seconds"] + result["weight_seconds"]
    _log(f"    {label}: {wall:.3f} s (CPU {result['cpu_seconds']:.3f} s)")
    return result


def _summarise(
    logits: str, radius: float, stats: dict[str, float], steps: dict[str, list[dict[str, float]]]
) -> dict[str, Any]:
    reference = steps["dense"][0]
    result: dict[str, Any] = {
        "logits": logits,
        "radius": radius,
        "sparsity": stats,
        # Identical state and draws: sparse execution must reproduce the dense losses.
        "losses": {key: reference[key] for key in ("arch_loss", "weight_loss")},
        "max_abs_loss_diff": max(
            abs(s[key] - reference[key])
            for s in steps["dense"] + steps["sparse"]
            for key in ("arch_loss", "weight_loss")
        ),
    }
    for mode in ("dense", "sparse"):
        times = _step_seconds(steps[mode])
        result[mode] = {
            "step_s": times,
            "arch_s": [s["arch_seconds"] for s in steps[mode]],
            "weight_s": [s["weight_seconds"] for s in steps[mode]],
            "cpu_s": [s["cpu_seconds"] for s in steps[mode]],
            "median_step_s": median(times),
            "median_cpu_s": median([s["cpu_seconds"] for s in steps[mode]]),
        }
    return result


def run_radii(
    *, backbone: str, dense: Worker, sparse: dict[float, Worker], repeats: int, dense_repeats: int, warmup: int
) -> dict[str, Any]:
    """Random logits at every radius: one warm dense worker, re-configured per radius (dense work does
    not depend on it), and one fresh sparse worker per radius (so its peak RSS is that radius's)."""
    results: list[dict[str, Any]] = []
    _log(f"[{backbone}] dense worker: {warmup} warm-up step(s)")
    dense_warmup = _step_seconds([_timed(dense, "dense warm-up") for _ in range(warmup)])
    for radius, worker in sparse.items():
        started = time.perf_counter()
        _log(f"[{backbone}] random logits, r={radius:g}")
        dense.call("configure", "random", radius)
        workers = {"dense": dense, "sparse": worker}
        steps: dict[str, list[dict[str, float]]] = {"dense": [], "sparse": []}
        stats = worker.call("sparsity")
        sparse_warmup = _step_seconds([_timed(worker, "sparse warm-up") for _ in range(warmup)])
        for mode in _schedule(dense_repeats, repeats):
            steps[mode].append(_timed(workers[mode], mode))
        sparse_memory = worker.call("memory")
        worker.close()
        result = _summarise("random", radius, stats, steps)
        result["sparse"] |= {"warmup_s": sparse_warmup, **sparse_memory}
        _log(f"[{backbone}]   done in {time.perf_counter() - started:.0f} s")
        results.append(result)
    dense_memory = dense.call("memory")
    dense.close()
    pooled = median([t for r in results for t in r["dense"]["step_s"]])
    pooled_cpu = median([t for r in results for t in r["dense"]["cpu_s"]])
    for r in results:
        r["speedup"] = pooled / r["sparse"]["median_step_s"]
        r["speedup_cpu"] = pooled_cpu / r["sparse"]["median_cpu_s"]
        r["speedup_same_radius"] = r["dense"]["median_step_s"] / r["sparse"]["median_step_s"]
    return {
        "dense": {
            "pooled_median_step_s": pooled,
            "pooled_median_cpu_s": pooled_cpu,
            "warmup_s": dense_warmup,
            **dense_memory,
        },
        "configs": results,
    }


def run_uniform(*, backbone: str, workers: dict[str, Worker], pairs: int, warmup: int) -> dict[str, Any]:
    """Worst case for sparse execution: uniform initial logits at r = 0, so no weight is zero and sparse
    execution computes exactly what dense does, plus its bookkeeping. Fresh dense and sparse workers,
    steps in ABBA order (D S S D D S ...) so that a drift in machine load hits both alike."""
    _log(f"[{backbone}] uniform logits, r=0: {pairs} dense/sparse pairs")
    steps: dict[str, list[dict[str, float]]] = {"dense": [], "sparse": []}
    stats = workers["sparse"].call("sparsity")
    warm = {mode: _step_seconds([_timed(w, f"{mode} warm-up") for _ in range(warmup)]) for mode, w in workers.items()}
    for i in range(pairs):
        for mode in ("dense", "sparse") if i % 2 == 0 else ("sparse", "dense"):
            steps[mode].append(_timed(workers[mode], mode))
    memory = {mode: w.call("memory") for mode, w in workers.items()}
    result = _summarise("uniform", 0.0, stats, steps)
    for mode in ("dense", "sparse"):
        result[mode] |= {"warmup_s": warm[mode], **memory[mode]}
    paired = [d / s for d, s in zip(result["dense"]["step_s"], result["sparse"]["step_s"], strict=True)]
    result["paired_speedups"] = paired
    result["paired_speedups_cpu"] = [
        d / s for d, s in zip(result["dense"]["cpu_s"], result["sparse"]["cpu_s"], strict=True)
    ]
    result["speedup"] = result["dense"]["median_step_s"] / result["sparse"]["median_step_s"]
    result["speedup_cpu"] = result["dense"]["median_cpu_s"] / result["sparse"]["median_cpu_s"]
    result["median_paired_speedup"] = median(paired)
    return result


def run_backbone(
    *,
    backbone: str,
    patch: int,
    batch: int,
    uniform_patch: int | None,
    uniform_batch: int,
    uniform_pairs: int,
    radii: list[float],
    repeats: int,
    dense_repeats: int,
    warmup: int,
    seed: int,
    logit_scale: float,
    threads: int | None,
    nf: int,
    num_cells: int,
    num_ups: int,
    memory_pairs: int = 0,
) -> dict[str, Any]:
    """Every worker of one backbone is started (in parallel) and built before the first timed step."""
    net_kwargs = {"seed": seed, "threads": threads, "backbone": backbone, "nf": nf, "num_cells": num_cells}
    net_kwargs |= {"num_ups": num_ups, "logit_scale": logit_scale}
    settings = {"lr_patch": patch, "batch": batch, "nf": nf, "num_cells": num_cells, "num_ups": num_ups}
    settings |= {"threads": threads, "repeats": repeats, "dense_repeats": dense_repeats, "warmup": warmup}
    settings["logit_scale"] = logit_scale
    run: dict[str, Any] = {"backbone": backbone, "settings": settings | {"seed": seed}}
    target = "bench.search_step:StepRunner"
    main_kwargs = net_kwargs | {"patch": patch, "batch": batch, "preload": PRELOAD}
    uniform_kwargs = net_kwargs | {"patch": uniform_patch, "batch": uniform_batch, "preload": PRELOAD}
    with contextlib.ExitStack() as stack:
        started = time.perf_counter()
        dense = stack.enter_context(Worker(target, sparse=False, logits="random", radius=radii[0], **main_kwargs))
        sparse = {
            r: stack.enter_context(Worker(target, sparse=True, logits="random", radius=r, **main_kwargs)) for r in radii
        }
        for worker in [dense, *sparse.values()]:
            worker.wait_ready()
        _log(f"[{backbone}] {1 + len(sparse)} workers built in {time.perf_counter() - started:.0f} s")
        run |= run_radii(
            backbone=backbone, dense=dense, sparse=sparse, repeats=repeats, dense_repeats=dense_repeats, warmup=warmup
        )
    if uniform_patch:  # built after the dense worker is gone: at most one dense-sized step resident at a time
        with contextlib.ExitStack() as stack:
            uniform = {
                mode: stack.enter_context(
                    Worker(target, sparse=mode == "sparse", logits="uniform", radius=0.0, **uniform_kwargs)
                )
                for mode in ("dense", "sparse")
            }
            for worker in uniform.values():
                worker.wait_ready()
            run["uniform"] = run_uniform(backbone=backbone, workers=uniform, pairs=uniform_pairs, warmup=warmup)
        run["uniform"]["settings"] = {"lr_patch": uniform_patch, "batch": uniform_batch, "pairs": uniform_pairs}
    if memory_pairs:
        memory_kwargs = net_kwargs | {"patch": patch, "batch": batch, "preload": PRELOAD}
        run["memory"] = run_memory(backbone=backbone, kwargs=memory_kwargs, pairs=memory_pairs, warmup=warmup)
    return run


RECOMPUTE_SHARE = 0.5  # `search_space.recompute_cells` of the third memory mode
MEMORY_MODES: dict[str, dict[str, Any]] = {
    "summed": {"summed": True},  # before: every pass's graph alive at one backward
    "one_graph": {},  # now: backward after each pass
    "recompute": {"recompute_cells": RECOMPUTE_SHARE},  # now, with half the cells recomputed in backward
}


def run_memory(*, backbone: str, kwargs: dict[str, Any], pairs: int, warmup: int) -> dict[str, Any]:
    """One graph alive (with and without recomputed cells) vs all of them: production steps against the
    summed-sandwich baseline.

    Dense execution at uniform logits, r = 0 (the most a step ever computes), fresh worker per mode
    so each peak RSS is that mode's; the modes' order alternates per round so load drifts hit all alike.
    """
    target = "bench.search_step:StepRunner"
    modes = list(MEMORY_MODES)
    _log(f"[{backbone}] memory: {', '.join(modes)}, {pairs} rounds")
    steps: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    with contextlib.ExitStack() as stack:
        workers = {
            mode: stack.enter_context(
                Worker(target, sparse=False, logits="uniform", radius=0.0, **MEMORY_MODES[mode], **kwargs)
            )
            for mode in modes
        }
        for worker in workers.values():
            worker.wait_ready()
        for mode, worker in workers.items():
            for _ in range(warmup):
                _timed(worker, f"{mode} warm-up")
        for i in range(pairs):
            for mode in modes if i % 2 == 0 else modes[::-1]:
                steps[mode].append(_timed(workers[mode], mode))
        memory = {mode: w.call("memory") for mode, w in workers.items()}
    result: dict[str, Any] = {"recompute_share": RECOMPUTE_SHARE}
    for mode in modes:
        times = _step_seconds(steps[mode])
        result[mode] = {
            "step_s": times,
            "median_step_s": median(times),
            "median_cpu_s": median([s["cpu_seconds"] for s in steps[mode]]),
            "losses": [steps[mode][0]["arch_loss"], steps[mode][0]["weight_loss"]],
            **memory[mode],
        }
    above = {mode: result[mode]["peak_rss_mib"] - result[mode]["base_rss_mib"] for mode in modes}
    for mode in ("one_graph", "recompute"):
        result[mode]["peak_ratio"] = above[mode] / above["summed"]
        result[mode]["time_ratio"] = result[mode]["median_cpu_s"] / result["summed"]["median_cpu_s"]
    return result


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.3g}"


def _sparsity_cells(s: dict[str, float]) -> list[str]:
    return [
        f"{s['op_weights_nonzero']:.0%}",
        f"{s['path_weights_nonzero']:.0%}",
        f"{s['cells_run']}/{s['cells_total']}",
        f"{s['op_evals_fraction']:.1%}",
    ]


def table(run: dict[str, Any]) -> str:
    """Markdown: the radius table, then the uniform-logits (worst case) row."""
    headers = ["radius", "non-zero op w", "non-zero path w", "cells run", "op evals", "dense step s (at this r)"]
    headers += ["sparse step s (median)", "speedup", "speedup (CPU time)", "sparse peak RSS MiB"]
    rows = []
    for c in run["configs"]:
        rows.append(
            [
                f"{c['radius']:g}",
                *_sparsity_cells(c["sparsity"]),
                ", ".join(_fmt_s(t) for t in c["dense"]["step_s"]),
                _fmt_s(c["sparse"]["median_step_s"]),
                f"**{c['speedup']:.1f}×**",
                f"{c['speedup_cpu']:.1f}×",
                f"{c['sparse']['peak_rss_mib']:.0f}",
            ]
        )
    dense = run["dense"]
    n_dense = sum(len(c["dense"]["step_s"]) for c in run["configs"])
    out = [
        markdown_table(headers, rows),
        "",
        f"Dense: median {_fmt_s(dense['pooled_median_step_s'])} s (CPU {_fmt_s(dense['pooled_median_cpu_s'])} s) over "
        f"its {n_dense} timed steps (dense work does not depend on r); peak RSS {dense['peak_rss_mib']:.0f} MiB. "
        "Speedup = that median / the sparse median (wall clock; CPU time: the same with process CPU seconds).",
    ]
    u = run.get("uniform")
    if u:
        us = u["settings"]
        headers = ["logits, r", "LR patch, batch", "non-zero op w", "non-zero path w", "cells run", "op evals"]
        headers += ["dense step s (median)", "sparse step s (median)", "speedup", "paired range", "speedup (CPU time)"]
        headers += ["peak RSS MiB d/s"]
        row = [
            "uniform (init), 0",
            f"{us['lr_patch']}×{us['lr_patch']}, {us['batch']}",
            *_sparsity_cells(u["sparsity"]),
            _fmt_s(u["dense"]["median_step_s"]),
            _fmt_s(u["sparse"]["median_step_s"]),
            f"**{u['speedup']:.3f}×**",
            f"{min(u['paired_speedups']):.2f}–{max(u['paired_speedups']):.2f}",
            f"{u['speedup_cpu']:.3f}×",
            f"{u['dense']['peak_rss_mib']:.0f} / {u['sparse']['peak_rss_mib']:.0f}",
        ]
        out += ["", markdown_table(headers, [row])]
    m = run.get("memory")
    if m:
        headers = ["step (dense, uniform logits, r = 0)", "peak RSS MiB", "above base MiB", "median step s", "CPU s"]
        rows = [
            [
                label,
                f"{m[mode]['peak_rss_mib']:.0f}",
                f"{m[mode]['peak_rss_mib'] - m[mode]['base_rss_mib']:.0f}",
                _fmt_s(m[mode]["median_step_s"]),
                _fmt_s(m[mode]["median_cpu_s"]),
            ]
            for mode, label in (
                ("summed", "summed sandwich (before)"),
                ("one_graph", "backward per pass (now)"),
                ("recompute", f"backward per pass, recompute_cells={m['recompute_share']}"),
            )
        ]
        out += ["", markdown_table(headers, rows), ""]
        out += [
            f"{mode}: memory above base **{m[mode]['peak_ratio']:.2f}×** of the summed sandwich, "
            f"CPU time {m[mode]['time_ratio']:.2f}×."
            for mode in ("one_graph", "recompute")
        ]
    return "\n".join(out)


def check_targets(run: dict[str, Any]) -> list[dict[str, Any]]:
    checks = []
    for c in run["configs"]:
        if c["radius"] == 1.0:
            checks.append(("sparse ≥ 10× faster at r = 1", c, SPEEDUP_TARGET_R1))
        elif c["radius"] == 0.0:
            checks.append(("sparse not slower at r = 0 (random logits)", c, SPEEDUP_TARGET_R0))
    if run.get("uniform"):
        checks.append(("sparse not slower at r = 0 (uniform logits: no zeros)", run["uniform"], SPEEDUP_TARGET_R0))
    return [
        {
            "target": what,
            "required": req,
            "speedup": c["speedup"],
            "verdict": _verdict(c["speedup"], c.get("paired_speedups"), req),
            "speedup_cpu": c["speedup_cpu"],
            "verdict_cpu": _verdict(c["speedup_cpu"], c.get("paired_speedups_cpu"), req),
        }
        for what, c, req in checks
    ]


def _verdict(speedup: float, paired: list[float] | None, required: float) -> str:
    """Verdict on a target: met; "equal within noise" when the median misses by under 5% and some
    dense/sparse pair reaches it (identical work, measured both ways round); else MISSED."""
    if speedup >= required:
        return "met"
    if paired and max(paired) >= required and speedup >= 0.95 * required:
        return "equal within noise"
    return "MISSED"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="~30 s smoke run: nf 16, 3 cells, LR 8x8, batch 1")
    parser.add_argument("--patch", type=int, help="LR patch side (default 32, AGD's; quick: 8)")
    parser.add_argument("--batch", type=int, help="batch size (default 3; quick: 1)")
    parser.add_argument("--nf", type=int, help="features (default 64; quick: 16); widths scale with it")
    parser.add_argument("--num-cells", type=int, help="cells per path (default 5; quick: 3)")
    parser.add_argument("--num-ups", type=int, default=2)
    parser.add_argument("--radii", type=float, nargs="+", help="sparsestmax radii (default 0 0.5 0.9 1; quick: 0 1)")
    parser.add_argument("--repeats", type=int, help="timed sparse steps per radius (default 3; quick: 2)")
    parser.add_argument("--dense-repeats", type=int, default=1, help="timed dense steps per radius (default 1)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per worker first (default 1)")
    parser.add_argument(
        "--uniform-patch", type=int, help="LR patch side of the uniform-logits row (default 8; 0 skips the row)"
    )
    parser.add_argument("--uniform-batch", type=int, default=1, help="batch of the uniform-logits row (default 1)")
    parser.add_argument("--uniform-pairs", type=int, help="dense/sparse step pairs of that row (default 6; quick: 2)")
    parser.add_argument(
        "--memory-pairs", type=int, help="rounds of the memory modes (summed, per pass, recomputed; default 2; 0 skips)"
    )
    parser.add_argument("--backbone", choices=("A", "B"), default="B")
    parser.add_argument("--with-a", action="store_true", help="also run backbone A at --a-patch / --a-batch")
    parser.add_argument("--a-patch", type=int, help="LR patch side of the backbone A run (default 8; quick: 4)")
    parser.add_argument("--a-batch", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--logit-scale", type=float, default=1.0, help="random logits ~ N(0, scale²) (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1; 0: torch's)")
    parser.add_argument("--out", type=Path, help="JSON path (default bench/results/search_step[_quick].json)")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "patch": 8 if quick else 32,
        "batch": 1 if quick else 3,
        "nf": 16 if quick else 64,
        "num_cells": 3 if quick else 5,
        "repeats": 2 if quick else 3,
        "uniform_patch": 8,
        "uniform_pairs": 2 if quick else 6,
        "memory_pairs": 1 if quick else 2,
        "a_patch": 4 if quick else 8,
        "out": RESULTS / ("search_step_quick.json" if quick else "search_step.json"),
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    started = time.perf_counter()
    common = {
        "radii": args.radii if args.radii else ([0.0, 1.0] if args.quick else [0.0, 0.5, 0.9, 1.0]),
        "repeats": args.repeats,
        "dense_repeats": args.dense_repeats,
        "warmup": args.warmup,
        "uniform_batch": args.uniform_batch,
        "uniform_pairs": args.uniform_pairs,
        "seed": args.seed,
        "logit_scale": args.logit_scale,
        "threads": args.threads or None,
        "nf": args.nf,
        "num_cells": args.num_cells,
        "num_ups": args.num_ups,
        "memory_pairs": args.memory_pairs,
    }
    runs = [
        run_backbone(
            backbone=args.backbone, patch=args.patch, batch=args.batch, uniform_patch=args.uniform_patch, **common
        )
    ]
    if args.with_a and args.backbone != "A":
        a_uniform = min(args.uniform_patch, args.a_patch) if args.uniform_patch else 0
        runs.append(
            run_backbone(backbone="A", patch=args.a_patch, batch=args.a_batch, uniform_patch=a_uniform, **common)
        )
    report = {
        "benchmark": "search_step",
        "command": " ".join(["python -m bench.search_step", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info() | {"threads_per_worker": runs[0]["dense"]["threads"]},
        "memory_method": "peak RSS (getrusage ru_maxrss) of the worker process: a fresh process per sparse radius and "
        "per mode of the uniform row; one dense process for all radii (dense work does not depend on r)",
        "step": {
            "sandwich": list(SANDWICH),
            "arch_adam": {"lr": ARCH_LR, "betas": list(ARCH_BETAS)},
            "weight_adam": {"lr": WEIGHT_LR},
            "flops_weight": FLOPS_WEIGHT,
        },
        "runs": runs,
        "targets": [check | {"backbone": run["backbone"]} for run in runs for check in check_targets(run)],
    }
    for run in runs:
        s = run["settings"]
        print(
            f"\n### Backbone {run['backbone']}: LR {s['lr_patch']}×{s['lr_patch']}, batch {s['batch']}, "
            f"nf {s['nf']}, {s['num_cells']} cells, random N(0, {s['logit_scale']:g}²) logits; "
            f"sparse median of {s['repeats']}, "
            f"{s['dense_repeats']} dense step(s) per radius, {s['warmup']} warm-up, "
            f"{s['threads'] or 'default'} thread(s)\n"
        )
        print(table(run))
    print()
    for check in report["targets"]:
        print(
            f"- [{check['backbone']}] {check['target']}: wall {check['speedup']:.3g}× → {check['verdict']}; "
            f"CPU time {check['speedup_cpu']:.3g}× → {check['verdict_cpu']}"
        )
    configs = [c for run in runs for c in [*run["configs"], run.get("uniform")] if c]
    print(f"- max |loss(sparse) − loss(dense)| over all steps: {max(c['max_abs_loss_diff'] for c in configs):.2e}")
    report["wall_s"] = time.perf_counter() - started
    print(f"- wall time {report['wall_s']:.0f} s; JSON: {args.out}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
