"""A 2-trial sweep through the real CLI, its driver killed mid-sweep, then `trilevel resume`.

The driver is a separate process (as a user runs it) connected to this session's Ray; SIGKILL
takes it down with its Tune trials. Resume must finish the sweep without rerunning the finished
trial, and MLflow must hold exactly one run per sweep/trial/stage, none left RUNNING.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

STAGES = {"pretrain", "search", "train", "evaluate"}


def _cli(*args: str, address: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator", *args, "--address", address]


def _runs(client: MlflowClient, kind: str) -> list:
    experiment = client.get_experiment_by_name("trilevel")
    if experiment is None:
        return []
    return client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`trilevel.kind` = '{kind}'", max_results=100
    )


@pytest.mark.usefixtures("ray_session")
def test_sweep_killed_then_resumed_with_one_run_per_trial(tmp_path):
    import ray

    address = ray.get_runtime_context().gcs_address
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    storage = str(tmp_path / "runs")
    sweep = [
        "sweep", "table8", "--name", "e2e", "--storage", storage, "--tracking-uri", uri,
        "--set", "sweep={stages.search.lambda_order: [0.0, 0.1]}",
        "--set", "resources.max_concurrent_trials=1",
    ]  # fmt: skip
    log = open(tmp_path / "driver.log", "w")  # noqa: SIM115 - the child writes it while we poll
    driver = subprocess.Popen(_cli(*sweep, address=address), stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    client = MlflowClient(uri)
    deadline = time.monotonic() + 600
    first = None
    while time.monotonic() < deadline and driver.poll() is None:
        finished = [r for r in _runs(client, "trial") if r.info.status == "FINISHED"] if db.exists() else []
        if finished:
            first = finished[0]
            break
        time.sleep(2)
    assert first is not None, (tmp_path / "driver.log").read_text()[-3000:]
    driver.send_signal(signal.SIGKILL)
    driver.wait()

    resumed = subprocess.run(
        _cli("resume", "e2e", "--storage", storage, address=address),
        capture_output=True, text=True, cwd=tmp_path, timeout=900,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "lambda_order=0.0 TERMINATED" in resumed.stdout and "lambda_order=0.1 TERMINATED" in resumed.stdout

    sweeps, trials, stages = _runs(client, "sweep"), _runs(client, "trial"), _runs(client, "stage")
    assert len(sweeps) == 1
    assert sorted(r.data.tags["trilevel.trial"] for r in trials) == ["lambda_order=0.0", "lambda_order=0.1"]
    for trial in trials:
        assert trial.data.tags["mlflow.parentRunId"] == sweeps[0].info.run_id
        assert "psnr/demo" in trial.data.metrics and trial.data.metrics["gflops"] > 0
        assert trial.data.tags["trilevel.path"].startswith("[0")
        mine = [s for s in stages if s.data.tags["mlflow.parentRunId"] == trial.info.run_id]
        assert sorted(s.data.tags["trilevel.stage"] for s in mine) == sorted(STAGES)
        search = next(s for s in mine if s.data.tags["trilevel.stage"] == "search")
        assert {a.path for a in client.list_artifacts(search.info.run_id)} >= {"genotype.json", "genotype.md"}
        assert len(client.get_metric_history(search.info.run_id, "loss_w")) == 2  # one per epoch, live
        train = next(s for s in mine if s.data.tags["trilevel.stage"] == "train")
        saved = {a.path for a in client.list_artifacts(train.info.run_id, "checkpoint")}
        assert saved == {"checkpoint/state.pt", "checkpoint/genotype.json"}
    assert all(r.info.status == "FINISHED" for r in sweeps + trials + stages)
    again = next(r for r in trials if r.info.run_id == first.info.run_id)
    assert again.info.end_time == first.info.end_time, "the finished trial ran again"

    report = subprocess.run(
        [sys.executable, "-m", "orchestrator", "report", "e2e", "--storage", storage, "--tracking-uri", uri],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr[-3000:]
    assert "| λ" in report.stdout and "PSNR demo" in report.stdout
    assert os.path.isfile(os.path.join(storage, "e2e", "report", "pareto.png"))
