"""The storage fills up mid-stage: a clear error, the saved checkpoints intact, and a clean resume.

The storage path is a real 48 MiB tmpfs mounted by the test (tests/faults.py). The run stops at a barrier
just before it writes the second checkpoint of the pretrain stage (workers.gates); once the first one is
registered, a ballast file fills the filesystem and the run goes on, so saving that second checkpoint fails
with ENOSPC, by construction, in the trial's process (a one-worker run) and inside a Train worker (a
TorchTrainer run) alike. The run must stop with a message naming the problem, that checkpoint and the path,
leave the registered checkpoint loadable, and, once space is freed, resume from it rather than start over.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from orchestrator.plan import TrainRunPlan
from orchestrator.train_run import StageError, build_datasets, fit_run, run_in_process, start_train_coordinator
from tests.faults import fill_up, small_filesystem
from tests.gates import Gate
from tests.helpers import tiny_plan, wait_for
from workers.checkpointing import load_state
from workers.stage_io import checkpoint_names
from workers.stage_outputs import read_stage_result

pytestmark = pytest.mark.xdist_group("local_ray")  # shares the in-process Ray (tests/conftest.py)

EPOCHS = 3
SHORT = (
    "seed=5",
    f"stages.pretrain.epochs={EPOCHS}",
    "stages.pretrain.steps_per_epoch=2",
    "stages.search.epochs=1",
    "stages.search.steps_per_epoch=1",
    "stages.train.epochs=1",
    "stages.train.steps_per_epoch=1",
)


def _registered(run_dir: Path) -> list[str]:
    """Paths of the checkpoints the run has registered."""
    return [str(run_dir / name) for name in checkpoint_names(str(run_dir))]


def _in_trial(run: TrainRunPlan, storage: str) -> None:
    run_in_process(run, storage, build_datasets(run, 4, 0.25), lambda metrics, checkpoint: None)


def _train(run: TrainRunPlan, storage: str) -> None:
    start_train_coordinator()  # as a sweep's driver does
    fit_run(run, storage, build_datasets(run, 4, 0.25))


class FillAtTheSecondCheckpoint(threading.Thread):
    """Waits at the gate before pretrain-e0002, then for pretrain-e0001's registration (Ray Train registers a
    checkpoint asynchronously), fills the filesystem, notes what was registered, and lets the run go on."""

    def __init__(self, run_dir: Path, mount: Path, gate: Gate) -> None:
        super().__init__(daemon=True)
        self.run_dir, self.mount, self.gate = run_dir, mount, gate
        self.ballast: Path | None = None
        self.registered_at_fill: list[str] = []
        self.error: BaseException | None = None

    def _first_registered(self) -> bool:
        try:
            return _registered(self.run_dir) == [str(self.run_dir / "pretrain-e0001")]
        except (OSError, ValueError, KeyError):
            return False  # the list is being written

    def run(self) -> None:
        try:
            self.gate.wait()
            wait_for(self._first_registered, 120, "pretrain-e0001 registered")
            self.ballast = fill_up(self.mount)
            self.registered_at_fill = _registered(self.run_dir)
        except BaseException as err:  # surfaced by the test
            self.error = err
        finally:
            self.gate.open()


@pytest.mark.parametrize("runner", [_in_trial, _train], ids=["in-trial", "ray-train"])
def test_storage_full_mid_stage_keeps_checkpoints_and_resumes(tmp_path, runner, request):
    if runner is _train:
        request.getfixturevalue("ray_session")
    with small_filesystem(tmp_path / "small", size="48m") as storage:
        plan = tiny_plan(str(storage), (*SHORT, f"resources.single_worker_in_trial={runner is _in_trial}"))
        (run,) = plan.runs
        assert run.in_process == (runner is _in_trial)
        run_dir = Path(run.settings.checkpoints)
        with Gate(run_dir, "pretrain-e0002") as gate:
            filler = FillAtTheSecondCheckpoint(run_dir, storage, gate)
            filler.start()
            with pytest.raises(StageError) as failed:
                runner(run, str(storage))
            filler.join(timeout=5)
        assert filler.error is None and filler.ballast is not None, repr(filler.error)
        message = str(failed.value)
        assert "No space left on device" in message and "the storage is full" in message, message
        assert str(run_dir) in message and "MiB free" in message and "Traceback" not in message
        assert "checkpoint pretrain-e0002 could not be written" in message, message

        # what was registered before the disk filled is intact and loadable, and nothing after it
        saved = _registered(run_dir)
        assert saved == filler.registered_at_fill == [str(run_dir / "pretrain-e0001")]
        assert load_state(saved[0])["epoch"] == 1

        # space is freed: running again continues from the last checkpoint, not from scratch
        filler.ballast.unlink()
        runner(run, str(storage))
        done = read_stage_result(plan.outputs, "pretrain")
        assert done is not None and done.metrics["epoch"] == EPOCHS - 1
        assert load_state(done.checkpoint)["epoch"] == EPOCHS
        registered = _registered(run_dir)
        pretrain = [path for path in registered if "/pretrain-" in path]
        assert registered[: len(saved)] == saved and len(pretrain) == EPOCHS  # only the missing epochs added
        assert read_stage_result(plan.outputs, "train") is not None
