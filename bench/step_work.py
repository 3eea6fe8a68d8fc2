"""Benchmark: kernel launches and host-device syncs of one pretrain / search step, today vs a baseline.

Why counts, not seconds: no GPU is lent to us and the CPU box is shared, so timings are noise; what
costs a GPU step its time at small shapes is launches (each ~5-10 µs of CPU issue time) and syncs
(each drains the queue). Both are counted on the CPU, where they are exact properties of the code:

- **launches**: leaf aten ops under the torch profiler (ops with no aten op below them), without
  the metadata-only ones (views, reshapes, empty allocations) that launch no kernel on a GPU. The
  optimiser's ops are counted apart: on the CPU Adam and clipping loop over parameters, on CUDA
  they take the multi-tensor (foreach) path with a few launches.
- **syncs**: host reads of tensor values (`item`, `tolist`, `bool`, `float`, `int`, `cpu`, `numpy`),
  caught by a `TorchFunctionMode` with their call site. On a GPU each read of a device tensor is a
  host-device sync. Reads of host-only tensors (a CPU generator's draw) are counted too: an upper bound.

Protocol: the paper supernet (backbone B, nf 64, 5 cells: 55 nodes, 35 cells), LR 8×8, batch 1
(counts do not depend on the patch), architecture logits N(0, 1) from one seed, one step from the
same state in both code trees, each in a fresh process with only that tree on `sys.path`. The step is
production's (`workers.search_step`). Each tree also hashes every parameter after the step: equal
hashes prove the change result-neutral bit for bit at these shapes.

    python -m bench.step_work --baseline 2ae30ae   # this tree vs that commit (git archive into a temp dir)
    python -m bench.step_work                      # this tree alone

Prints a Markdown table and writes `bench/results/step_work.json`.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import subprocess
import sys
import tempfile
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

#: Aten ops that only make views, allocate or inspect: no kernel launch on a GPU.
METADATA_OPS = frozenset(
    "aten::" + name
    for name in [
        "view",
        "as_strided",
        "slice",
        "select",
        "t",
        "transpose",
        "expand",
        "permute",
        "unsqueeze",
        "squeeze",
        "reshape",
        "alias",
        "detach",
        "detach_",
        "_unsafe_view",
        "empty",
        "empty_strided",
        "empty_like",
        "resolve_conj",
        "resolve_neg",
        "lift_fresh",
        "result_type",
        "is_nonzero",
        "unbind",
        "split",
        "chunk",
        "narrow",
        "movedim",
        "numpy_T",
        "_reshape_alias",
        "view_as",
        "expand_as",
        "set_",
        "is_same_size",
        "_has_compatible_shallow_copy_type",
        "unfold",
        "diagonal",
    ]
)
HOST_READS = frozenset({"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy"})
#: Adam's step counters live on the host unless `capturable`/`fused`: reading them is no sync on CUDA.
OPTIMIZER_READS = "optimizer (host step counters, no sync on CUDA; not counted)"
CASES = (  # (name, step kind, loss, radius)
    ("pretrain, content loss", "pretrain", "content", 0.0),
    ("search r=0.5, content loss", "search", "content", 0.5),
    ("search r=0.5, perceptual loss", "search", "perceptual", 0.5),
    ("search r=0.95 (late), perceptual loss", "search", "perceptual", 0.95),
)


# --- inside a worker process (the code tree under test is first on sys.path) -----------------------
def _setup(kind: str, loss: str, radius: float) -> dict[str, Any]:
    import torch

    from search_space.supernet import Supernet, SupernetConfig
    from workers.losses import PerceptualLoss, content_loss
    from workers.vgg import VGG19Features

    torch.manual_seed(0)
    net = Supernet(SupernetConfig())
    with torch.no_grad():
        for p in net.arch_parameters():
            p.copy_(torch.randn(p.shape))
    net.set_radius(radius)
    if kind == "pretrain":
        for p in net.arch_parameters():
            p.requires_grad_(False)
    loss_fn = content_loss if loss == "content" else PerceptualLoss(VGG19Features().eval())
    data = torch.Generator().manual_seed(1)
    batches = [(torch.rand(1, 3, 8, 8, generator=data), torch.rand(1, 3, 32, 32, generator=data)) for _ in range(2)]
    return {"net": net, "loss_fn": loss_fn, "batches": batches}


def _step(state: dict[str, Any], kind: str) -> None:
    import torch

    import workers.search_step as steps

    net, loss_fn, batches = state["net"], state["loss_fn"], state["batches"]
    gen = torch.Generator().manual_seed(2)
    weight_opt = torch.optim.Adam(net.weight_parameters(), lr=1e-4)
    if kind == "pretrain":
        if hasattr(steps, "pretrain_step"):
            steps.pretrain_step(net, weight_opt, *batches[0], loss_fn, gen, 5.0)
        else:  # the baseline's pretrain loop body (workers/stages.py before pretrain_step existed)
            weight_opt.zero_grad(set_to_none=True)
            steps.sandwich_backward(net, *batches[0], steps.PRETRAIN_WIDTHS, loss_fn, gen)
            steps.optimizer_step(weight_opt, net.weight_parameters(), 5.0)
        return
    arch_opt = torch.optim.Adam(net.arch_parameters(), lr=3e-4, betas=(0.5, 0.999))
    flops = steps.FlopsController(1e-20, None, (0.25, 1.0), 20)
    steps.search_step(
        net, weight_opt, arch_opt, batches[0], batches[1], loss_fn, gen,
        flops=flops, lambda_order=0.01, full_paths=net.tree.full_paths, grad_clip=5.0,
    )  # fmt: skip


def _launches(state: dict[str, Any], kind: str) -> dict[str, int]:
    return count_launches(lambda: _step(state, kind))


def count_launches(step: Any) -> dict[str, int]:
    """Leaf aten ops of one call of `step` (views and allocations left out), the optimizer's counted apart."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    events = prof.events()
    counts = {"launches": 0, "optimizer_launches": 0}
    for event in events:
        if not event.name.startswith("aten::") or event.name in METADATA_OPS:
            continue
        if any(child.name.startswith("aten::") for child in event.cpu_children):
            continue
        in_optimizer, parent = False, event.cpu_parent
        while parent is not None:
            if parent.name.startswith("Optimizer.step") or "clip_grad" in parent.name:
                in_optimizer = True
                break
            parent = parent.cpu_parent
        counts["optimizer_launches" if in_optimizer else "launches"] += 1
    return counts


def _syncs(state: dict[str, Any], kind: str) -> tuple[int, dict[str, int]]:
    from torch.overrides import TorchFunctionMode

    sites: Counter[str] = Counter()

    class HostReads(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") in HOST_READS:
                stack = traceback.extract_stack()[:-1]
                if any("torch/optim" in f.filename or "clip_grad" in f.filename for f in stack):
                    where = OPTIMIZER_READS
                else:
                    ours = [f for f in stack if "/search_space/" in f.filename or "/workers/" in f.filename]
                    frame = ours[-1] if ours else stack[-1]
                    where = f"{Path(frame.filename).name}:{frame.name}"
                sites[where] += 1
            return func(*args, **(kwargs or {}))

    with HostReads():
        _step(state, kind)
    optimizer = sites.pop(OPTIMIZER_READS, 0)
    return sum(sites.values()), dict(sites.most_common()) | ({OPTIMIZER_READS: optimizer} if optimizer else {})


def _digest(state: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for name, p in sorted(state["net"].state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def worker(kind: str, loss: str, radius: float) -> dict[str, Any]:
    """Counts and the parameter hash of one step in this process's code tree."""
    import torch

    torch.set_num_threads(1)
    fresh = _setup(kind, loss, radius)
    first = copy.deepcopy(fresh)
    counts = _launches(first, kind)
    second = copy.deepcopy(fresh)
    syncs, sites = _syncs(second, kind)
    return counts | {"syncs": syncs, "sync_sites": sites, "digest": _digest(first), "digest2": _digest(second)}


# --- the driver -------------------------------------------------------------------------------------
def _run_tree(root: Path, kind: str, loss: str, radius: float) -> dict[str, Any]:
    code = (
        f"import sys, json; sys.path.insert(0, {str(root)!r}); sys.path.insert(1, {str(ROOT / 'bench')!r});"
        f"import step_work; print(json.dumps(step_work.worker({kind!r}, {loss!r}, {radius!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONPATH": "", **_env()}
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _baseline_tree(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="git revision to compare with (e.g. the commit before a change)")
    parser.add_argument("--cases", type=int, default=len(CASES), help="run only the first N cases (smoke)")
    args = parser.parse_args(argv)
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        base = _baseline_tree(args.baseline, Path(tmp)) if args.baseline else None
        for name, kind, loss, radius in CASES[: args.cases]:
            now = _run_tree(ROOT, kind, loss, radius)
            before = _run_tree(base, kind, loss, radius) if base else None
            results.append({"case": name, "now": now, "baseline": before})
            row = [name, now["launches"], now["optimizer_launches"], now["syncs"]]
            if before:
                row[1:1] = [before["launches"]]
                row[3:3] = [before["optimizer_launches"]]
                row[5:5] = [before["syncs"]]
                row += [f"{before['launches'] / now['launches']:.2f}", f"{before['syncs'] / max(1, now['syncs']):.1f}"]
                row += ["yes" if before["digest"] == now["digest"] == now["digest2"] else "NO"]
            rows.append(row)
    head = ["step", "launches", "optimizer launches", "host reads (syncs)"]
    if args.baseline:
        head = [
            "step", "launches before", "launches now", "optimizer before", "optimizer now",
            "syncs before", "syncs now", "launches ×", "syncs ×", "same parameters after",
        ]  # fmt: skip
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    for result in results:
        print(f"\n{result['case']}: host reads now by site: {result['now']['sync_sites']}")
        if result["baseline"]:
            print(f"  before: {result['baseline']['sync_sites']}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {"baseline": args.baseline, "results": results}
    if args.cases == len(CASES):
        (RESULTS / "step_work.json").write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
