"""The MLflow tag names this project writes and reads, and the values its own tags take.

One home for them: the tracker writes these tags, reports and status queries read them back
(``MlflowClient.search_runs`` by tag), so a name spelled twice is a query that silently finds nothing.
Imports only the stage list (itself import-free), so any module (and a report that must not load
MLflow) can use it.
"""

from __future__ import annotations

from workers.stage_list import PIPELINE

__all__ = [
    "AXIS_TAG_PREFIX",
    "CHECKPOINT_TAG",
    "COMMAND_TAG",
    "COMPUTED_BY_TAG",
    "COMPUTED_RUN_TAG",
    "CONFLICT_TAG_PREFIX",
    "ERROR_TAG",
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "KINDS",
    "KIND_TAG",
    "PARENT_TAG",
    "PATH_TAG",
    "RUN_STATUSES",
    "SEED_TAG",
    "SOURCE_KEYS",
    "SOURCE_NAME_TAG",
    "SOURCE_TYPE_TAG",
    "STAGES",
    "STAGE_KEY_TAG",
    "STAGE_ORIGIN_TAG",
    "STAGE_TAG",
    "SWEEP_ID_TAG",
    "SWEEP_TAG",
    "TRIAL_TAG",
]

# What a run is and whose it is: find-or-create and every report query on these.
KIND_TAG = "trilevel.kind"  # one of KINDS
SWEEP_TAG = "trilevel.sweep"
SWEEP_ID_TAG = "trilevel.sweep_id"  # the id kept in <storage>/<sweep>/sweep.json: equal names never meet
TRIAL_TAG = "trilevel.trial"
STAGE_TAG = "trilevel.stage"  # one of STAGES
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag (mlflow.utils.mlflow_tags.MLFLOW_PARENT_RUN_ID)
KINDS = ("sweep", "trial", "stage")
STAGES = PIPELINE  # the training stages and evaluate
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")  # how a run may end

# What a trial found and how it ran.
SEED_TAG = "trilevel.seed"
PATH_TAG = "trilevel.path"  # the searched network-level path, e.g. "[0, 0, 0, 1, 0, 1]"
CHECKPOINT_TAG = "trilevel.checkpoint"
AXIS_TAG_PREFIX = "trilevel.axis."  # + a sweep axis, e.g. trilevel.axis.stages.search.lambda_order
ERROR_TAG = "trilevel.error"  # "<type>: <message>" of what ended a run FAILED or KILLED
# The stage store (workers.stage_store): a stage run's key, and whether this trial computed it or reused it.
STAGE_KEY_TAG = "trilevel.stage.key"
STAGE_ORIGIN_TAG = "trilevel.stage.origin"  # computed | reused
COMPUTED_BY_TAG = "trilevel.stage.computed_by"  # <sweep>/<trial> that computed a reused stage
COMPUTED_RUN_TAG = "trilevel.stage.computed_run"  # that trial's stage run id
CONFLICT_TAG_PREFIX = "trilevel.param_conflict."  # + a param key: a new value MLflow would not let us log

# MLflow 3 opens an experiment without a kind on its GenAI view (traces, token usage); ours trains models.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# The command that started a run.
SOURCE_NAME_TAG = "mlflow.source.name"  # the UI's "Source" column (mlflow.utils.mlflow_tags.MLFLOW_SOURCE_NAME)
SOURCE_TYPE_TAG = "mlflow.source.type"
COMMAND_TAG = "trilevel.command"
SOURCE_KEYS = (SOURCE_NAME_TAG, SOURCE_TYPE_TAG, COMMAND_TAG)
