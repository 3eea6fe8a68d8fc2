"""Fixtures of the tracking tests: a real MLflow store on SQLite in a temp dir, and a port nothing listens on."""

from __future__ import annotations

import re

import pytest
from mlflow import MlflowClient

from orchestrator.tracking import Tracker
from tests.servers import free_port


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> dict:
    """One SQLite database for these tests (creating its schema takes seconds); tests use their own experiments."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    Tracker.check_reachable(uri)  # creates the schema once
    return {"uri": uri, "root": root, "db": root / "mlflow.db"}


@pytest.fixture
def tracker(store, request, monkeypatch, tmp_path) -> Tracker:
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    experiment = re.sub(r"\W", "_", request.node.name)
    return Tracker(
        store["uri"],
        experiment,
        retries=2,
        backoff_s=0.01,
        max_backoff_s=0.05,
        artifact_location=str(store["root"] / "artifacts" / experiment),
    )


@pytest.fixture
def client(store) -> MlflowClient:
    return MlflowClient(tracking_uri=store["uri"])


@pytest.fixture
def unreachable(monkeypatch) -> str:
    """An http:// URI where nothing listens; MLflow's own HTTP retries off so each attempt fails at once."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    return f"http://127.0.0.1:{free_port()}"
