"""Live reports from the Train runs to their trial (for MLflow) and to the sweep's console.

Train V2 keeps only the metrics that come with a checkpoint in its `Result`, and its callbacks run
in the Train controller, not in the trial. One `ReportHub` actor per sweep (no CPU, created by the
driver) takes every report: `MetricsRelay`, a Train callback, puts each one there tagged with its
trial (a run in the trial's own process calls its `put` directly); `relay_reports` runs a thread in
the trial process that takes its trial's reports and hands each to a sink (the stage's MLflow run),
so the trial stays the only MLflow writer; the driver's console reads the hub's per-trial progress.
Warnings a trial logs also reach the hub, so the console can show them while Ray's own output goes
to the log file.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.train import UserCallback

__all__ = ["HubWarnings", "MetricsRelay", "ReportHub", "relay_reports"]

PROGRESS_KEYS = ("stage", "epoch", "epochs", "loss", "loss_w", "val_psnr", "epoch_s", "steps", "radius", "path")


@ray.remote(num_cpus=0, max_concurrency=4)
class ReportHub:
    """Every trial's reports in arrival order, and the latest progress of each trial."""

    def __init__(self) -> None:
        self._reports: dict[str, list[tuple[dict[str, Any], str | None]]] = {}
        self._progress: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def put(self, trial_id: str, metrics: dict[str, Any], checkpoint: str | None) -> None:
        with self._lock:
            self._reports.setdefault(trial_id, []).append((metrics, checkpoint))
            progress = self._progress.setdefault(trial_id, {})
            progress.update({k: metrics[k] for k in PROGRESS_KEYS if k in metrics})
            progress["state"] = "running"
            progress["updated"] = time.time()

    def take(self, trial_id: str) -> list[tuple[dict[str, Any], str | None]]:
        """The trial's reports not taken yet, oldest first."""
        with self._lock:
            return self._reports.pop(trial_id, [])

    def update(self, trial_id: str, **fields: Any) -> None:
        """Set progress fields of a trial (state: running, evaluating, done; final numbers; warnings)."""
        with self._lock:
            progress = self._progress.setdefault(trial_id, {})
            warning = fields.pop("warning", None)
            if warning:
                progress.setdefault("warnings", []).append(warning)
            progress.update(fields)
            progress["updated"] = time.time()

    def progress(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {trial: dict(fields) for trial, fields in self._progress.items()}


class MetricsRelay(UserCallback):
    """Train callback: puts `(metrics of rank 0, checkpoint path or None)` on the hub after every report."""

    def __init__(self, hub: Any, trial_id: str) -> None:
        self.hub = hub
        self.trial_id = trial_id

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        self.put(dict(metrics[0]) if metrics else {}, None if checkpoint is None else checkpoint.path)

    def put(self, metrics: dict[str, Any], checkpoint: str | None) -> None:
        """Put one report on the hub (also called directly by a run in the trial's process)."""
        with contextlib.suppress(Exception):  # a lost progress report never fails training
            self.hub.put.remote(self.trial_id, metrics, checkpoint)


class relay_reports:
    """Context manager: a relay callback for the trainer and a thread handing each report to `sink`."""

    def __init__(self, sink: Callable[[dict[str, Any], str | None], None], hub: Any, trial_id: str) -> None:
        self.sink = sink
        self.hub = hub
        self.trial_id = trial_id
        self.callback = MetricsRelay(hub, trial_id)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True, name="metrics-relay")

    def __enter__(self) -> relay_reports:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._deliver()  # what arrived after the thread's last look

    def _deliver(self) -> None:
        try:
            reports = ray.get(self.hub.take.remote(self.trial_id), timeout=30)
        except Exception:
            return
        for metrics, path in reports:
            self.sink(metrics, path)

    def _drain(self) -> None:
        while not self._stop.wait(0.5):
            self._deliver()


class HubWarnings(logging.Handler):
    """Forwards WARNING and above of a trial process to the hub, for the console to show."""

    def __init__(self, hub: Any, trial_id: str) -> None:
        super().__init__(logging.WARNING)
        self.hub = hub
        self.trial_id = trial_id

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.hub.update.remote(self.trial_id, warning=record.getMessage())
