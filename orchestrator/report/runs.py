"""A sweep's runs in MLflow: found by our ``trilevel.*`` tags through an explicit client, and their UI page.

Everything the report reads comes through here: a :class:`mlflow.MlflowClient` bound to the given
tracking URI (no global MLflow state), the experiment looked up without creating anything (a
missing SQLite file is an error, never a new empty database), and ``search_runs`` filtered on our
tags, every page of it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from orchestrator.tracking import KIND_TAG, SWEEP_ID_TAG, SWEEP_TAG, sqlite_path, tag_filter

if TYPE_CHECKING:
    import mlflow.entities
    from mlflow import MlflowClient

__all__ = [
    "NoExperiment",
    "no_runs_error",
    "open_experiment",
    "search_all",
    "sweep_experiment",
    "sweep_filter",
    "ui_hint",
    "ui_url",
]


def sweep_filter(sweep: str | None = None, kind: str | None = None, sweep_id: str | None = None) -> str:
    """A ``search_runs`` filter on our tags, e.g. ``tags.`trilevel.kind` = 'trial' and tags.`trilevel.sweep` = 'x'``.

    With `sweep_id` (kept in ``<storage>/<sweep>/sweep.json``) only that sweep's runs match, not those of
    a sweep of the same name on other storage.
    """
    tags = {**({KIND_TAG: kind} if kind else {}), **({SWEEP_TAG: sweep} if sweep is not None else {})}
    return tag_filter(tags | ({SWEEP_ID_TAG: sweep_id} if sweep_id else {}))


def search_all(client: MlflowClient, experiment_id: str, filter_string: str) -> list[mlflow.entities.Run]:
    """Every live run matching the filter (all pages), oldest first."""
    runs: list[mlflow.entities.Run] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string, max_results=1000, order_by=["attributes.start_time ASC"], page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def no_runs_error(sweep: str, mlflow_experiment: str, tracking_uri: str, why: str = "") -> ValueError:
    """The error for a sweep without tracked runs, naming where it was looked for (and `why`, when known)."""
    suffix = f" ({why})" if why else ""
    return ValueError(
        f"no tracked runs for sweep {sweep!r} in experiment {mlflow_experiment!r} at URI {tracking_uri}{suffix}"
    )


class NoExperiment(ValueError):
    """The tracking URI has no database yet, or no (live) experiment of that name."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def open_experiment(tracking_uri: str, mlflow_experiment: str) -> tuple[MlflowClient, str]:
    """A client bound to `tracking_uri` and the experiment's id (raises :class:`NoExperiment`).

    A missing SQLite file is checked first: opening it through MLflow would create an empty database
    (and take seconds to build its schema) just to find nothing in it.
    """
    db = sqlite_path(tracking_uri)
    if db is not None and not os.path.exists(db):
        raise NoExperiment(f"no MLflow database at {tracking_uri} (no file {db})", f"no database file {db}")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(mlflow_experiment)
    if found is None or found.lifecycle_stage != "active":
        raise NoExperiment(
            f"no MLflow experiment {mlflow_experiment!r} at {tracking_uri}", "the MLflow experiment does not exist"
        )
    return client, found.experiment_id


def sweep_experiment(tracking_uri: str, mlflow_experiment: str, sweep: str) -> tuple[MlflowClient, str]:
    """:func:`open_experiment`, its failure worded as "no tracked runs for sweep …" (a ValueError)."""
    try:
        return open_experiment(tracking_uri, mlflow_experiment)
    except NoExperiment as err:
        raise no_runs_error(sweep, mlflow_experiment, tracking_uri, err.reason) from None


def ui_url(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI page of an experiment's runs (or of one run), opened in the model-training view.

    MLflow 3.17's UI chooses between its GenAI and model-training views with a per-browser toggle that
    starts on GenAI, whatever the experiment's ``mlflow.experimentKind`` tag says; a link with
    ``?workflowType=machine_learning`` opens the runs. A SQLite store has no server: the link is to
    ``mlflow ui``'s default address.
    """
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    page = f"runs/{run_id}" if run_id else "runs"
    return f"{base}/#/experiments/{experiment_id}/{page}?workflowType=machine_learning"


def ui_hint(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """One line for people: where to look in the MLflow UI (and how to start it for a SQLite store)."""
    line = f"MLflow UI: {ui_url(tracking_uri, experiment_id, run_id)}"
    if not tracking_uri.startswith(("http://", "https://")):
        line += f"  (start it with: mlflow ui --backend-store-uri {tracking_uri})"
    return line
