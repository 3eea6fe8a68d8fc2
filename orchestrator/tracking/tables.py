"""A table artifact that a second write replaces, where ``MlflowClient.log_table`` appends.

Why: MLflow 3.17's ``log_table`` downloads an artifact of the same name if the run has one and writes
the old rows followed by the new ones. A trial's per-image table is logged again whenever its
evaluation runs again (a retry after a crash that followed the upload; a backlog replay, or an outbox
retry, of a call that did reach the server before its answer was lost), and would then hold every
image twice, or once per attempt: a paired comparison over it would count each image n times.

:func:`log_whole_table` writes the same file MLflow writes (pandas' ``split`` JSON without the index,
what ``MlflowClient.load_table`` reads) with ``log_artifact``, which replaces a file of that name, and
records it in the run's ``mlflow.loggedArtifacts`` tag as ``log_table`` does, so the UI still shows it
as a table (in the run's artifacts and in the experiment's evaluation view).
"""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["log_whole_table"]


def log_whole_table(client: MlflowClient, run_id: str, data: Mapping[str, list], artifact_file: str) -> None:
    """Log `data` (column → values) as the table `artifact_file` (``.json``) of `run_id`, replacing any earlier one."""
    import pandas as pd
    from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

    if not artifact_file.endswith(".json"):
        raise ValueError(f"a table artifact is a .json file, got {artifact_file!r}")
    path = posixpath.normpath(artifact_file)
    folder = posixpath.dirname(path) or None
    with tempfile.TemporaryDirectory(prefix="trilevel-table-") as tmp:
        local = os.path.join(tmp, posixpath.basename(path))
        pd.DataFrame(dict(data)).to_json(local, orient="split", index=False, date_format="iso")
        client.log_artifact(run_id, local, folder)
    logged = json.loads(client.get_run(run_id).data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
    entry = {"path": artifact_file, "type": "table"}
    if entry not in logged:
        client.set_tag(run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps([*logged, entry]))
