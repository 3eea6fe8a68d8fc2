"""Seconds per optimisation step of each stage at `small` on one CPU thread (what `reproduce --dry-run` uses).

Runs each stage of a `small` plan (table8 for backbone A, fig1 for backbone B) in this process
(`LocalStageIO`, no Ray, no validation pass), one epoch of `--steps` steps after one warm-up epoch,
and prints CPU seconds per step of this one-thread process (`time.process_time` between the epoch
reports / steps): on a shared machine the wall time is mostly waiting, the CPU time is what a step
costs a core. The values go into `orchestrator.reproduce.SECONDS_PER_STEP`.

    PYTHONPATH=$PWD python -m bench.stage_steps --steps 6
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import torch

from orchestrator.experiment import load_experiment, trials
from orchestrator.plan import plan_trial, resolve_data
from orchestrator.train_run import local_io
from workers.stage_io import LocalStageIO
from workers.stages import run_stages


class CpuClock(LocalStageIO):
    """A LocalStageIO that notes this process's CPU time at every report."""

    def report(self, metrics, state, genotype_json, dir_name) -> None:  # type: ignore[override]
        super().report(metrics | {"cpu_s": time.process_time()}, state, genotype_json, dir_name)


def stage_seconds(preset: str, steps: int, storage: str) -> dict[str, float]:
    """Seconds per step of pretrain, search and train of the preset's first `small` trial."""
    short = [f"stages.{s}.steps_per_epoch={steps}" for s in ("pretrain", "search", "train")]
    short += [f"stages.{s}.epochs=2" for s in ("pretrain", "search", "train")]
    short += ["stages.reuse=false", "data.val={}"]
    experiment = load_experiment(preset, "small", short, storage=storage, name=f"bench-{preset}")
    (run,) = plan_trial(trials(experiment)[0], resolve_data(experiment, storage), storage, experiment.name).runs
    settings = dataclasses.replace(run.settings, store=None)
    local = local_io(dataclasses.replace(run, settings=settings), experiment.data.scale)
    io = CpuClock(checkpoints=local.checkpoints, datasets=local.datasets)
    run_stages(settings, io)
    out, previous = {}, None
    for report in io.reports:
        if report.metrics["epoch"] == 1 and previous is not None:  # the second epoch: past the warm-up
            out[report.metrics["stage"]] = (report.metrics["cpu_s"] - previous) / steps
        previous = report.metrics["cpu_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as storage:
        for backbone, preset in (("A", "table8"), ("B", "fig1")):
            start = time.monotonic()
            seconds = stage_seconds(preset, args.steps, storage)
            shown = ", ".join(f"{stage} {value:.2f}" for stage, value in seconds.items())
            print(f"backbone {backbone} ({preset} small): CPU s/step {shown} ({time.monotonic() - start:.0f} s wall)")


if __name__ == "__main__":
    main()
