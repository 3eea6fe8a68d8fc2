"""Fail fast, before any compute: is the tracking backend there, and can we write to it?

A sweep that learns only after hours of training that its MLflow server was a typo has wasted the
hours; these checks name the URI and what to do, within seconds. ``http(s)`` gets one REST request
with no retries, ``sqlite`` a writable directory and a store that opens, any other store one
``search_experiments`` call in a thread that cannot hang the caller.
"""

from __future__ import annotations

import os
import threading
from urllib.parse import urlparse

from orchestrator.tracking.errors import TrackingUnavailable
from orchestrator.tracking.uri import sqlite_file

__all__ = ["check_reachable"]


def check_reachable(tracking_uri: str, timeout_s: float = 10.0) -> None:
    """Raise :class:`TrackingUnavailable`, naming the URI, unless the backend answers within `timeout_s`.

    ``http(s)``: one request to the REST API with no retries (connection refused fails at once);
    ``sqlite``: the database directory must be creatable and writable, then the store must open
    (a first open creates the schema, which may take a while, so it gets at least 60 s); other
    stores: one ``search_experiments`` call.
    """
    scheme = urlparse(tracking_uri).scheme
    if scheme in ("http", "https"):
        _check_http(tracking_uri, timeout_s)
    elif scheme == "sqlite":
        _check_sqlite_path(tracking_uri)
        _check_with_client(tracking_uri, max(timeout_s, 60.0))
    else:
        _check_with_client(tracking_uri, timeout_s)


def _check_sqlite_path(tracking_uri: str) -> None:
    database = sqlite_file(tracking_uri)
    if database is None:
        return
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TrackingUnavailable(
            f"MLflow tracking URI {tracking_uri}: cannot create the directory {database.parent} for the SQLite "
            f"database ({err}). Pick a writable path, e.g. --tracking-uri sqlite:///$PWD/mlflow.db."
        ) from err
    target = database if database.exists() else database.parent
    if not os.access(target, os.W_OK):
        raise TrackingUnavailable(
            f"MLflow tracking URI {tracking_uri}: {target} is not writable. Pick a writable path, "
            "e.g. --tracking-uri sqlite:///$PWD/mlflow.db."
        )


def _check_http(tracking_uri: str, timeout_s: float) -> None:
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    endpoint = "/api/2.0/mlflow/experiments/search"
    try:
        response = http_request(
            get_default_host_creds(tracking_uri),
            endpoint,
            "POST",
            json={"max_results": 1},
            max_retries=0,
            backoff_factor=0,
            timeout=timeout_s,
        )
        verify_rest_response(response, endpoint)
    except Exception as err:
        raise TrackingUnavailable(
            f"MLflow tracking server {tracking_uri} is not reachable ({type(err).__name__}: {err}). "
            "Start it (e.g. `mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow.db`) "
            "or pass another --tracking-uri."
        ) from err


def _check_with_client(tracking_uri: str, timeout_s: float) -> None:
    """Ask the store for one experiment, in a daemon thread so a hung backend costs at most `timeout_s`."""
    from mlflow import MlflowClient

    outcome: list[BaseException | None] = []

    def probe() -> None:
        try:
            MlflowClient(tracking_uri=tracking_uri).search_experiments(max_results=1)
            outcome.append(None)
        except BaseException as err:
            outcome.append(err)

    worker = threading.Thread(target=probe, name="mlflow-reachable", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not outcome:
        raise TrackingUnavailable(f"MLflow tracking URI {tracking_uri} did not answer within {timeout_s:.0f} s.")
    if (err := outcome[0]) is not None:
        raise TrackingUnavailable(
            f"MLflow tracking URI {tracking_uri} is not usable ({type(err).__name__}: {err})."
        ) from err
