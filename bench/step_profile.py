"""Benchmark: where a `small` pretrain / search step spends its CPU time, and a change's effect on it as a ratio.

`small` (table8: backbone A, 2 cells, nf 16, patch 24; pretrain batch 4, search batch 3) on one CPU
thread, the production steps (`workers.search_step.pretrain_step` / `search_step`) on the stage
settings the `small` plan gives (its supernet config, losses, clipping, λ), on seeded random patches.

- `--profile`: torch.profiler over `--steps` steps of each kind after one warm-up step; prints the top
  ops by self CPU time (the table in BENCHMARKS.md).
- `--baseline REV`: this tree vs that commit (git archive into a temp dir), each step kind timed in
  fresh processes that alternate A, B, A, B … `--rounds` times (the machine is shared: both variants
  see the same load), CPU seconds of a step (`time.process_time`, one thread; the fastest of a process's
  `--steps`, the least disturbed by other work) compared as the median of the per-round ratios. Each
  process also hashes every parameter (and the Adam state) after its steps: equal hashes in both
  trees prove the change result-neutral bit for bit. `--now REV` measures a commit instead of this tree.
  Each process then counts one more step's tensor allocations (the profiler's, op by op): exact where the
  time is noisy; and its peak RSS above what it held before its first step.

    PYTHONPATH=$PWD python -m bench.step_profile --profile
    PYTHONPATH=$PWD python -m bench.step_profile --baseline HEAD~1 --rounds 5
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("pretrain", "search")


# --- inside a worker process (the code tree under test is first on sys.path) -----------------------
def _setup(kind: str, storage: str) -> dict[str, Any]:
    import dataclasses

    import torch

    from orchestrator.experiment import load_experiment, trials
    from orchestrator.plan import plan_trial, resolve_data
    from search_space.supernet import Supernet

    experiment = load_experiment("table8", "small", ["data.val={}"], storage=storage, name="bench-profile")
    (run,) = plan_trial(trials(experiment)[0], resolve_data(experiment, storage), storage, experiment.name).runs
    settings = next(s for s in run.settings.stages if s.stage == kind)
    torch.manual_seed(settings.seed)
    net = Supernet(settings.supernet)
    if kind == "pretrain":
        net.set_radius(0.0)
        for p in net.arch_parameters():
            p.requires_grad_(False)
    data = torch.Generator().manual_seed(1)
    batch, patch, scale = settings.optim.batch_size, settings.patch, experiment.data.scale

    def pair() -> tuple[Any, Any]:
        lr = torch.rand(batch, 3, patch, patch, generator=data)
        return lr, torch.rand(batch, 3, patch * scale, patch * scale, generator=data)

    return {
        "settings": dataclasses.replace(settings, vgg_weights=None),
        "net": net,
        "batches": [(pair(), pair()) for _ in range(8)],
    }


def _stepper(state: dict[str, Any], kind: str) -> Any:
    import torch

    import workers.search_step as steps
    from workers.losses import content_loss

    s, net = state["settings"], state["net"]
    gen = torch.Generator().manual_seed(2)
    weight_opt = torch.optim.Adam(net.weight_parameters(), lr=s.optim.lr)
    state["optimizers"] = [weight_opt]
    if kind == "pretrain":

        def step(i: int) -> None:
            (lr, hr), _ = state["batches"][i % len(state["batches"])]
            steps.pretrain_step(net, weight_opt, lr, hr, content_loss, gen, s.optim.grad_clip)

        return step
    cfg = s.search
    arch_opt = torch.optim.Adam(net.arch_parameters(), lr=cfg.arch_lr, betas=cfg.arch_betas, weight_decay=0.0)
    state["optimizers"].append(arch_opt)
    flops = steps.FlopsController(cfg.lambda_flops, cfg.flops_target, cfg.flops_band, cfg.flops_interval)
    full_paths = net.tree.full_paths

    def step(i: int) -> None:
        batch_w, batch_a = state["batches"][i % len(state["batches"])]
        net.set_radius(steps.radius_at(i, 40, cfg.radius_start, cfg.radius_end))
        steps.search_step(
            net, weight_opt, arch_opt, batch_w, batch_a, content_loss, gen,
            flops=flops, lambda_order=cfg.lambda_order, full_paths=full_paths, grad_clip=s.optim.grad_clip,
            freeze=cfg.ssn_freeze,
        )  # fmt: skip

    return step


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _allocations(step: Any, i: int) -> dict[str, float]:
    """Tensor allocations of one step (count and MiB), from the profiler's memory events: exact, unlike time."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        step(i)
    sizes = [e.self_cpu_memory_usage for e in prof.events() if e.self_cpu_memory_usage > 0]  # op by op
    return {"allocations": len(sizes), "allocated_mib": sum(sizes) / 2**20}


def _digest(state: dict[str, Any]) -> str:
    import torch

    h = hashlib.sha256()
    tensors = dict(state["net"].state_dict())
    for i, opt in enumerate(state["optimizers"]):
        for j, per_param in opt.state_dict()["state"].items():
            tensors |= {f"opt{i}.{j}.{k}": v for k, v in per_param.items() if isinstance(v, torch.Tensor)}
    for name, t in sorted(tensors.items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def worker(kind: str, steps: int, profile: bool) -> dict[str, Any]:
    """CPU seconds per step (after one warm-up step), the parameter hash, and (profile) the top ops."""
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as storage:
        state = _setup(kind, storage)
    step = _stepper(state, kind)
    base_mib = _rss_mib()
    step(0)
    out: dict[str, Any] = {}
    if profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for i in range(1, steps + 1):
                step(i)
        total = sum(e.self_cpu_time_total for e in prof.key_averages())
        top = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
        out["top"] = [
            {
                "op": e.key,
                "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
                "share": e.self_cpu_time_total / total,
            }
            for e in top
        ]
        out["calls_per_step"] = {e.key: e.count / steps for e in top}
    else:
        times = []
        for i in range(1, steps + 1):
            start = time.process_time()
            step(i)
            times.append(time.process_time() - start)
        out["cpu_s_per_step"] = min(times)  # the least disturbed step: the machine is shared
        out["cpu_s_steps"] = times
        out["peak_above_base_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_mib
        out |= _allocations(step, steps + 1)
    return out | {"digest": _digest(state)}


# --- the driver -------------------------------------------------------------------------------------
def _run_tree(root: Path, kind: str, steps: int, profile: bool) -> dict[str, Any]:
    code = (
        f"import sys, json; sys.path.insert(0, {str(root)!r}); sys.path.insert(1, {str(ROOT / 'bench')!r});"
        f"import step_profile; print(json.dumps(step_profile.worker({kind!r}, {steps}, {profile})))"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"{root} {kind}: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _baseline_tree(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true", help="print the top ops of each step kind")
    parser.add_argument("--baseline", help="git revision to compare with (e.g. the commit before a change)")
    parser.add_argument("--now", help="git revision to measure instead of this working tree")
    parser.add_argument("--rounds", type=int, default=5, help="A/B rounds per step kind (with --baseline)")
    parser.add_argument("--steps", type=int, default=3, help="timed (or profiled) steps per process")
    parser.add_argument("--kinds", default=",".join(KINDS), help="pretrain,search")
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    report: dict[str, Any] = {}
    if args.profile:
        for kind in kinds:
            result = _run_tree(ROOT, kind, args.steps, profile=True)
            report[kind] = result
            print(f"\n{kind} (small, table8), top ops by self CPU time over {args.steps} steps:")
            print("| op | self ms / step | share | calls / step |\n|---|---|---|---|")
            for row in result["top"]:
                calls = result["calls_per_step"][row["op"]]
                print(f"| `{row['op']}` | {row['self_ms_per_step']:.0f} | {row['share']:.1%} | {calls:.0f} |")
    if args.baseline:
        with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as tmp_now:
            base = _baseline_tree(args.baseline, Path(tmp))
            tree = _baseline_tree(args.now, Path(tmp_now)) if args.now else ROOT
            print("| step | rounds | CPU s/step before (median) | now (median) | before/now (median of rounds; "
                  "min-max) | MiB allocated per step before / now | allocations before / now | peak RSS above "
                  "base MiB before / now (median) | same parameters and Adam state |\n"
                  "|---|---|---|---|---|---|---|---|---|")  # fmt: skip
            for kind in kinds:
                pairs = []
                for _ in range(args.rounds):
                    before = _run_tree(base, kind, args.steps, profile=False)
                    now = _run_tree(tree, kind, args.steps, profile=False)
                    print(f"  {kind}: before {before['cpu_s_steps']}, now {now['cpu_s_steps']}", file=sys.stderr)
                    pairs.append((before, now))
                ratios = [b["cpu_s_per_step"] / n["cpu_s_per_step"] for b, n in pairs]
                ratio = statistics.median(ratios)
                same = all(b["digest"] == n["digest"] for b, n in pairs)
                b_med = statistics.median(b["cpu_s_per_step"] for b, _ in pairs)
                n_med = statistics.median(n["cpu_s_per_step"] for _, n in pairs)
                report[kind] = {"pairs": pairs, "ratio": ratio, "same": same}
                b0, n0 = pairs[0]
                print(
                    f"| {kind} | {args.rounds} | {b_med:.3f} | {n_med:.3f} | {ratio:.2f} ({min(ratios):.2f}-"
                    f"{max(ratios):.2f}) | {b0['allocated_mib']:.0f} / {n0['allocated_mib']:.0f} | "
                    f"{b0['allocations']} / {n0['allocations']} | "
                    f"{statistics.median(b['peak_above_base_mib'] for b, _ in pairs):.0f} / "
                    f"{statistics.median(n['peak_above_base_mib'] for _, n in pairs):.0f} | {'yes' if same else 'NO'} |"
                )
    return report


if __name__ == "__main__":
    main()
