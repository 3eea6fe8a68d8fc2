"""Run one Train run of a trial plan: as a TorchTrainer job, or in the trial's process (one CPU worker).

A Train run holds consecutive stages that share a worker group (`orchestrator.plan`). Its name is
deterministic (`<sweep>/stages/<trial>/run-<stages>`), so running it again resumes from its latest
checkpoint (Train V2 restores its checkpoint manager from the storage path; an in-process run reads
its list of checkpoints there), and the stages that already left a done marker are skipped. A run
whose stages are all done is not started at all.

A one-worker CPU run needs nothing Ray Train adds (a controller and a worker process, a torch process
group: ~15 s per start), so `run_in_process` runs its stages in the calling trial process, with the
same checkpoints, reports and errors. A kill of that process is a failed trial, which Tune retries
(`resources.max_failures`) and which resumes from the run's latest checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

from orchestrator.memory import (
    GPUOutOfMemory,
    gpu_memory_error_message,
    gpu_out_of_memory,
    killed_for_memory,
    memory_error_message,
)
from orchestrator.plan import TrainRunPlan
from workers.checkpointing import CheckpointWriteError
from workers.pipeline import data_config, read_pairs, role_ids, worker_rows
from workers.stage_io import InProcessStageIO, LocalStageIO
from workers.stage_outputs import read_stage_result
from workers.stages import run_stages, train_fn_per_worker
from workers.storage import join_storage

__all__ = [
    "TRAIN_ENV",
    "StageError",
    "build_datasets",
    "fit_run",
    "local_io",
    "run_finished",
    "run_in_process",
    "start_train_coordinator",
    "train_scaling",
]

# Ray Train's controller polls its workers every 2 s by default: a run's start and end each wait for a
# poll. 0.5 s costs the controller nothing noticeable; Ray passes it on to the controller it starts.
TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


_log = logging.getLogger(__name__)


def start_train_coordinator() -> None:
    """Start Ray Train's cluster-wide autoscaling coordinator now, while the driver sets up the sweep.

    Every TorchTrainer run registers its resources with this detached actor and waits up to 5 s for the
    answer, twice (Ray 2.60, `train/v2/.../autoscaling_coordinator_client.py`). On a fresh cluster the
    first run's controller therefore sat ~10 s waiting for the actor's process to start. Asked for here
    (asynchronously), it is up by the time a trial fits. The function is Ray's private API: should it
    move, the only loss is those seconds.
    """
    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )

        get_or_create_autoscaling_coordinator()
    except Exception as err:  # an optimisation only: never fail a sweep over it
        _log.debug("could not start Ray Train's autoscaling coordinator early: %s", err)


class StageError(RuntimeError):
    """A stage could not go on for a reason the user must fix (the message says what and where)."""


def run_finished(plan: TrainRunPlan) -> bool:
    """Whether every stage of the run has left its done marker."""
    return all(read_stage_result(plan.settings.outputs, stage) is not None for stage in plan.stages)


def build_datasets(plan: TrainRunPlan, scale: int, num_cpus: float) -> dict[str, Any]:
    """The Ray datasets Ray Data streams to the run's workers (in-memory sets are decoded by the workers)."""
    datasets = {}
    for name in plan.settings.streamed:
        source = plan.settings.datasets[name]
        datasets[name] = read_pairs(source.path, scale, ids=role_ids(source.path, source.role), num_cpus=num_cpus)
    return datasets


def local_io(plan: TrainRunPlan, scale: int, resume_from: str | None = None) -> LocalStageIO:
    """The run's datasets decoded in this process, to run its stages without Ray.

    For tests, benchmarks and notebooks: `workers.stages.run_stages(plan.settings, local_io(plan, 4))`.
    Checkpoints go to the run's own directory, as in a Train run.
    """
    rows = {name: worker_rows(source.path, scale, source.role) for name, source in plan.settings.datasets.items()}
    return LocalStageIO(checkpoints=plan.settings.checkpoints, datasets=rows, resume_from=resume_from)


@contextlib.contextmanager
def _restore_sigint() -> Iterator[None]:
    """Put back the SIGINT handler a main-thread `fit()` installs.

    Ray Train's handler closes over the run's controller actor handle; left installed, it keeps the
    finished controller (and its DatasetManager and SplitCoordinators, which hold CPUs) alive until
    the next main-thread `fit()` replaces it. Restoring the previous handler drops that last reference.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def train_scaling(workers: int, cpus_per_worker: float, gpus_per_worker: float) -> Any:
    """Ray Train's ScalingConfig for a run: each worker asks exactly `gpus_per_worker` GPUs (0.5, 1, 2, ...).

    Why not `use_gpu` alone: it reserves one GPU per worker, so 0.5 (two trials sharing an 80 GB GPU
    that one late-search step keeps ~15 % busy) became 1 and 2 became 1, while the pre-flight planned
    with the configured value. `use_gpu` still says the workers train on CUDA (device, NCCL).
    """
    import ray.train

    resources = {"CPU": cpus_per_worker} | ({"GPU": gpus_per_worker} if gpus_per_worker > 0 else {})
    return ray.train.ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0, resources_per_worker=resources)


def fit_run(
    plan: TrainRunPlan,
    storage: str,
    datasets: dict[str, Any],
    *,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 0.5,
    max_failures: int = 0,
    callbacks: list[Any] | None = None,
) -> None:
    """Fit the run's TorchTrainer; stage results are read from the markers its workers write.

    Train retries a failed worker group up to `max_failures` times, except for a CUDA out of memory
    (`orchestrator.train_failures`): that fails the run at once, as `GPUOutOfMemory` with the knobs.
    """
    import ray.train

    from orchestrator.train_failures import StageTrainer

    for key, value in TRAIN_ENV.items():
        os.environ.setdefault(key, value)
    trainer = StageTrainer(
        train_fn_per_worker,
        train_loop_config={"run": plan.settings},
        scaling_config=train_scaling(plan.workers, cpus_per_worker, gpus_per_worker),
        run_config=ray.train.RunConfig(
            name=plan.name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=None),
            callbacks=callbacks,
        ),
        datasets=datasets,
        dataset_config=data_config(plan.settings.streamed),
    )
    try:
        with _restore_sigint():
            trainer.fit()
    except ray.train.TrainingFailedError as err:
        if gpu_out_of_memory(err):  # raised at its first occurrence: StageTrainer's controller does not retry it
            raise GPUOutOfMemory(gpu_memory_error_message(f"stage run {plan.name}", err)) from err
        if killed_for_memory(err):
            raise StageError(memory_error_message(f"stage run {plan.name}")) from err
        write_error = _checkpoint_write_error(err)
        if write_error is None:
            raise
        raise StageError(_checkpoint_write_message(plan.name, storage, write_error)) from err


def run_in_process(
    plan: TrainRunPlan,
    storage: str,
    datasets: dict[str, Any],
    on_report: Callable[[dict[str, Any], str | None], None],
) -> None:
    """Run the stages of a one-worker run in this process, as its Train worker would; reports go to `on_report`."""
    if plan.workers != 1:
        raise ValueError(f"stage run {plan.name} has {plan.workers} workers: only a one-worker run runs in process")
    settings = plan.settings
    io = InProcessStageIO(settings.checkpoints, settings.datasets, settings.stages[0].scale, on_report, datasets)
    try:
        run_stages(settings, io)
    except CheckpointWriteError as err:
        raise StageError(_checkpoint_write_message(plan.name, storage, err)) from err
    except RuntimeError as err:  # torch.OutOfMemoryError is a RuntimeError
        if gpu_out_of_memory(err):
            raise GPUOutOfMemory(gpu_memory_error_message(f"stage run {plan.name}", err)) from err
        raise


def _checkpoint_write_error(err: BaseException) -> CheckpointWriteError | None:
    """The CheckpointWriteError behind a failed run (a worker's failure, or anywhere in the cause chain)."""
    candidates: list[BaseException] = [*getattr(err, "worker_failures", {}).values(), err]
    seen: set[int] = set()
    while candidates:
        current = candidates.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, CheckpointWriteError):
            return current
        candidates += [e for e in (current.__cause__, current.__context__) if e is not None]
    return None


def _free_space(storage_path: str) -> str:
    """Free space at a local storage path, as text ("" for URIs or when unknown)."""
    if "://" in storage_path:
        return ""
    path = os.path.abspath(storage_path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        return f"{shutil.disk_usage(path).free / 2**20:.1f} MiB free"
    except OSError:
        return ""


def _checkpoint_write_message(name: str, storage_path: str, err: CheckpointWriteError) -> str:
    where = join_storage(storage_path, name)
    if err.no_space:
        free = _free_space(storage_path)
        fix = f"the storage is full{f' ({free})' if free else ''}: free space or choose another storage path"
    else:
        fix = "make the storage path writable"
    return (
        f"stage run {name}: {err} under {where}. The checkpoints saved before it are intact; {fix}, "
        "then run it again to continue from the last one."
    )
