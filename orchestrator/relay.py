"""Live per-epoch metrics from a TorchTrainer run back to the trial process.

Train V2 keeps only the metrics that come with a checkpoint in its `Result`, and its callbacks run
in the Train controller, not in the trial. `MetricsRelay` forwards every report through a Ray queue;
`drain_into` runs in a thread of the trial process and hands each report to a sink (the MLflow
stage run), so the trial stays the only writer to MLflow and the UI shows progress as it happens.
"""

from __future__ import annotations

import contextlib
import queue as std_queue
import threading
from collections.abc import Callable
from typing import Any

from ray.train import UserCallback
from ray.util.queue import Empty, Queue

__all__ = ["MetricsRelay", "relay_reports"]


class MetricsRelay(UserCallback):
    """Puts `(metrics of rank 0, checkpoint path or None)` on a queue after every report."""

    def __init__(self, reports: Queue) -> None:
        self.reports = reports

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        path = None if checkpoint is None else checkpoint.path
        with contextlib.suppress(Exception):
            self.reports.put((dict(metrics[0]) if metrics else {}, path), timeout=10)


class relay_reports:
    """Context manager: a relay callback for the trainer and a thread calling `sink` per report."""

    def __init__(self, sink: Callable[[dict[str, Any], str | None], None]) -> None:
        self.sink = sink
        self.queue = Queue(maxsize=10_000, actor_options={"num_cpus": 0})
        self.callback = MetricsRelay(self.queue)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True, name="metrics-relay")

    def __enter__(self) -> relay_reports:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._drain_remaining()
        self.queue.shutdown()

    def _drain(self) -> None:
        while not self._stop.is_set():
            try:
                metrics, path = self.queue.get(timeout=0.5)
            except (Empty, std_queue.Empty):
                continue
            except Exception:
                return
            self.sink(metrics, path)

    def _drain_remaining(self) -> None:
        while True:
            try:
                metrics, path = self.queue.get_nowait()
            except Exception:
                return
            self.sink(metrics, path)
