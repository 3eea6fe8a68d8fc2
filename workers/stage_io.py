"""What a stage loop needs from the outside world: rows to train on, a resume point, a way to report.

The loops in `workers.stages` talk only to a `StageIO`, so the same code runs inside Ray Train
(`RayStageIO`: dataset shards, `get_checkpoint`, `report` with checkpoints on the storage path),
as a one-worker run in the calling process (`InProcessStageIO`: what a one-worker Train run does,
checkpoints on the same storage path, without starting Ray Train), and in one plain process
(`LocalStageIO`: rows in memory, checkpoints in a local folder), which lets tests exercise resume
and fine-tuning logic in seconds and lets a notebook run a stage without a cluster.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow.fs as pafs
import torch

from workers.checkpointing import (
    CheckpointError,
    CheckpointWriteError,
    is_no_space,
    load_state,
    open_checkpoint,
    staged_checkpoint,
)
from workers.markers import read_marker, write_marker
from workers.pipeline import worker_rows
from workers.settings import DatasetSource
from workers.storage import join_storage, resolve_uri

__all__ = [
    "CHECKPOINT_LIST",
    "InProcessStageIO",
    "LocalStageIO",
    "RayStageIO",
    "Report",
    "StageIO",
    "checkpoint_names",
    "newest_loadable",
]

CHECKPOINT_LIST = "_CHECKPOINTS.json"  # an in-process run's checkpoints, oldest first (Train keeps its own list)
_TRAIN_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's list, in a run it started
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Report:
    """One `report` call: the metrics, and the checkpoint path when one was written."""

    metrics: dict[str, Any]
    checkpoint: str | None


class StageIO(Protocol):
    """The loops' view of their runtime (one process of a possibly distributed group)."""

    rank: int
    world: int
    device: torch.device

    def rows(self, dataset: str) -> Any:
        """The rows of a training dataset for this worker: a list (decoded) or a Ray data iterator."""
        ...

    def resumed(self) -> tuple[dict[str, Any] | None, str | None]:
        """(state, path) of the latest checkpoint of this run, or (None, None) on a fresh start."""
        ...

    def checkpoint_path(self, dir_name: str) -> str:
        """Where a checkpoint reported under `dir_name` is stored."""
        ...

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None, genotype_json: str | None, dir_name: str):
        """Report metrics; with `state` (rank 0), also persist a checkpoint named `dir_name`."""
        ...


@contextlib.contextmanager
def _writing_checkpoint(dir_name: str) -> Iterator[None]:
    """An OSError while a checkpoint is staged or copied to the storage path becomes a CheckpointWriteError."""
    try:
        yield
    except OSError as err:
        raise CheckpointWriteError(
            f"the checkpoint {dir_name} could not be written: {err}", no_space=is_no_space(err)
        ) from err


class RayStageIO:
    """`StageIO` inside a Ray Train worker."""

    def __init__(self, checkpoints: str, datasets: Mapping[str, DatasetSource], scale: int) -> None:
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world = context.get_world_size()
        self.device = ray.train.torch.get_device()
        self._checkpoints = checkpoints
        self._sources = dict(datasets)
        self._scale = scale
        self._decoded: dict[str, list[dict[str, Any]]] = {}

    def rows(self, dataset: str) -> Any:
        import ray.train

        source = self._sources[dataset]
        if not source.in_memory:
            return ray.train.get_dataset_shard(dataset)
        if dataset not in self._decoded:  # small data: this worker's share, decoded once
            self._decoded[dataset] = worker_rows(source.path, self._scale, source.role, self.rank, self.world)
        return self._decoded[dataset]

    def resumed(self) -> tuple[dict[str, Any] | None, str | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None, None
        older = [self.checkpoint_path(name) for name in reversed(checkpoint_names(self._checkpoints))]
        return newest_loadable([checkpoint.path, *(path for path in older if path != checkpoint.path)])

    def checkpoint_path(self, dir_name: str) -> str:
        return join_storage(self._checkpoints, dir_name)

    def report(
        self, metrics: dict[str, Any], state: dict[str, Any] | None, genotype_json: str | None, dir_name: str
    ) -> None:
        import ray.train

        if state is None or self.rank != 0:
            ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=dir_name if state else None)
            return
        with _writing_checkpoint(dir_name), staged_checkpoint(state, genotype_json) as directory:
            checkpoint = ray.train.Checkpoint.from_directory(directory)
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=dir_name)


def checkpoint_names(checkpoints: str) -> list[str]:
    """The checkpoints a run has registered, oldest first, whoever ran it (in process or Ray Train).

    A checkpoint is registered once it is whole on the storage path, so a kill while it was copied
    resumes from the one before.
    """
    listed = read_marker(checkpoints, CHECKPOINT_LIST)
    if listed is not None:
        return list(listed["checkpoints"])
    train = read_marker(checkpoints, _TRAIN_SNAPSHOT)  # a run Ray Train started (e.g. before an upgrade)
    if train is not None:
        return [result["checkpoint_dir_name"] for result in train.get("checkpoint_results", [])]
    return []


def newest_loadable(paths: list[str]) -> tuple[dict[str, Any] | None, str | None]:
    """The state of the first checkpoint of `paths` (newest first) that is whole, and its path.

    A damaged newest checkpoint (truncated, or failing its checksums) must not stop every retry: it is
    skipped with a warning naming it and the one resumed from instead (or the stage's start).
    """
    for index, path in enumerate(paths):
        try:
            with open_checkpoint(path) as directory:
                return load_state(directory), path
        except CheckpointError as err:
            fallback = paths[index + 1] if index + 1 < len(paths) else "the start of the stage"
            _log.warning("checkpoint %s is damaged (%s): resuming from %s instead", path, err, fallback)
    return None, None


class InProcessStageIO:
    """`StageIO` of a one-worker run in the calling process (a Tune trial): Ray Train without its start.

    A one-worker CPU Train run costs ~15 s to start (controller and worker processes, a torch process
    group) for nothing a single process needs. This IO gives the loops what that worker would get:
    its rows (decoded, or a Ray data iterator for streamed sets), the latest registered checkpoint of
    the run on the storage path (resume after the process was killed), and checkpoints written there
    under the same names; `on_report(metrics, checkpoint path or None)` gets every report.
    """

    rank = 0
    world = 1

    def __init__(
        self,
        checkpoints: str,
        datasets: Mapping[str, DatasetSource],
        scale: int,
        on_report: Callable[[dict[str, Any], str | None], None],
        streamed: Mapping[str, Any] | None = None,
    ) -> None:
        self.device = torch.device("cpu")
        self._checkpoints = checkpoints
        self._sources = dict(datasets)
        self._scale = scale
        self._on_report = on_report
        self._streamed = dict(streamed or {})
        for dataset in self._streamed.values():  # as `data_config` asks of Train's ingest: every pass, same order
            dataset.context.execution_options.preserve_order = True
        self._decoded: dict[str, list[dict[str, Any]]] = {}

    def rows(self, dataset: str) -> Any:
        source = self._sources[dataset]
        if not source.in_memory:
            return self._streamed[dataset].iterator()
        if dataset not in self._decoded:
            self._decoded[dataset] = worker_rows(source.path, self._scale, source.role)
        return self._decoded[dataset]

    def resumed(self) -> tuple[dict[str, Any] | None, str | None]:
        return newest_loadable([self.checkpoint_path(name) for name in reversed(checkpoint_names(self._checkpoints))])

    def checkpoint_path(self, dir_name: str) -> str:
        return join_storage(self._checkpoints, dir_name)

    def report(
        self, metrics: dict[str, Any], state: dict[str, Any] | None, genotype_json: str | None, dir_name: str
    ) -> None:
        path = None
        if state is not None:
            path = self.checkpoint_path(dir_name)
            with _writing_checkpoint(dir_name):
                with staged_checkpoint(state, genotype_json) as directory:
                    self._upload(directory, path)
                names = [n for n in checkpoint_names(self._checkpoints) if n != dir_name] + [dir_name]
                write_marker(self._checkpoints, {"checkpoints": names}, CHECKPOINT_LIST)
        self._on_report(dict(metrics), path)

    @staticmethod
    def _upload(directory: str, path: str) -> None:
        fs, target = resolve_uri(path)
        if fs.get_file_info(target).type != pafs.FileType.NotFound:  # an epoch redone after a kill
            fs.delete_dir(target)
        fs.create_dir(target, recursive=True)
        pafs.copy_files(directory, target, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


@dataclass
class LocalStageIO:
    """`StageIO` for one plain process: rows in memory, checkpoints in a local folder.

    `datasets` maps dataset names to decoded rows (`{"lr", "hr", ...}` dicts). Every report is kept
    in `reports`; `resume_from` names a checkpoint directory to resume from (as `get_checkpoint`).
    """

    checkpoints: str
    datasets: Mapping[str, list[dict[str, Any]]]
    resume_from: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world: int = 1
    reports: list[Report] = field(default_factory=list)

    def rows(self, dataset: str) -> list[dict[str, Any]]:
        if dataset not in self.datasets:
            raise KeyError(f"no dataset {dataset!r}; have {', '.join(sorted(self.datasets))}")
        return self.datasets[dataset]

    def resumed(self) -> tuple[dict[str, Any] | None, str | None]:
        if self.resume_from is None:
            return None, None
        return load_state(self.resume_from), self.resume_from

    def checkpoint_path(self, dir_name: str) -> str:
        return os.path.join(self.checkpoints, dir_name)

    def report(
        self, metrics: dict[str, Any], state: dict[str, Any] | None, genotype_json: str | None, dir_name: str
    ) -> None:
        path = None
        if state is not None and self.rank == 0:
            path = self.checkpoint_path(dir_name)
            with staged_checkpoint(state, genotype_json) as directory:
                shutil.rmtree(path, ignore_errors=True)
                shutil.copytree(directory, path)
        self.reports.append(Report(dict(metrics), path))
