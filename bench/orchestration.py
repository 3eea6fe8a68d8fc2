"""Fixed cost of orchestration: the same stages in one plain process vs as tracked sweeps, as users run them.

One run measures, side by side on the same tiny plan (built-in data, 2-cell supernet):
- `direct`: one trial's three training stages run by `workers.stages.run_stages` in this process
  (`LocalStageIO`: rows in memory, checkpoints on local disk), the baseline: the bare loops;
- `sweep of 1` and `sweep of 2`: `trilevel sweep` (a fresh driver process, as a user starts it) of
  one trial and of two (two seeds, one after the other), on a Ray instance started before: driver,
  Tune trials, their runs of stages, the live metrics relay, MLflow tracking, evaluate, model logging.
A trial's fixed overhead is what one more trial adds beyond its stages (`sweep of 2 - sweep of 1 -
direct`); a sweep's is what is left of the one-trial sweep (driver start-up, imports, Tune). The share
at 5-minute stages is overhead / (3 × 300 s + overhead). It also counts the runs of stages a trial
made (one per group of stages sharing a worker count; one for the usual plan): Ray Train runs, and
one-worker runs in the trial's own process (none start Ray Train); `--with-train` measures the same
sweeps with every run a TorchTrainer run (`resources.single_worker_in_trial=false`) beside them.
Ray's start-up and the creation of the MLflow store (once per store, before the first sweep) are
reported separately.

    python bench/orchestration.py [--quick] [--with-train]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
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


def _sweep(name: str, trials: int, steps: int, root: Path, uri: str, address: str, *extra: str) -> None:
    """`trilevel sweep` of `trials` trials (seeds) in a fresh process, on the running Ray."""
    command = [sys.executable, "-m", "orchestrator", "sweep", "table8", "--scale", "tiny", "--name", name]
    axis = "{seed: [" + ", ".join(str(seed) for seed in range(trials)) + "]}"
    for item in [*_overrides(steps), f"sweep={axis}", "resources.max_concurrent_trials=1", *extra]:  # in turn
        command += ["--set", item]
    command += ["--storage", str(root / "sweeps"), "--tracking-uri", uri, "--address", address]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"the sweep of {trials} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (smoke run)")
    parser.add_argument("--out", default="bench/results/orchestration.json")
    parser.add_argument(
        "--with-train", action="store_true", help="also measure trials whose one-worker runs start Ray Train"
    )
    args = parser.parse_args()
    steps = 2 if args.quick else 8

    import ray
    import torch

    from orchestrator.experiment import load_experiment, trials
    from orchestrator.plan import plan_trial, resolve_data
    from orchestrator.train_run import local_io
    from workers.stage_io import CHECKPOINT_LIST
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
    from orchestrator.tracking import Tracker

    os.environ.update(LOCAL_RAY_ENV)
    ray_start = _time(
        lambda: ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
    )
    uri = experiment.tracking.uri
    store_creation = _time(lambda: Tracker.check_reachable(uri))  # as before any user's first sweep
    address = ray.get_runtime_context().gcs_address
    sweeps = {n: _time(lambda n=n: _sweep(f"bench{n}", n, steps, root, uri, address)) for n in (1, 2)}
    train = {}  # the same with every run of stages a TorchTrainer run (as before runs went in process)
    if args.with_train:
        off = "resources.single_worker_in_trial=false"
        train = {n: _time(lambda n=n: _sweep(f"train{n}", n, steps, root, uri, address, off)) for n in (1, 2)}
    ray.shutdown()
    runs = root / "sweeps" / "bench2" / "stages" / "*" / "run-*"
    train_runs = glob.glob(str(runs / "checkpoint_manager_snapshot.json"))  # TorchTrainer runs keep Train's list
    in_trial_runs = glob.glob(str(runs / CHECKPOINT_LIST))  # runs in a trial's process keep ours

    per_trial = sweeps[2] - sweeps[1] - direct
    per_sweep = sweeps[1] - direct - per_trial
    stages_s = STAGES * STAGE_MINUTES * 60
    result = {
        "ray_start_s": ray_start,
        "tracking_store_creation_s": store_creation,
        "direct_s": direct,
        "sweep_of_1_s": sweeps[1],
        "sweep_of_2_s": sweeps[2],
        "trial_overhead_s": per_trial,
        "sweep_overhead_s": per_sweep,
        "share_at_5min_stages": per_trial / (stages_s + per_trial),
        "one_trial_sweep_share_at_5min_stages": (sweeps[1] - direct) / (stages_s + sweeps[1] - direct),
        "train_runs_per_trial": len(train_runs) / 2,
        "in_trial_runs_per_trial": len(in_trial_runs) / 2,
        "steps_per_stage": steps,
        "train_sweep_of_1_s": train.get(1),
        "train_sweep_of_2_s": train.get(2),
        "train_trial_overhead_s": train[2] - train[1] - direct if train else None,
        "cpus": os.cpu_count(),
    }
    print(f"Ray start-up: {ray_start:.1f} s; creating the MLflow store (once per store): {store_creation:.1f} s")
    print("| what | seconds |")
    print("|---|---|")
    print(f"| 3 stages in one process (direct, the baseline) | {direct:.1f} |")
    print(f"| `trilevel sweep` of 1 trial | {sweeps[1]:.1f} |")
    print(f"| `trilevel sweep` of 2 trials | {sweeps[2]:.1f} |")
    print(f"| fixed overhead of a trial (2 trials - 1 trial - direct) | {per_trial:.1f} |")
    print(f"| fixed overhead of a sweep (1 trial - direct - a trial's) | {per_sweep:.1f} |")
    if train:
        print(f"| `trilevel sweep` of 1 trial, every run a TorchTrainer run | {train[1]:.1f} |")
        print(f"| `trilevel sweep` of 2 trials, every run a TorchTrainer run | {train[2]:.1f} |")
        print(f"| fixed overhead of a trial, TorchTrainer runs | {result['train_trial_overhead_s']:.1f} |")
    print(
        f"Per trial: Ray Train runs {result['train_runs_per_trial']:g}, runs in its own process "
        f"{result['in_trial_runs_per_trial']:g}. Overhead share of a trial with {STAGE_MINUTES:.0f}-minute stages: "
        f"{result['share_at_5min_stages']:.1%} (a one-trial sweep, all its overhead: "
        f"{result['one_trial_sweep_share_at_5min_stages']:.1%})"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
