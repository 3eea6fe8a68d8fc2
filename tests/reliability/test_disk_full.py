"""The storage fills up mid-stage: a clear error, the saved checkpoints intact, and a clean resume.

The storage path is a real 48 MiB tmpfs mounted by the test (tests/faults.py). The run stops at a barrier
just before it writes the third checkpoint of the pretrain stage (workers.gates); once the first two are
registered, a ballast file fills the filesystem and the run goes on, so saving that third checkpoint fails
with ENOSPC, by construction, in the trial's process (a one-worker run) and inside a Train worker (a
TorchTrainer run) alike. The run must stop with a message naming the problem, that checkpoint and the path,
and leave the registered checkpoints loadable. Then the newest of them is damaged (a flipped byte, as a bad
disk or an interrupted copy leaves it) and space is freed: the resume must skip it with a warning naming it
and the one before, resume from that one rather than start over, and finish whole. For the TorchTrainer run
that is Ray Train's own `get_checkpoint()` handing the worker the damaged checkpoint.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from orchestrator.plan import TrainRunPlan
from orchestrator.train_run import StageError, build_datasets, fit_run, run_in_process, start_train_coordinator
from tests.faults import fill_up, small_filesystem
from tests.gates import Gate
from tests.helpers import tiny_plan, wait_for
from workers.checkpointing import STATE_FILE, load_state
from workers.stage_io import checkpoint_names
from workers.stage_outputs import read_stage_result

pytestmark = pytest.mark.xdist_group("local_ray")  # shares the in-process Ray (tests/conftest.py)

EPOCHS = 3  # checkpoints e0001 and e0002 are written before the disk fills, e0003 fails
SHORT = (
    "seed=5",
    f"stages.pretrain.epochs={EPOCHS}",
    "stages.pretrain.steps_per_epoch=2",
    "stages.search.epochs=1",
    "stages.search.steps_per_epoch=1",
    "stages.train.epochs=1",
    "stages.train.steps_per_epoch=1",
)


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _registered(run_dir: Path) -> list[str]:
    """Paths of the checkpoints the run has registered."""
    return [str(run_dir / name) for name in checkpoint_names(str(run_dir))]


def _in_trial(run: TrainRunPlan, storage: str) -> None:
    run_in_process(run, storage, build_datasets(run, 4, 0.25), lambda metrics, checkpoint: None)


def _train(run: TrainRunPlan, storage: str) -> None:
    start_train_coordinator()  # as a sweep's driver does
    fit_run(run, storage, build_datasets(run, 4, 0.25))


class FillAtTheThirdCheckpoint(threading.Thread):
    """Waits at the gate before pretrain-e0003, then for pretrain-e0002's registration (Ray Train registers a
    checkpoint asynchronously), fills the filesystem, notes what was registered, and lets the run go on."""

    def __init__(self, run_dir: Path, mount: Path, gate: Gate) -> None:
        super().__init__(daemon=True)
        self.run_dir, self.mount, self.gate = run_dir, mount, gate
        self.ballast: Path | None = None
        self.registered_at_fill: list[str] = []
        self.error: BaseException | None = None

    def _two_registered(self) -> bool:
        try:
            return _registered(self.run_dir) == [str(self.run_dir / f"pretrain-e000{n}") for n in (1, 2)]
        except (OSError, ValueError, KeyError):
            return False  # the list is being written

    def run(self) -> None:
        try:
            self.gate.wait()
            wait_for(self._two_registered, 120, "pretrain-e0001 and e0002 registered")
            self.ballast = fill_up(self.mount)
            self.registered_at_fill = _registered(self.run_dir)
        except BaseException as err:  # surfaced by the test
            self.error = err
        finally:
            self.gate.open()


@pytest.mark.parametrize("runner", [_in_trial, _train], ids=["in-trial", "ray-train"])
def test_storage_full_mid_stage_keeps_checkpoints_and_resumes(tmp_path, runner, request, caplog):
    if runner is _train:
        request.getfixturevalue("ray_session")
    with small_filesystem(tmp_path / "small", size="48m") as storage:
        plan = tiny_plan(str(storage), (*SHORT, f"resources.single_worker_in_trial={runner is _in_trial}"))
        (run,) = plan.runs
        assert run.in_process == (runner is _in_trial)
        run_dir = Path(run.settings.checkpoints)
        with Gate(run_dir, "pretrain-e0003") as gate:
            filler = FillAtTheThirdCheckpoint(run_dir, storage, gate)
            filler.start()
            with pytest.raises(StageError) as failed:
                runner(run, str(storage))
            filler.join(timeout=5)
        assert filler.error is None and filler.ballast is not None, repr(filler.error)
        message = str(failed.value)
        assert "No space left on device" in message and "the storage is full" in message, message
        assert str(run_dir) in message and "MiB free" in message and "Traceback" not in message
        assert "checkpoint pretrain-e0003 could not be written" in message, message

        # what was registered before the disk filled is intact and loadable, and nothing after it
        saved = _registered(run_dir)
        assert saved == filler.registered_at_fill == [str(run_dir / f"pretrain-e000{n}") for n in (1, 2)]
        assert [load_state(path)["epoch"] for path in saved] == [1, 2]

        # the newest checkpoint is damaged and space is freed: running again skips it, naming both, and
        # continues from the one before, not from scratch
        _flip_a_byte(Path(saved[1]) / STATE_FILE)
        first = (Path(saved[0]) / STATE_FILE).stat()
        filler.ballast.unlink()
        with caplog.at_level(logging.WARNING, logger="workers.stage_io"):
            runner(run, str(storage))
        if runner is _in_trial:  # a Train worker logs the same line in its own process
            assert f"checkpoint {saved[1]} is damaged" in caplog.text, caplog.text
            assert f"resuming from {saved[0]} instead" in caplog.text, caplog.text
        # without the fallback the damaged checkpoint would fail every resume (load_state refuses it)
        done = read_stage_result(plan.outputs, "pretrain")
        assert done is not None and done.metrics["epoch"] == EPOCHS - 1
        assert load_state(done.checkpoint)["epoch"] == EPOCHS
        registered = _registered(run_dir)
        pretrain = [path for path in registered if "/pretrain-" in path]
        # only the epochs after the one resumed from are run again (the damaged one rewritten whole)
        assert registered[:1] == saved[:1] and sorted(set(pretrain)) == [
            str(run_dir / f"pretrain-e000{n}") for n in (1, 2, 3)
        ]
        assert load_state(saved[1])["epoch"] == 2  # rewritten whole from epoch 1's state
        after = (Path(saved[0]) / STATE_FILE).stat()  # resumed from it, not started over (which rewrites it)
        assert (after.st_ino, after.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
        assert read_stage_result(plan.outputs, "train") is not None
