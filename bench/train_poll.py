"""Fixed cost of one TorchTrainer stage run at Ray Train's default controller poll (2 s) vs ours (0.5 s).

Ray Train V2's controller polls its workers every `RAY_TRAIN_HEALTH_CHECK_INTERVAL_S` (default
2.0 s); a stage waits on several polls (workers up, each report, finished). `trilevel` sets 0.5 s
(orchestrator/cluster.py). The variable is read when a local Ray starts, so each setting runs in a
fresh subprocess with its own Ray, in turn within one invocation: the default is the baseline.
Each runs the same tiny pretrain stage (1 epoch, 1 step) `--repeats` times; the first run of a
fresh Ray also pays one-off start-up costs and is reported apart.

    python bench/train_poll.py [--repeats 3] [--intervals 2.0 0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE = {
    "seed": 1,
    "batch_size": 2,
    "patch": 16,
    "supernet": {"nf": 16, "widths": [8, 12, 16], "num_cells": 3},
    "optim": {"epochs": 1, "steps_per_epoch": 1},
}


def child(repeats: int) -> None:
    """Run the stage `repeats + 1` times on a fresh local Ray; print the seconds of each run as JSON."""
    sys.path.insert(0, str(ROOT))
    import ray

    from workers.shards import write_demo_dataset
    from workers.stage_runner import run_stage, stage_datasets

    root = tempfile.mkdtemp(prefix="trilevel-poll-")
    write_demo_dataset(root)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    seconds = []
    for run in range(repeats + 1):
        datasets = stage_datasets("pretrain", f"{root}/train", 4)
        begin = time.perf_counter()
        run_stage("pretrain", STAGE, name=f"r{run}/pretrain", storage_path=f"{root}/runs", datasets=datasets)
        seconds.append(time.perf_counter() - begin)
    ray.shutdown()
    print("RESULT " + json.dumps(seconds), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--intervals", type=float, nargs="+", default=[2.0, 0.5])
    parser.add_argument("--out", default="bench/results/train_poll.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.repeats)
        return
    results = {}
    for interval in args.intervals:
        env = os.environ | {
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": str(interval),
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "disabled",
        }
        done = subprocess.run(
            [sys.executable, __file__, "--child", "--repeats", str(args.repeats)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
        seconds = json.loads(line[len("RESULT ") :])
        results[interval] = {"first": seconds[0], "median": statistics.median(seconds[1:]), "runs": seconds}
    baseline = results[args.intervals[0]]["median"]
    print("| poll interval (s) | first run (s) | median of the next runs (s) | vs the first interval |")
    print("|---|---|---|---|")
    for interval, row in results.items():
        print(f"| {interval} | {row['first']:.1f} | {row['median']:.1f} | {row['median'] / baseline:.2f}x |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({str(k): v for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
