"""The one reader of ``sqlite:///`` URIs (orchestrator.tracking.uri), checked against SQLAlchemy's own parsing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from orchestrator.tracking.uri import (
    DEFAULT_TRACKING_URI,
    absolute_tracking_uri,
    sqlite_artifact_root,
    sqlite_file,
    sqlite_path,
)

URIS = [
    "sqlite:///./trilevel-mlflow.db",
    "sqlite:///mlflow.db",
    "sqlite:////abs/dir/mlflow.db",
    "sqlite:///with%20space/mlflow.db",
    "sqlite:///ro.db?mode=ro&uri=true",
]


@pytest.mark.parametrize("uri", URIS)
def test_the_path_is_the_one_sqlalchemy_opens(uri):
    """MLflow hands the URI to SQLAlchemy: escapes decoded, query dropped, relative to the working directory."""
    assert sqlite_path(uri) == make_url(uri).database
    assert sqlite_file(uri) == Path(os.path.abspath(make_url(uri).database))


@pytest.mark.parametrize("uri", ["sqlite://", "sqlite:///", "sqlite:///:memory:", "http://127.0.0.1:5000", "file:///x"])
def test_no_file_for_memory_and_other_stores(uri):
    assert sqlite_path(uri) is None and sqlite_file(uri) is None and sqlite_artifact_root(uri) is None
    assert absolute_tracking_uri(uri) == uri


def test_relative_databases_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_tracking_uri("sqlite:///runs/mlflow.db") == f"sqlite:///{tmp_path}/runs/mlflow.db"
    assert absolute_tracking_uri("sqlite:///ro.db?mode=ro") == f"sqlite:///{tmp_path}/ro.db?mode=ro"
    assert absolute_tracking_uri("sqlite:////abs/mlflow.db") == "sqlite:////abs/mlflow.db"
    assert absolute_tracking_uri(DEFAULT_TRACKING_URI) == f"sqlite:///{tmp_path}/trilevel-mlflow.db"
    assert sqlite_artifact_root("sqlite:///db/mlflow.db") == (tmp_path / "db" / "mlartifacts").as_uri()
