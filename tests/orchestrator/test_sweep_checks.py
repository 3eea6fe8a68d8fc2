"""What `run_sweep` refuses before any compute: unwritable storage, missing weights, unreachable MLflow."""

from __future__ import annotations

import socket

import pytest

from orchestrator.experiment import ExperimentError, load_experiment
from orchestrator.sweep import run_sweep
from orchestrator.tracking import TrackingUnavailable


def _experiment(tmp_path, **fields):
    defaults = {"storage": str(tmp_path / "runs"), "tracking.uri": f"sqlite:///{tmp_path}/mlflow.db"}
    return load_experiment("table8", "tiny", name="checks", **(defaults | fields))


def test_unwritable_storage_is_refused_before_compute(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ExperimentError, match=r"storage: cannot write to .*a-file/runs"):
        run_sweep(_experiment(tmp_path, storage=str(blocker / "runs")))
    assert not (tmp_path / "mlflow.db").exists()


def test_missing_teacher_weights_are_refused(tmp_path):
    experiment = load_experiment(
        "table8", "tiny", ["supervision.kind=teacher", f"supervision.weights={tmp_path}/nope.pth"],
        name="checks", storage=str(tmp_path / "runs"), **{"tracking.uri": f"sqlite:///{tmp_path}/mlflow.db"},
    )  # fmt: skip
    with pytest.raises(ExperimentError, match=r"supervision.weights: no such file .*nope.pth"):
        run_sweep(experiment)


def test_unreachable_tracking_server_is_refused(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TrackingUnavailable, match=f"127.0.0.1:{port}"):
        run_sweep(_experiment(tmp_path, **{"tracking.uri": f"http://127.0.0.1:{port}"}))
    assert not (tmp_path / "runs" / "checks").exists()
