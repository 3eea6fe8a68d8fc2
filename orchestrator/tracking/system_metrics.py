"""MLflow system metrics (CPU, memory, disk, network, and GPU through NVML) of a stage's run, while it runs.

Why not ``mlflow.start_run(log_system_metrics=True)``: our runs are created through a client bound to
the tracker's URI, never as MLflow's global active run. MLflow's own monitor
(:class:`mlflow.system_metrics.system_metrics_monitor.SystemMetricsMonitor`) takes a run id and a
tracking URI, so it is started here for each stage run and stopped when the stage's run ends (it
also stops by itself once the run is no longer RUNNING). It samples the machine of the process that
tracks the stage: the trial's, which is where a one-worker stage trains. It runs in a daemon
thread, and an MLflow outage only ends it (a warning), never the stage.

Settings: ``tracking.system_metrics`` (off: no monitor); MLflow's environment variables
``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` (seconds, default 10) and
``MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING`` apply as MLflow documents them.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["SystemMetrics"]

_log = logging.getLogger(__name__)


class SystemMetrics:
    """One MLflow system-metrics monitor per run id, started and stopped by the code that owns the run."""

    def __init__(self, tracking_uri: str, enabled: bool = True) -> None:
        self.tracking_uri = tracking_uri
        self.enabled = enabled
        self._monitors: dict[str, Any] = {}

    def start(self, run_id: str) -> None:
        """Start sampling into `run_id` (a real run id; nothing for a placeholder or when disabled)."""
        if not self.enabled or run_id in self._monitors or not _is_run_id(run_id):
            return
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(run_id, tracking_uri=self.tracking_uri)
            monitor.start()
        except Exception as err:  # psutil missing, a monitor that cannot start: the stage goes on without
            _log.warning("MLflow system metrics for run %s not started: %s", run_id[:8], err)
            return
        self._monitors[run_id] = monitor

    def stop(self, run_id: str) -> None:
        """Stop sampling `run_id` and flush what was sampled (nothing if it was never started)."""
        monitor = self._monitors.pop(run_id, None)
        if monitor is not None:
            monitor.finish()

    def stop_all(self) -> None:
        for run_id in list(self._monitors):
            self.stop(run_id)


def _is_run_id(run_id: str) -> bool:
    """MLflow run ids are 32 hex digits; a tracker's placeholder during an outage is not one."""
    return len(run_id) == 32 and all(c in "0123456789abcdef" for c in run_id.lower())
