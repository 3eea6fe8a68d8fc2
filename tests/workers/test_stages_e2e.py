"""A trial's stages as real TorchTrainer runs on the built-in data (CPU, gloo), with two workers.

Kept few and tiny: each TorchTrainer run costs seconds of fixed overhead on 2 cores. The loop logic
itself (resume, skip, fine-tuning) is tested without Ray in `test_stage_loops.py`; a killed worker
resuming to the uninterrupted result, in `tests/reliability/test_faulted_sweep.py`.
"""

from __future__ import annotations

import os

import pytest
import torch

from orchestrator.train_run import build_datasets, fit_run
from tests.helpers import tiny_plan
from workers.checkpointing import load_state
from workers.stage_outputs import read_stage_result

SHORT = (
    "stages.pretrain.epochs=1",
    "stages.pretrain.steps_per_epoch=2",
    "stages.search.epochs=2",
    "stages.search.steps_per_epoch=3",
    "stages.train.epochs=1",
    "stages.train.steps_per_epoch=2",
)


def _arch(checkpoint: str) -> list[torch.Tensor]:
    model = load_state(checkpoint)["model"]
    return [model[k] for k in ("alpha", "width_logits", "path_logits", "frozen_ops", "frozen_path")]


@pytest.mark.usefixtures("ray_session")
def test_two_workers_agree_and_a_stage_with_other_workers_gets_its_own_run(tmp_path):
    storage = str(tmp_path / "runs")
    workers = "resources.workers={pretrain: 2, search: 2, train: 1}"
    plan = tiny_plan(storage, (*SHORT, "stages.search.epochs=1", "stages.search.batch_size=1", workers))
    first, second = plan.runs
    assert (first.stages, first.workers) == (("pretrain", "search"), 2)
    assert (second.stages, second.workers) == (("train",), 1)
    for run in plan.runs:
        fit_run(run, storage, build_datasets(run, 4, 0.25))
    search = read_stage_result(plan.outputs, "search")
    trained = read_stage_result(plan.outputs, "train")
    assert search is not None and trained is not None
    assert search.metrics["steps"] == 3
    assert search.metrics["arch_rank_spread"] == 0.0 and search.metrics["weight_rank_spread"] == 0.0
    assert trained.metrics["steps"] == 2 and trained.genotype == search.genotype
    assert os.path.dirname(trained.checkpoint) == second.settings.checkpoints
