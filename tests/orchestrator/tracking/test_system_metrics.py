"""MLflow system metrics of stage runs (issue 20): sampled while a stage's run is open, off by a setting.

Real MLflow monitor (psutil) into a real SQLite store; sampled every 0.2 s instead of 10 s so a test
stage of a second gets several samples.
"""

from __future__ import annotations

import time

import pytest

from orchestrator.tracking.system_metrics import SystemMetrics
from orchestrator.trial import StageRuns


@pytest.fixture(autouse=True)
def _fast_sampling(monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")


def _stage(stage_runs: StageRuns, stage: str) -> str:
    """A stage of ~1 s as the relay reports it: two epochs, the last one finishing the stage."""
    stage_runs.on_report({"stage": stage, "epoch": 0, "loss": 1.0}, None)
    time.sleep(1.0)
    stage_runs.on_report({"stage": stage, "epoch": 1, "loss": 0.5, "stage_finished": True}, None)
    return stage_runs.ids[stage]


def test_stage_runs_get_system_metrics_while_open(tracker, client):
    sweep = tracker.sweep_run("sw")
    trial = tracker.trial_run(sweep, "sw", "t", params={}, tags={})
    stage_runs = StageRuns(tracker, lambda: trial, "sw", "t", SystemMetrics(tracker.tracking_uri))
    run = _stage(stage_runs, "search")
    assert tracker.pending == 0
    metrics = client.get_run(run).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics)
    steps = client.get_metric_history(run, "system/cpu_utilization_percentage")
    assert len(steps) >= 2  # sampled along the stage, not once
    assert stage_runs.system_metrics._monitors == {}  # stopped with the stage's run
    assert client.get_run(run).info.status == "FINISHED"
    assert not any(key.startswith("system/") for key in client.get_run(trial).data.metrics)  # stage runs only


def test_system_metrics_off_by_setting_and_for_placeholder_runs(tracker, client):
    sweep = tracker.sweep_run("sw")
    trial = tracker.trial_run(sweep, "sw", "t", params={}, tags={})
    stage_runs = StageRuns(tracker, lambda: trial, "sw", "t", SystemMetrics(tracker.tracking_uri, enabled=False))
    run = _stage(stage_runs, "search")
    assert tracker.pending == 0
    assert not any(key.startswith("system/") for key in client.get_run(run).data.metrics)
    monitors = SystemMetrics(tracker.tracking_uri)
    monitors.start("pending-0001-search")  # a run not created yet (an outage): nothing to sample into
    assert monitors._monitors == {}
    monitors.stop("pending-0001-search")


def test_the_default_is_on_and_a_setting_turns_it_off():
    from orchestrator.experiment import load_experiment

    assert load_experiment("table8", "tiny").tracking.system_metrics is True
    assert load_experiment("table8", "tiny", ["tracking.system_metrics=false"]).tracking.system_metrics is False
