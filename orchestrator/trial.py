"""One trial: the pipeline pretrain → search → derive → train → evaluate, tracked in MLflow.

`run_trial` is a Ray Tune function trainable (Train V2 forbids `Tuner(trainer)`): it chains one
TorchTrainer run per training stage, each named `<sweep>/<trial>/<stage>` on the storage path, so
re-running a trial (Tune retry, `trilevel resume`) resumes unfinished stages and skips finished
ones. The trial process is the only MLflow writer: one child run per trial, one nested run per
stage, found by tag before being created, ended FINISHED/FAILED/KILLED, never left RUNNING.
"""

from __future__ import annotations

import logging
import os
import posixpath
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from orchestrator.relay import relay_reports
from orchestrator.tracking import Tracker, TrackingUnavailable, flatten, tracked
from search_space.genotype import Genotype
from workers.checkpointing import open_checkpoint
from workers.comparison import comparison_for_sets
from workers.evaluate import evaluate_network, load_derived, load_supervision_teacher
from workers.markers import read_marker, remove_marker, write_marker
from workers.shards import join_storage
from workers.stage_runner import StageResult, run_stage, stage_datasets

__all__ = ["BACKLOG_DIR", "TRAINING_STAGES", "TrialContext", "catch_up", "run_trial"]

TRAINING_STAGES: tuple[str, ...] = ("pretrain", "search", "train")
TRIAL_DONE = "_TRIAL_DONE.json"
BACKLOG_DIR = "tracking-backlog"
STAGE_BOUNDARY_FLUSH_S = 5.0  # between stages a down tracking server may delay training only this long
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a sweep shares; shipped to trials with `tune.with_parameters`."""

    sweep: str
    sweep_run_id: str
    storage: str
    tracking_uri: str
    mlflow_experiment: str
    data: dict[str, Any]  # {"train": path, "val": {name: path}}
    trials: dict[str, dict[str, Any]]  # trial id → {"axes": ..., "experiment": resolved dict, "stages": ...}
    registered_model: str | None = None
    environment: dict[str, str] = field(default_factory=dict)


def stage_run_name(sweep: str, trial: str, stage: str) -> str:
    return posixpath.join(sweep, "stages", trial, stage)


def run_trial(config: dict[str, Any], context: TrialContext) -> None:
    """Tune entry point: `config["trial_id"]` picks the grid point."""
    import ray.tune

    trial_id = config["trial_id"]
    done = read_marker(context.storage, context.sweep, "stages", trial_id, TRIAL_DONE)
    spec = context.trials[trial_id]
    experiment = spec["experiment"]
    tracker = Tracker(context.tracking_uri, context.mlflow_experiment)
    params = flatten(experiment) | {f"axis.{k}": v for k, v in spec["axes"].items()}
    tags = context.environment | {"trilevel.seed": str(experiment["seed"])}
    tags |= {f"trilevel.axis.{k}": str(v) for k, v in spec["axes"].items()}
    trial_run = tracker.trial_run(context.sweep_run_id, context.sweep, trial_id, params=params, tags=tags)
    flush_timeout_s = experiment["tracking"]["flush_timeout_s"]
    if done is not None:  # finished before a driver crash hid that from Tune: report, never redo
        if not _is_finished(tracker, trial_run):
            tracker.finish(trial_run, "FINISHED")
        not_logged = catch_up(tracker, context.storage, context.sweep, trial_id, flush_timeout_s)
        ray.tune.report({"stage": "evaluate", "stages_finished": len(TRAINING_STAGES) + 1, **done} | not_logged)
        return
    with tracked(tracker, trial_run):
        previous: StageResult | None = None
        for stage in TRAINING_STAGES:
            previous = _run_tracked_stage(tracker, context, trial_id, trial_run, stage, spec, previous)
            ray.tune.report({"stage": stage, **_numeric(previous.metrics)})
            tracker.flush(timeout_s=STAGE_BOUNDARY_FLUSH_S)
        assert previous is not None
        final = _evaluate(tracker, context, trial_id, trial_run, spec, previous)
        write_marker(context.storage, final, context.sweep, "stages", trial_id, TRIAL_DONE)
    not_logged = catch_up(tracker, context.storage, context.sweep, trial_id, flush_timeout_s)
    # never the key "done": Tune treats done=True as "stop this trial now", before the run is closed
    ray.tune.report({"stage": "evaluate", "stages_finished": len(TRAINING_STAGES) + 1, **final} | not_logged)


def _is_finished(tracker: Tracker, run_id: str) -> bool:
    if tracker.is_pending(run_id):
        return False
    try:
        return tracker.status(run_id) == "FINISHED"
    except TrackingUnavailable:
        return False  # finishing again is harmless; the call is queued like any other


def catch_up(tracker: Tracker, storage: str, sweep: str, who: str, timeout_s: float) -> dict[str, int]:
    """Deliver what an outage queued, waiting up to `timeout_s`; list what could not be, never lose it silently.

    Returns ``{"tracking_not_logged": N}``. When N > 0, the calls still queued are written to
    ``<storage>/<sweep>/tracking-backlog/<who>.json`` (what, for which run, when) and warned about;
    a later successful catch-up removes that file.
    """
    left = tracker.flush(timeout_s=timeout_s)
    where = (sweep, BACKLOG_DIR, f"{who}.json")
    if left or tracker.dropped:
        report = {
            "tracking_uri": tracker.tracking_uri,
            "not_logged": left,
            "dropped_when_queue_was_full": tracker.dropped,
        }
        write_marker(storage, report, *where)
        _log.warning(
            "MLflow at %s: %d tracking call(s) of %s not logged (%d dropped earlier), listed in %s",
            tracker.tracking_uri,
            len(left),
            who,
            tracker.dropped,
            join_storage(storage, *where),
        )
    else:
        remove_marker(storage, *where)
    return {"tracking_not_logged": len(left) + tracker.dropped}


def _run_tracked_stage(
    tracker: Tracker,
    context: TrialContext,
    trial_id: str,
    trial_run: str,
    stage: str,
    spec: dict[str, Any],
    previous: StageResult | None,
) -> StageResult:
    experiment = spec["experiment"]
    resources = experiment["resources"]
    stage_run = tracker.stage_run(trial_run, context.sweep, trial_id, stage)
    loop_config = dict(spec["stages"][stage])
    if previous is not None:
        loop_config["init_from"] = previous.checkpoint
    if stage == "train" and experiment["stages"]["train"].get("genotype"):
        from search_space.genotype import load_genotype

        loop_config["genotype"] = load_genotype(experiment["stages"]["train"]["genotype"]).to_dict()

    def log_report(metrics: dict[str, Any], checkpoint: str | None) -> None:
        step = int(metrics.get("epoch", 0))
        tracker.log_metrics(stage_run, _numeric(metrics), step=step)
        if "path" in metrics:
            tracker.set_tags(stage_run, {"trilevel.path": metrics["path"]})

    with tracked(tracker, stage_run):
        datasets = stage_datasets(
            stage, context.data["train"], experiment["data"]["scale"], experiment["data"]["data_cpus"]
        )
        with relay_reports(log_report) as relay:
            result = run_stage(
                stage,
                loop_config,
                name=stage_run_name(context.sweep, trial_id, stage),
                storage_path=context.storage,
                datasets=datasets,
                num_workers=resources["workers"][stage],
                use_gpu=resources["gpus_per_worker"] > 0,
                cpus_per_worker=resources["cpus_per_worker"],
                max_failures=resources["max_failures"],
                callbacks=[relay.callback],
            )
        tracker.set_tags(stage_run, {"trilevel.checkpoint": result.checkpoint})
        if stage == "train":  # the derived network's final checkpoint is small: keep a copy with the run
            with open_checkpoint(result.checkpoint) as directory:
                # a remote checkpoint's local copy is temporary: snapshot it in case the upload is queued
                remote = not os.path.isdir(result.checkpoint)
                tracker.log_artifact(stage_run, str(directory), "checkpoint", snapshot=remote)
        if result.genotype is not None:
            genotype = Genotype.from_dict(result.genotype)
            tracker.log_text(stage_run, genotype.to_json(), "genotype.json")
            tracker.log_text(stage_run, genotype.table(), "genotype.md")
            tracker.set_tags(stage_run, {"trilevel.path": str(list(genotype.path))})
    return result


def _evaluate(
    tracker: Tracker,
    context: TrialContext,
    trial_id: str,
    trial_run: str,
    spec: dict[str, Any],
    trained: StageResult,
) -> dict[str, float]:
    """Evaluate the trained network, log the trial's headline numbers, artifacts and model."""
    experiment = spec["experiment"]
    stage_run = tracker.stage_run(trial_run, context.sweep, trial_id, "evaluate")
    with tracked(tracker, stage_run):
        checkpoint = trained.best_checkpoint or trained.checkpoint
        net = load_derived(checkpoint)  # loaded once: evaluated, described and logged as the model
        genotype = net.genotype
        metrics = evaluate_network(
            net,
            context.data["val"],
            experiment["data"]["scale"],
            max_images=experiment["stages"]["val_max_images"],
            teacher=load_supervision_teacher(experiment["supervision"]),  # the teacher's row of the report
        )
        tracker.log_metrics(stage_run, metrics)
        tracker.log_metrics(trial_run, metrics)
        tracker.set_tags(trial_run, {"trilevel.path": str(list(genotype.path)), "trilevel.checkpoint": checkpoint})
        tracker.log_text(trial_run, genotype.to_json(), "genotype.json")
        tracker.log_text(trial_run, genotype.table(), "genotype.md")
        picture = comparison_for_sets(net, context.data["val"], experiment["data"]["scale"])
        if picture is not None:  # bicubic | ours | HR crops: the result as people judge it
            tracker.log_image(trial_run, picture, "comparison.png")
        example = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
        tracker.log_model(trial_run, net, input_example=example, registered_model_name=context.registered_model)
    return _numeric(metrics)


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
