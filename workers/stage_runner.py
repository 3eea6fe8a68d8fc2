"""Run one stage as a TorchTrainer job and hand its outputs to the next stage as paths.

Driver-side glue shared by the orchestrator's trials, tests and benchmarks. A stage's run name is
deterministic (`<sweep>/<trial>/<stage>` by convention), so running it again resumes from its latest
checkpoint (Train V2 restores its checkpoint manager from the storage path), and a finished stage
leaves `_STAGE_DONE.json` beside its checkpoints, so it is skipped, not repeated.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from typing import Any

from workers.checkpointing import CheckpointWriteError, open_checkpoint, read_genotype_json
from workers.markers import read_marker, write_marker
from workers.pipeline import DEFAULT_NUM_CPUS, TRAIN, TRAIN_A, TRAIN_W, data_config, read_pairs, split_search
from workers.shards import join_storage
from workers.stages import LOOPS

__all__ = ["DONE_MARKER", "StageError", "StageResult", "run_stage", "stage_datasets"]

DONE_MARKER = "_STAGE_DONE.json"


class StageError(RuntimeError):
    """A stage could not go on for a reason the user must fix (the message says what and where)."""


@dataclass(frozen=True)
class StageResult:
    """What a finished stage hands on: checkpoint paths, last metrics, derived genotype."""

    stage: str
    name: str
    checkpoint: str
    best_checkpoint: str | None
    metrics: dict[str, Any]
    genotype: dict[str, Any] | None
    skipped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stage_datasets(stage: str, train_path: str, scale: int, num_cpus: float = DEFAULT_NUM_CPUS) -> dict[str, Any]:
    """The Ray datasets a stage reads: χ1 (pretrain), χ1 + χ2 (search), all images (train)."""
    if stage == "pretrain":
        return {TRAIN_W: split_search(train_path, scale, num_cpus=num_cpus)[0]}
    if stage == "search":
        chi1, chi2 = split_search(train_path, scale, num_cpus=num_cpus)
        return {TRAIN_W: chi1, TRAIN_A: chi2}
    if stage == "train":
        return {TRAIN: read_pairs(train_path, scale, num_cpus=num_cpus)}
    raise ValueError(f"stage must be one of {', '.join(LOOPS)}, got {stage!r}")


def read_done_marker(storage_path: str, name: str) -> StageResult | None:
    data = read_marker(storage_path, name, DONE_MARKER)
    return None if data is None else StageResult(**(data | {"skipped": True}))


def run_stage(
    stage: str,
    loop_config: dict[str, Any],
    *,
    name: str,
    storage_path: str,
    datasets: dict[str, Any],
    num_workers: int = 1,
    use_gpu: bool = False,
    cpus_per_worker: float = 0.5,
    max_failures: int = 0,
    num_to_keep: int | None = None,
    callbacks: list[Any] | None = None,
) -> StageResult:
    """Fit the stage's TorchTrainer (or return the recorded result of a finished stage)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    if stage not in LOOPS:
        raise ValueError(f"stage must be one of {', '.join(LOOPS)}, got {stage!r}")
    done = read_done_marker(storage_path, name)
    if done is not None:
        return done
    trainer = TorchTrainer(
        LOOPS[stage],
        train_loop_config=loop_config | {"stage": stage},
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=num_to_keep),
            callbacks=callbacks,
        ),
        datasets=datasets,
        dataset_config=data_config(),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as err:
        write_error = _checkpoint_write_error(err)
        if write_error is None:
            raise
        raise StageError(_checkpoint_write_message(name, storage_path, write_error)) from err
    if result.checkpoint is None:
        raise RuntimeError(f"stage {name}: finished without a checkpoint")
    with open_checkpoint(result.checkpoint.path) as directory:
        genotype = read_genotype_json(directory)
    outcome = StageResult(
        stage=stage,
        name=name,
        checkpoint=result.checkpoint.path,
        best_checkpoint=_best_checkpoint(result),
        metrics=dict(result.metrics),
        genotype=genotype,
    )
    write_marker(storage_path, outcome.to_dict(), name, DONE_MARKER)
    return outcome


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
        f"stage {name}: {err} under {where}. The checkpoints saved before it are intact; {fix}, "
        "then run the stage again to continue from the last one."
    )


def _best_checkpoint(result: Any) -> str | None:
    """The checkpoint with the highest validation PSNR, when validation ran."""
    scored = [(m.get("val_psnr"), c) for c, m in (result.best_checkpoints or []) if m.get("val_psnr") is not None]
    return max(scored, key=lambda pair: pair[0])[1].path if scored else None
