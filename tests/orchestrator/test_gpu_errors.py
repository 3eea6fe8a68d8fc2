"""A CUDA out of memory is said as such, with the knobs that shrink a step, and is not retried.

torch raises `torch.OutOfMemoryError` (= `torch.cuda.OutOfMemoryError`, present in CPU builds) when
CUDA refuses an allocation. No GPU here: the tests raise that real exception inside a stage's
forward (the only injected part) and check what the run, the classification and Tune make of it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ray.exceptions import OutOfMemoryError as RayOutOfMemoryError

from orchestrator.memory import GPUOutOfMemory, gpu_out_of_memory, killed_for_memory, trials_survive_memory_kills
from orchestrator.train_run import build_datasets, run_in_process
from search_space.supernet import Supernet
from tests.helpers import tiny_plan

CUDA_SAYS = (
    "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 22.06 GiB of which "
    "1.02 GiB is free. Of the allocated memory 19.52 GiB is allocated by PyTorch"
)


def test_cuda_out_of_memory_in_a_stage_names_the_gpu_and_its_knobs(tmp_path, monkeypatch):
    def forward(self, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError(CUDA_SAYS)

    monkeypatch.setattr(Supernet, "forward", forward)
    plan = tiny_plan(str(tmp_path))
    (run,) = plan.runs
    assert run.in_process
    with pytest.raises(GPUOutOfMemory) as failed:
        run_in_process(run, str(tmp_path), build_datasets(run, 4, 0.25), lambda metrics, checkpoint: None)
    message = str(failed.value)
    assert "out of GPU memory" in message and "Tried to allocate 20.00 GiB" in message
    for knob in ("search_space.recompute_cells", "stages.<stage>.batch_size", "stages.patch", "gpus_per_worker"):
        assert knob in message
    assert "not retried" in message and "ran low on memory" not in message and "\n" not in message
    assert isinstance(failed.value.__cause__, torch.OutOfMemoryError)
    assert not killed_for_memory(failed.value)


class _WorkerGroupFailure(RuntimeError):
    """Shaped like Ray Train's WorkerGroupError: the workers' errors by rank, as they arrive (with text)."""

    def __init__(self, failures: dict[int, BaseException]) -> None:
        super().__init__("Training failed due to worker errors")
        self.worker_failures = failures


def test_gpu_and_host_memory_failures_are_told_apart():
    cuda = torch.cuda.OutOfMemoryError(CUDA_SAYS)
    as_text = RuntimeError(f"Traceback ...\ntorch.OutOfMemoryError: {CUDA_SAYS}")  # a worker's error, pickled as text
    ray_kill = RayOutOfMemoryError("Task was killed due to the node running low on memory.")
    for err in (cuda, as_text, _WorkerGroupFailure({0: as_text})):
        assert gpu_out_of_memory(err) and not killed_for_memory(err), err
    for err in (ray_kill, _WorkerGroupFailure({1: ray_kill})):
        assert killed_for_memory(err) and not gpu_out_of_memory(err), err
    assert not gpu_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory"))


def _trainable(config: dict) -> None:
    with open(config["log"], "a") as log:
        log.write(config["kind"] + "\n")
    if config["kind"] == "gpu":
        try:
            raise torch.cuda.OutOfMemoryError(CUDA_SAYS)
        except torch.OutOfMemoryError as err:
            raise GPUOutOfMemory("stage run x: out of GPU memory") from err
    raise RuntimeError("a transient failure")


@pytest.mark.xdist_group("local_ray")
def test_tune_does_not_retry_a_gpu_out_of_memory_but_retries_other_failures(ray_session, tmp_path):
    from ray import tune

    trials_survive_memory_kills()
    log = tmp_path / "attempts.txt"
    tuner = tune.Tuner(
        tune.with_resources(_trainable, {"CPU": 0.5}),
        param_space={"kind": tune.grid_search(["gpu", "transient"]), "log": str(log)},
        run_config=tune.RunConfig(
            storage_path=str(tmp_path / "tune"),
            failure_config=tune.FailureConfig(max_failures=1),
            verbose=0,
        ),
    )
    results = tuner.fit()
    attempts = Path(log).read_text().split()
    assert attempts.count("gpu") == 1, attempts
    assert attempts.count("transient") == 2, attempts
    assert all(result.error is not None for result in results)


# --- a multi-worker run (a TorchTrainer): Train's controller does not retry a CUDA out of memory ----------------
def test_trains_failure_policy_raises_a_gpu_out_of_memory_and_retries_the_rest():
    from ray.train import FailureConfig
    from ray.train.v2._internal.execution.failure_handling import FailureDecision
    from ray.train.v2.api.exceptions import WorkerGroupError

    from orchestrator.train_failures import GPUOutOfMemoryIsFinal

    policy = GPUOutOfMemoryIsFinal(FailureConfig(max_failures=2))
    oom = WorkerGroupError(
        "rank 1 failed", {0: RuntimeError("collective aborted"), 1: torch.OutOfMemoryError(CUDA_SAYS)}
    )
    transient = WorkerGroupError("rank 0 failed", {0: RuntimeError("connection reset")})
    assert policy.make_decision(oom) == FailureDecision.RAISE
    assert policy.make_decision(transient) == FailureDecision.RETRY  # Train's own rule for everything else


def _out_of_gpu_memory(config: dict) -> None:
    with open(config["log"], "a") as log:
        log.write("attempt\n")
    raise torch.cuda.OutOfMemoryError(CUDA_SAYS)


@pytest.mark.xdist_group("local_ray")
def test_a_train_runs_gpu_out_of_memory_fails_at_its_first_occurrence(ray_session, tmp_path):
    """A real Train worker raises torch's OutOfMemoryError under max_failures=1: one attempt, not two."""
    import ray.train

    from orchestrator.train_failures import StageTrainer
    from orchestrator.train_run import train_scaling

    log = tmp_path / "attempts.txt"
    trainer = StageTrainer(
        _out_of_gpu_memory,
        train_loop_config={"log": str(log)},
        scaling_config=train_scaling(1, 0.5, 0.0),
        run_config=ray.train.RunConfig(
            name="oom", storage_path=str(tmp_path), failure_config=ray.train.FailureConfig(max_failures=1)
        ),
    )
    with pytest.raises(ray.train.TrainingFailedError) as failed:
        trainer.fit()
    assert log.read_text().split() == ["attempt"]
    assert gpu_out_of_memory(failed.value) and not killed_for_memory(failed.value)
