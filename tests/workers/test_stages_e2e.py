"""A trial's stages as real TorchTrainer runs on the built-in data (CPU, gloo): one worker group for all.

Kept few and tiny: each TorchTrainer run costs seconds of fixed overhead on 2 cores. The loop logic
itself (resume, skip, fine-tuning) is tested without Ray in `test_stage_loops.py`.
"""

from __future__ import annotations

import os

import pytest
import torch

from orchestrator.train_run import build_datasets, fit_run, local_io, run_finished
from tests.faults import KillWhen
from tests.helpers import registered_checkpoints, tiny_plan
from workers.checkpointing import load_state
from workers.stage_outputs import read_stage_result
from workers.stages import run_stages

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
def test_one_worker_group_survives_a_killed_worker_and_matches_an_uninterrupted_run(tmp_path):
    # reference: the same plan run uninterrupted in this process (same code, same seeds, one thread)
    reference_plan = tiny_plan(str(tmp_path / "reference"), SHORT)
    (reference_run,) = reference_plan.runs
    _, reference_search, reference_train = run_stages(reference_run.settings, local_io(reference_run, 4))

    storage = str(tmp_path / "runs")
    plan = tiny_plan(storage, SHORT)
    (run,) = plan.runs
    assert run.stages == ("pretrain", "search", "train")  # one Train run for the whole trial
    run_dir = run.settings.checkpoints
    # SIGKILL the Train worker once the first search checkpoint is registered: Train restarts the
    # worker group (FailureConfig), which skips pretrain (done marker) and resumes the search
    killer = KillWhen(lambda: "search-e0001" in registered_checkpoints(run_dir), "ray::RayTrainWorker")
    killer.start()
    fit_run(run, storage, build_datasets(run, 4, 0.25), max_failures=1)
    killer.join(timeout=5)
    assert killer.killed_pid is not None, "the worker was never killed"
    assert run_finished(run)
    names = registered_checkpoints(run_dir)
    assert names[:2] == ["pretrain-e0001", "search-e0001"] and names[-1] == "train-e0001"
    search = read_stage_result(run.settings.outputs, "search")
    trained = read_stage_result(run.settings.outputs, "train")
    assert search is not None and trained is not None
    assert os.path.basename(search.checkpoint) == "search-e0002"
    for a, b in zip(_arch(search.checkpoint), _arch(reference_search.checkpoint), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert search.genotype == reference_search.genotype == trained.genotype
    assert trained.metrics["val_psnr"] == pytest.approx(reference_train.metrics["val_psnr"], abs=1e-9)


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
