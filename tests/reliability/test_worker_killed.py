"""A Train worker process SIGKILLed mid-search: the stage resumes from its last checkpoint.

The same search stage runs twice with the same seed: once uninterrupted, once with its Train worker
process killed (SIGKILL, found through /proc among this session's Ray processes) right after Ray
Train registered the first of its two checkpoints. FailureConfig restarts the worker, which resumes
from that checkpoint: at most one checkpoint interval is redone, and the architecture parameters
and the derived genotype come out bit-identical to the uninterrupted run.
"""

from __future__ import annotations

import glob
import os

import pytest
import torch

from tests.faults import KillWhen, registered_checkpoints
from workers.checkpointing import load_state
from workers.stage_runner import run_stage, stage_datasets

SEARCH = {
    "seed": 3,
    "batch_size": 2,
    "patch": 16,
    "supernet": {"nf": 16, "widths": [8, 12, 16], "num_cells": 3},
    "lambda_order": 0.01,
    "lambda_flops": 1e-20,
    "optim": {"epochs": 2, "steps_per_epoch": 4},
}


def _arch(checkpoint: str) -> list[torch.Tensor]:
    model = load_state(checkpoint)["model"]
    return [model[k] for k in ("alpha", "width_logits", "path_logits")]


@pytest.mark.usefixtures("ray_session")
def test_killed_search_worker_resumes_to_the_uninterrupted_result(demo_data, tmp_path):
    storage = str(tmp_path / "runs")
    train = os.path.join(demo_data, "train")
    reference = run_stage(
        "search", SEARCH, name="k/reference", storage_path=storage, datasets=stage_datasets("search", train, 4)
    )

    run_dir = os.path.join(storage, "k/killed")
    killer = KillWhen(lambda: len(registered_checkpoints(run_dir)) == 1, "ray::RayTrainWorker")
    killer.start()
    resumed = run_stage(
        "search",
        SEARCH,
        name="k/killed",
        storage_path=storage,
        datasets=stage_datasets("search", train, 4),
        max_failures=1,
    )
    killer.join(timeout=5)
    assert killer.killed_pid is not None, "the worker was never killed"
    # a kill between writing a checkpoint and registering it costs that epoch (redone), never more
    on_disk = [p for p in glob.glob(os.path.join(run_dir, "checkpoint_2*")) if os.path.isdir(p)]
    assert len(registered_checkpoints(run_dir)) == 2 and len(on_disk) in (2, 3)
    assert resumed.metrics["epoch"] == 1
    for a, b in zip(_arch(resumed.checkpoint), _arch(reference.checkpoint), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert resumed.genotype == reference.genotype
