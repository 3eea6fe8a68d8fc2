"""What goes into a run: params, metrics, tags, artifacts and models, shaped to MLflow's limits.

Each method shapes its values now (flattened, cut to MLflow's limits, timestamps taken at the call)
and hands one :class:`~orchestrator.tracking.outbox.Call` to the tracker's outbox, so it never raises
into training during an outage. Kept apart from :mod:`orchestrator.tracking.tracker` (which run)
as :class:`LogCalls`, a base class of :class:`~orchestrator.tracking.tracker.Tracker` (what goes in).
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Literal

from orchestrator.tracking.champion import Score
from orchestrator.tracking.datasets import DatasetRef, dataset_inputs
from orchestrator.tracking.limits import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VALUE,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VALUE,
    chunks,
    flatten,
    mlflow_key,
    split_metrics,
    text,
)
from orchestrator.tracking.models import save_model
from orchestrator.tracking.outbox import Call
from orchestrator.tracking.tables import log_whole_table
from orchestrator.tracking.tags import CONFLICT_TAG_PREFIX

if TYPE_CHECKING:
    import numpy as np
    import torch
    from mlflow import MlflowClient

__all__ = ["PENDING_PREFIX", "LogCalls", "now_ms", "short"]

_log = logging.getLogger(__name__)

PENDING_PREFIX = "pending-"  # run ids handed out before the run could be created (see Tracker)


def now_ms() -> int:
    """Now, as MLflow timestamps are: milliseconds since the epoch."""
    return int(time.time() * 1000)


def short(run_id: str) -> str:
    """A run id as warnings and queue descriptions show it."""
    return run_id[: len(PENDING_PREFIX) + 6] if run_id.startswith(PENDING_PREFIX) else run_id[:8]


class LogCalls:
    """The logging half of :class:`~orchestrator.tracking.tracker.Tracker`, which provides the three below."""

    if TYPE_CHECKING:

        @property
        def client(self) -> MlflowClient: ...

        def resolve(self, run_id: str) -> str: ...

        def _submit(self, call: Call) -> bool: ...

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Flatten (``stages.search.lr``) and truncate params; skip those already logged with the same value.

        MLflow forbids changing a logged param: a different value is not logged, but warned about and
        recorded as tag ``trilevel.param_conflict.<key>`` holding the new value.
        """
        flat = {mlflow_key(k): v[:MAX_PARAM_VALUE] for k, v in flatten(params).items()}
        if not flat:
            return

        def log() -> None:
            from mlflow.entities import Param, RunTag

            client, run = self.client, self.resolve(run_id)
            logged = client.get_run(run).data.params
            new = [Param(k, v) for k, v in flat.items() if k not in logged]
            conflicts = {k: v for k, v in flat.items() if k in logged and logged[k] != v}
            for key, value in conflicts.items():
                _log.warning(
                    "MLflow run %s: param %r already logged as %r, new value %r kept as tag %s%s",
                    short(run_id),
                    key,
                    logged[key],
                    value,
                    CONFLICT_TAG_PREFIX,
                    key,
                )
            tags = [RunTag(mlflow_key(CONFLICT_TAG_PREFIX + k), v[:MAX_TAG_VALUE]) for k, v in conflicts.items()]
            for chunk in chunks(new, MAX_PARAMS_TAGS_PER_BATCH):
                client.log_batch(run, params=chunk, synchronous=True)
            for chunk in chunks(tags, MAX_PARAMS_TAGS_PER_BATCH):
                client.log_batch(run, tags=chunk, synchronous=True)

        record = {"op": "log_params", "run": run_id, "params": flat}
        self._submit(Call(f"log_params run {short(run_id)} ({len(flat)} params)", log, record=record))

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log numeric values (NaN/inf allowed; nested keys join with dots); strings become tags."""
        numeric, texts = split_metrics(metrics)
        if texts:
            self.set_tags(run_id, texts)
        if not numeric:
            return
        from mlflow.entities import Metric

        timestamp = now_ms()
        entries = [Metric(mlflow_key(k), v, timestamp, int(step or 0)) for k, v in numeric.items()]

        def log() -> None:
            for chunk in chunks(entries, MAX_METRICS_PER_BATCH):
                self.client.log_batch(self.resolve(run_id), metrics=chunk, synchronous=True)

        keys = ",".join(list(numeric)[:8]) + (",…" if len(numeric) > 8 else "")
        record = {
            "op": "log_metrics",
            "run": run_id,
            "metrics": [[m.key, m.value, m.timestamp, m.step] for m in entries],
        }
        self._submit(Call(f"log_metrics run {short(run_id)} step {step} [{keys}]", log, record=record))

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Set (or overwrite) tags; values are stringified and truncated to MLflow's limit."""
        if not tags:
            return
        from mlflow.entities import RunTag

        entries = [RunTag(mlflow_key(k), text(v)[:MAX_TAG_VALUE]) for k, v in tags.items()]

        def log() -> None:
            for chunk in chunks(entries, MAX_PARAMS_TAGS_PER_BATCH):
                self.client.log_batch(self.resolve(run_id), tags=chunk, synchronous=True)

        record = {"op": "set_tags", "run": run_id, "tags": {tag.key: tag.value for tag in entries}}
        self._submit(Call(f"set_tags run {short(run_id)} ({len(entries)} tags)", log, record=record))

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """Write `text` as the run artifact `artifact_file` (e.g. ``genotype.json``)."""
        self._submit(
            Call(
                f"log_text run {short(run_id)} {artifact_file}",
                lambda: self.client.log_text(self.resolve(run_id), text, artifact_file),
                record={"op": "log_text", "run": run_id, "text": text, "artifact_file": artifact_file},
            )
        )

    def log_dict(self, run_id: str, dictionary: Mapping[str, Any], artifact_file: str) -> None:
        """Write a JSON/YAML artifact (format from the extension), e.g. the resolved config."""
        data = copy.deepcopy(dict(dictionary))
        self._submit(
            Call(
                f"log_dict run {short(run_id)} {artifact_file}",
                lambda: self.client.log_dict(self.resolve(run_id), data, artifact_file),
                record={"op": "log_dict", "run": run_id, "data": data, "artifact_file": artifact_file},
            )
        )

    def log_table(self, run_id: str, data: Mapping[str, list], artifact_file: str) -> None:
        """A table artifact (columns → values, ``.json``), shown in the UI; logging it again replaces it.

        Not ``MlflowClient.log_table``, which appends to an existing table: a retried call would double
        every row (:mod:`orchestrator.tracking.tables`).
        """
        columns = {key: list(values) for key, values in data.items()}
        self._submit(
            Call(
                f"log_table run {short(run_id)} {artifact_file}",
                lambda: log_whole_table(self.client, self.resolve(run_id), columns, artifact_file),
                record={"op": "log_table", "run": run_id, "data": columns, "artifact_file": artifact_file},
            )
        )

    def log_image(self, run_id: str, image: Any, artifact_file: str) -> None:
        """An image artifact (numpy HxW[xC] array or PIL image) via ``MlflowClient.log_image``."""
        self._submit(
            Call(
                f"log_image run {short(run_id)} {artifact_file}",
                lambda: self.client.log_image(self.resolve(run_id), image, artifact_file=artifact_file),
                record={"op": "log_image", "run": run_id, "image": image, "artifact_file": artifact_file},
            )
        )

    def log_artifact(
        self, run_id: str, local_path: str, artifact_path: str | None = None, *, snapshot: bool = False
    ) -> None:
        """Upload a local file or directory, read when delivered.

        A queued upload needs the path to still exist then; pass `snapshot=True` for a temporary
        path (a local copy of a remote checkpoint): it is copied now and the copy removed once delivered.
        """
        path = str(local_path)
        if not os.path.exists(path):
            _log.warning("MLflow run %s: artifact %s does not exist, not logged", short(run_id), path)
            return
        is_dir = os.path.isdir(path)
        cleanup = None
        if snapshot:
            copy_root = tempfile.mkdtemp(prefix="trilevel-artifact-")
            copied = os.path.join(copy_root, os.path.basename(path.rstrip(os.sep)) or "artifact")
            (shutil.copytree if is_dir else shutil.copy2)(path, copied)
            description, path = path, copied
            cleanup = lambda: shutil.rmtree(copy_root, ignore_errors=True)  # noqa: E731
        else:
            description = path

        def upload() -> None:
            (self.client.log_artifacts if is_dir else self.client.log_artifact)(
                self.resolve(run_id), path, artifact_path
            )

        record = {"op": "log_artifact", "run": run_id, "path": path, "artifact_path": artifact_path}
        self._submit(Call(f"log_artifact run {short(run_id)} {description}", upload, cleanup=cleanup, record=record))

    def log_datasets(self, run_id: str, datasets: Sequence[DatasetRef]) -> None:
        """Log prepared data sets as the run's MLflow dataset inputs (digest: their manifest's fingerprint)."""
        inputs = dataset_inputs(tuple(datasets))
        if inputs:
            self._submit(
                Call(
                    f"log_inputs run {short(run_id)} ({len(inputs)} datasets)",
                    lambda: self.client.log_inputs(self.resolve(run_id), datasets=inputs),
                    record={"op": "log_datasets", "run": run_id, "datasets": [asdict(d) for d in datasets]},
                )
            )

    def log_model(
        self,
        run_id: str,
        model: torch.nn.Module,
        *,
        input_example: np.ndarray,
        name: str = "model",
        io: Literal["tensor", "png"] = "tensor",
        registered_model_name: str | None = None,
        score: Score | None = None,
        step: int = 0,
    ) -> str | None:
        """Log the derived network `model` as an MLflow 3 LoggedModel linked to the run: weights, genotype, code.

        Nothing is pickled (:func:`orchestrator.tracking.models.save_model`): ``io="tensor"`` serves
        float32 N×3×H×W arrays of any size, ``io="png"`` a column ``image`` of PNG bytes (→ ×scale
        PNG). With `registered_model_name` and `score` the model is registered only if it beats the
        registered model's ``champion`` (then the alias moves to it); without `score`, always.

        The upload then uses client APIs only (:mod:`orchestrator.tracking.models`). Errors in the
        model itself raise; an outage queues the upload (the saved copy waits in a temporary
        directory). Returns the model id (``mlflow.pyfunc.load_model(client.get_logged_model(id)
        .artifact_location)``), or None when queued or rejected.
        """
        saved = save_model(
            model,
            input_example=input_example,
            name=name,
            io=io,
            registered_model_name=registered_model_name,
            score=score,
            step=step,
        )
        delivered = self._submit(
            Call(
                f"log_model run {short(run_id)} {name}",
                lambda: saved.upload(self.client, self.resolve(run_id)),
                cleanup=saved.remove,
                record={"op": "log_model", "run": run_id, "saved": saved},
            )
        )
        return saved.model_id if delivered else None
