"""Fixed cost of orchestration per trial: the same stages in one plain process vs as a whole tracked trial.

One run measures, side by side on the same tiny plan (built-in data, 2-cell supernet):
- `direct`: the trial's three training stages run by `workers.stages.run_stages` in this process
  (`LocalStageIO`: rows in memory, checkpoints on local disk), the baseline: the bare loops;
- `trial`: the same experiment as a one-trial sweep: Tune trial, its Train run(s) (TorchTrainer,
  Ray Data, checkpoints on storage), the live metrics relay, MLflow tracking, evaluate, model logging.
The fixed overhead of a trial is `trial - direct`; its share at 5-minute stages is
overhead / (3 × 300 s + overhead). It also counts the Train runs the trial started (one per group of
stages sharing a worker count; one for the usual plan). Ray's start-up is reported separately.

    python bench/orchestration.py [--quick]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/orchestration.py` (the Makefile's `make bench`)
    sys.path.insert(0, str(ROOT))

STAGE_MINUTES = 5.0
STAGES = 3


def _overrides(steps: int) -> list[str]:
    return [
        "search_space.num_cells=2",
        "stages.val_max_images=1",
        "stages.pretrain.epochs=1",
        f"stages.pretrain.steps_per_epoch={steps}",
        "stages.search.epochs=1",
        f"stages.search.steps_per_epoch={steps}",
        "stages.train.epochs=1",
        f"stages.train.steps_per_epoch={steps}",
    ]


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (smoke run)")
    parser.add_argument("--out", default="bench/results/orchestration.json")
    args = parser.parse_args()
    steps = 2 if args.quick else 8

    import ray
    import torch

    from orchestrator.experiment import load_experiment, trials
    from orchestrator.plan import plan_trial, resolve_data
    from orchestrator.sweep import run_sweep
    from orchestrator.train_run import local_io
    from workers.stages import run_stages

    torch.set_num_threads(1)  # as a Train worker with cpus_per_worker < 2 runs
    root = Path(tempfile.mkdtemp(prefix="trilevel-bench-"))
    experiment = load_experiment(
        "table8",
        "tiny",
        [*_overrides(steps), "sweep={}"],
        name="bench",
        storage=str(root / "sweeps"),
        **{"tracking.uri": f"sqlite:///{root}/mlflow.db"},
    )
    # direct: the same trial's stages in this process, outputs under a storage of their own
    direct_storage = str(root / "direct")
    plan = plan_trial(trials(experiment)[0], resolve_data(experiment, direct_storage), direct_storage, "bench")
    direct = 0.0
    for run in plan.runs:
        io = local_io(run, experiment.data.scale)
        direct += _time(lambda run=run, io=io: run_stages(run.settings, io))

    from orchestrator.cluster import LOCAL_RAY_ENV

    os.environ.update(LOCAL_RAY_ENV)
    ray_start = _time(lambda: ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False))
    trial = _time(lambda: run_sweep(experiment))
    ray.shutdown()
    snapshots = root / "sweeps" / "bench" / "stages" / "*" / "run-*" / "checkpoint_manager_snapshot.json"
    train_runs = glob.glob(str(snapshots))

    overhead = trial - direct
    stages_s = STAGES * STAGE_MINUTES * 60
    result = {
        "ray_start_s": ray_start,
        "direct_s": direct,
        "trial_s": trial,
        "trial_overhead_s": overhead,
        "share_at_5min_stages": overhead / (stages_s + overhead),
        "train_runs_per_trial": len(train_runs),
        "steps_per_stage": steps,
        "cpus": os.cpu_count(),
    }
    print(f"Ray start-up: {ray_start:.1f} s")
    print("| what | seconds |")
    print("|---|---|")
    print(f"| 3 stages in one process (direct, the baseline) | {direct:.1f} |")
    print(f"| the same as a tracked one-trial sweep | {trial:.1f} |")
    print(f"| fixed overhead of the trial | {overhead:.1f} |")
    print(
        f"Train runs started by the trial: {len(train_runs)}; overhead share of a trial with "
        f"{STAGE_MINUTES:.0f}-minute stages: {result['share_at_5min_stages']:.1%}"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
