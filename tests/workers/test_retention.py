"""Checkpoint retention: the run's last K checkpoints stay, and every one a stage result names.

Runs the real stage loops of a tiny trial in one process (three checkpoints per stage) and looks at
what is left on disk; the plan's estimate of a checkpoint's bytes is checked against the files written.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.footprint import checkpoint_footprint
from orchestrator.train_run import local_io
from tests.helpers import tiny_experiment, tiny_plan
from workers.checkpointing import load_state
from workers.retention import to_delete
from workers.stages import run_stages

EPOCHS = (
    "stages.pretrain.epochs=3",
    "stages.pretrain.steps_per_epoch=1",
    "stages.search.epochs=3",
    "stages.search.steps_per_epoch=1",
    "stages.train.epochs=3",
    "stages.train.steps_per_epoch=1",
)


def test_to_delete_keeps_the_last_k_and_the_protected():
    saved = ["a1", "a2", "b1", "b2", "b3"]
    assert to_delete(saved, None, ()) == []
    assert to_delete(saved, 2, {"a2"}) == ["a1", "b1"]
    assert to_delete(saved, 10, ()) == []
    with pytest.raises(ValueError, match="keep_last must be >= 1"):
        to_delete(saved, 0, ())


def test_a_run_keeps_its_last_checkpoints_each_stage_final_and_the_best(tmp_path):
    plan = tiny_plan(str(tmp_path), (*EPOCHS, "stages.keep_checkpoints=1"))
    (run,) = plan.runs
    pretrain, search, trained = run_stages(run.settings, local_io(run, 4))

    left = sorted(os.listdir(run.settings.checkpoints))
    names = {os.path.basename(p) for p in (pretrain.checkpoint, search.checkpoint, trained.checkpoint)}
    names |= {os.path.basename(trained.best_checkpoint)} if trained.best_checkpoint else set()
    assert set(left) == names, left  # 9 were written
    assert {"pretrain-e0003", "search-e0003", "train-e0003"} <= set(left)
    for name in left:
        assert load_state(os.path.join(run.settings.checkpoints, name))["stage"] == name.split("-")[0]

    # what the plan says a checkpoint weighs is what was written (state.pt holds a little history besides)
    footprint = checkpoint_footprint(tiny_experiment(str(tmp_path), (*EPOCHS, "stages.keep_checkpoints=1")))
    for stage in ("pretrain", "search"):
        written = (Path(run.settings.checkpoints) / f"{stage}-e0003" / "state.pt").stat().st_size
        assert 0.9 < written / footprint.bytes_each[stage] < 1.2, (stage, written, footprint.bytes_each[stage])
    assert footprint.saved == {"pretrain": 3, "search": 3, "train": 3}
    assert sum(footprint.kept.values()) >= len(left) and footprint.kept_bytes < footprint.all_bytes
