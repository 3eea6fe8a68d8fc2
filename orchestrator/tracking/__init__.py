"""MLflow tracking for sweeps, trials and stages: one writer, found before created, never fatal.

One job per module:

* :mod:`~orchestrator.tracking.tracker`: :class:`Tracker` (find-or-create runs of the sweep → trial
  → stage hierarchy) and :func:`tracked` (end a run by how its block ended);
* :mod:`~orchestrator.tracking.log_calls`: what goes into a run (params, metrics, tags, artifacts);
* :mod:`~orchestrator.tracking.models`: model upload as an MLflow 3 LoggedModel;
* :mod:`~orchestrator.tracking.tables`: a table artifact that a second write replaces (not appends to);
* :mod:`~orchestrator.tracking.outbox`: retries (tenacity) and the outage queue, MLflow-free;
* :mod:`~orchestrator.tracking.reachability`: fail fast before any compute;
* :mod:`~orchestrator.tracking.environment`: git commit, versions and command of a run;
* :mod:`~orchestrator.tracking.limits`: MLflow's key/value limits, flattening, filter literals;
* :mod:`~orchestrator.tracking.tags`: the tag names; :mod:`~orchestrator.tracking.uri`: the default
  tracking URI and the one reader of ``sqlite:///`` URIs; :mod:`~orchestrator.tracking.errors`.

Importing the package is cheap: MLflow is imported only when a call needs it.
"""

from orchestrator.tracking.environment import code_provenance, run_environment_tags, source_tags
from orchestrator.tracking.errors import TrackingUnavailable
from orchestrator.tracking.limits import filter_literal, flatten, tag_filter
from orchestrator.tracking.log_calls import PENDING_PREFIX
from orchestrator.tracking.tags import (
    AXIS_TAG_PREFIX,
    CHECKPOINT_TAG,
    COMMAND_TAG,
    CONFLICT_TAG_PREFIX,
    ERROR_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    KIND_TAG,
    KINDS,
    PARENT_TAG,
    PATH_TAG,
    RUN_STATUSES,
    SEED_TAG,
    SOURCE_NAME_TAG,
    SOURCE_TYPE_TAG,
    STAGE_TAG,
    STAGES,
    SWEEP_ID_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
)
from orchestrator.tracking.tracker import Tracker, tracked
from orchestrator.tracking.uri import DEFAULT_TRACKING_URI, absolute_tracking_uri, sqlite_file, sqlite_path

__all__ = [
    "AXIS_TAG_PREFIX",
    "CHECKPOINT_TAG",
    "COMMAND_TAG",
    "CONFLICT_TAG_PREFIX",
    "DEFAULT_TRACKING_URI",
    "ERROR_TAG",
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "KINDS",
    "KIND_TAG",
    "PARENT_TAG",
    "PATH_TAG",
    "PENDING_PREFIX",
    "RUN_STATUSES",
    "SEED_TAG",
    "SOURCE_NAME_TAG",
    "SOURCE_TYPE_TAG",
    "STAGES",
    "STAGE_TAG",
    "SWEEP_ID_TAG",
    "SWEEP_TAG",
    "TRIAL_TAG",
    "Tracker",
    "TrackingUnavailable",
    "absolute_tracking_uri",
    "code_provenance",
    "filter_literal",
    "flatten",
    "run_environment_tags",
    "source_tags",
    "sqlite_file",
    "sqlite_path",
    "tag_filter",
    "tracked",
]
