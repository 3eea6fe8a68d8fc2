"""Fixed cost of orchestration per stage: the same stage loop direct vs as a TorchTrainer run vs in a Tune trial.

One run measures, for each training stage of a tiny pipeline on the built-in data:
- `direct`: the stage loop in this process (Ray Train V2 local mode, `num_workers=0`), the baseline;
- `train`: the same loop and config through `run_stage` (TorchTrainer, one worker, checkpoints on storage);
- `trial`: the three stages chained by the orchestrator's trial inside a Tune trial, with MLflow tracking.
The overhead per stage is `train - direct` (and `trial / 3 - direct` on average); its share at a
5-minute stage is overhead / (300 s + overhead). Ray's start-up is reported separately.

    python bench/orchestration.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

STAGE_MINUTES = 5.0


def _stage_configs(demo: str, steps: int) -> dict[str, dict]:
    from search_space.genotype import load_genotype

    common = {
        "seed": 0,
        "batch_size": 2,
        "patch": 16,
        "supernet": {"nf": 16, "widths": [8, 12, 16], "num_cells": 3},
        "val_path": f"{demo}/val",
        "val_max_images": 1,
    }
    tiny = load_genotype("trilevel-b-aim").to_dict()
    return {
        "pretrain": common | {"optim": {"epochs": 1, "steps_per_epoch": steps}},
        "search": common | {"optim": {"epochs": 1, "steps_per_epoch": steps}},
        # a fixed genotype from scratch, so each stage runs alone (local mode keeps no checkpoints to chain)
        "train": common | {"optim": {"epochs": 1, "steps_per_epoch": steps}, "genotype": tiny, "from_search": False},
    }


def _run_local(stage: str, config: dict, datasets: dict, storage: str) -> None:
    """The stage loop in this process: Train V2 local mode (no worker group, no checkpoint upload)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from workers.stages import LOOPS

    TorchTrainer(
        LOOPS[stage],
        train_loop_config=config | {"stage": stage},
        scaling_config=ray.train.ScalingConfig(num_workers=0),
        run_config=ray.train.RunConfig(name=f"direct/{stage}", storage_path=storage),
        datasets=datasets,
    ).fit()


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (smoke run)")
    parser.add_argument("--out", default="bench/results/orchestration.json")
    args = parser.parse_args()
    steps = 2 if args.quick else 6

    import ray

    from orchestrator.experiment import load_experiment
    from orchestrator.sweep import run_sweep
    from workers.shards import write_demo_dataset
    from workers.stage_runner import run_stage, stage_datasets

    root = Path(tempfile.mkdtemp(prefix="trilevel-bench-"))
    demo = str(root / "demo")
    write_demo_dataset(demo)
    ray_start = _time(lambda: ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False))
    configs = _stage_configs(demo, steps)
    rows = {}
    storage = str(root / "runs")
    for stage, config in configs.items():
        begin = time.perf_counter()
        _run_local(stage, config, stage_datasets(stage, f"{demo}/train", 4), storage)
        direct = time.perf_counter() - begin
        begin = time.perf_counter()
        run_stage(
            stage,
            config,
            name=f"train/{stage}",
            storage_path=storage,
            datasets=stage_datasets(stage, f"{demo}/train", 4),
            num_workers=1,
        )
        train = time.perf_counter() - begin
        rows[stage] = {"direct_s": direct, "train_s": train, "overhead_s": train - direct}
    experiment = load_experiment(
        "psnr-b",
        "tiny",
        [
            f"stages.pretrain.steps_per_epoch={steps}",
            f"stages.search.steps_per_epoch={steps}",
            "stages.search.epochs=1",
            f"stages.train.steps_per_epoch={steps}",
            "search_space.num_cells=3",
        ],
        name="bench",
        storage=str(root / "sweeps"),
        **{"tracking.uri": f"sqlite:///{root}/mlflow.db"},
    )
    trial = _time(lambda: run_sweep(experiment))
    ray.shutdown()

    direct_total = sum(r["direct_s"] for r in rows.values())
    per_stage_trial = (trial - direct_total) / len(rows)
    result = {
        "ray_start_s": ray_start,
        "stages": rows,
        "trial_total_s": trial,
        "trial_overhead_per_stage_s": per_stage_trial,
        "share_at_5min_stage_train": max(r["overhead_s"] for r in rows.values())
        / (STAGE_MINUTES * 60 + max(r["overhead_s"] for r in rows.values())),
        "share_at_5min_stage_trial": per_stage_trial / (STAGE_MINUTES * 60 + per_stage_trial),
        "steps_per_stage": steps,
        "cpus": os.cpu_count(),
    }
    print(f"Ray start-up: {ray_start:.1f} s")
    print("| stage | direct (s) | TorchTrainer (s) | overhead (s) |")
    print("|---|---|---|---|")
    for stage, r in rows.items():
        print(f"| {stage} | {r['direct_s']:.1f} | {r['train_s']:.1f} | {r['overhead_s']:.1f} |")
    print(
        f"Whole trial (Tune + 3 TorchTrainer runs + evaluate + MLflow): {trial:.1f} s; "
        f"overhead per stage vs direct: {per_stage_trial:.1f} s"
    )
    print(
        f"Overhead share at a {STAGE_MINUTES:.0f}-minute stage: TorchTrainer "
        f"{result['share_at_5min_stage_train']:.1%}, full trial {result['share_at_5min_stage_trial']:.1%}"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
