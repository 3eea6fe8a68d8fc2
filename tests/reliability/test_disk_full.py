"""The storage fills up mid-stage: a clear error, the saved checkpoints intact, and a clean resume.

The storage path is a real 48 MiB tmpfs mounted by the test (tests/faults.py). Once Ray Train has
registered the first checkpoint of a pretrain stage, a ballast file fills the filesystem, so
saving the next checkpoint fails with ENOSPC inside the Train worker. The stage must stop with a
message naming the problem and the path (after its one retry fails the same way), leave the
registered checkpoint loadable, and, once space is freed, resume from it rather than start over.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from tests.faults import fill_up, small_filesystem
from workers.checkpointing import load_state
from workers.stage_runner import StageError, run_stage, stage_datasets

EPOCHS = 4
CONFIG = {
    "seed": 5,
    "batch_size": 2,
    "patch": 16,
    "supernet": {"nf": 16, "widths": [8, 12, 16], "num_cells": 3},
    "optim": {"epochs": EPOCHS, "steps_per_epoch": 6},
}


def _registered(run_dir: Path) -> list[str]:
    """Paths of the checkpoints Ray Train has registered for this run (its snapshot file must parse)."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    if not snapshot.is_file():
        return []
    results = json.loads(snapshot.read_text())["checkpoint_results"]
    return [str(run_dir / result["checkpoint_dir_name"]) for result in results]


class FillWhenCheckpointed(threading.Thread):
    def __init__(self, run_dir: Path, mount: Path) -> None:
        super().__init__(daemon=True)
        self.run_dir, self.mount = run_dir, mount
        self.ballast: Path | None = None

    def _checkpointed(self) -> bool:
        try:
            return bool(_registered(self.run_dir))
        except (OSError, ValueError, KeyError):
            return False  # the snapshot is being written

    def run(self) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self._checkpointed():
                self.ballast = fill_up(self.mount)
                return
            time.sleep(0.02)


@pytest.mark.usefixtures("ray_session")
def test_storage_full_mid_stage_keeps_checkpoints_and_resumes(demo_data, tmp_path):
    with small_filesystem(tmp_path / "small", size="48m") as storage:  # a checkpoint is ~7 MB
        run_dir = storage / "full" / "pretrain"
        filler = FillWhenCheckpointed(run_dir, storage)
        filler.start()
        datasets = stage_datasets("pretrain", os.path.join(demo_data, "train"), 4)
        with pytest.raises(StageError) as failed:
            run_stage(
                "pretrain", CONFIG, name="full/pretrain", storage_path=str(storage), datasets=datasets, max_failures=1
            )
        filler.join(timeout=5)
        assert filler.ballast is not None, "the filesystem was never filled"
        message = str(failed.value)
        assert "No space left on device" in message and "the storage is full" in message, message
        assert str(run_dir) in message and "MiB free" in message and "Traceback" not in message

        # what was registered before the disk filled is intact and loadable (Ray registers a checkpoint
        # asynchronously, so the disk may fill a checkpoint later than the first: the message says which)
        saved = _registered(run_dir)
        assert 1 <= len(saved) < EPOCHS
        assert [load_state(path)["epoch"] for path in saved] == list(range(1, len(saved) + 1))
        assert f"checkpoint after epoch {len(saved) + 1} could not be written" in message

        # space is freed: running the stage again continues from the last checkpoint, not from scratch
        filler.ballast.unlink()
        datasets = stage_datasets("pretrain", os.path.join(demo_data, "train"), 4)
        done = run_stage("pretrain", CONFIG, name="full/pretrain", storage_path=str(storage), datasets=datasets)
        assert done.metrics["epoch"] == EPOCHS - 1 and load_state(done.checkpoint)["epoch"] == EPOCHS
        registered = _registered(run_dir)
        assert registered[: len(saved)] == saved and len(registered) == EPOCHS  # only the missing epochs added
