"""One trial: pretrain → search → derive → train → evaluate, in as few Train runs as its plan allows.

`run_trial` is a Ray Tune function trainable (Train V2 forbids `Tuner(trainer)`). Its config holds the
values of the sweep's axes (a grid point or what a search algorithm suggested); the trial turns them
into its experiment and plan itself, so both kinds of value run, resume and track alike. Every epoch
of every stage is a Tune result (`orchestrator.tune_reports`): schedulers stop hopeless trials on
them and `ResultGrid` holds the curves; the last result adds the evaluation. It runs each Train
run of its plan (`orchestrator.plan`: usually one for all three training stages): a run with one CPU
worker in this process, any other as a TorchTrainer, so a worker group, the torch import and the
dataset split coordinators are paid at most once per run. Stage boundaries stay visible: every stage
has its own nested MLflow run, opened at its first report and finished at its last (`StageRuns`),
its checkpoints and done marker on the storage path. Re-running a trial (Tune retry, `trilevel
resume`) skips finished Train runs without starting them, and inside a run skips finished stages and
resumes the interrupted one. Evaluate runs in the trial process (CPU runs) or, for GPU runs, in a Ray
task holding a GPU share (`_evaluation`), without another Train start. The trial process is the only
MLflow writer.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from orchestrator.experiment import Experiment, trial_for, trials
from orchestrator.plan import ResolvedData, TrainRunPlan, TrialPlan, plan_trial, stage_steps
from orchestrator.relay import HubWarnings, ReportHub, relay_reports
from orchestrator.shared_stages import SharedStages
from orchestrator.tracking import ERROR_TAG, Tracker, TrackingUnavailable, flatten, tracked
from orchestrator.tracking.backlog import BACKLOG_DIR, keep_backlog
from orchestrator.tracking.champion import Score
from orchestrator.tracking.datasets import DatasetRef
from orchestrator.tracking.models import IMAGE_MODEL
from orchestrator.tracking.system_metrics import SystemMetrics
from orchestrator.tracking.tags import COMPUTED_BY_TAG, COMPUTED_RUN_TAG, STAGE_KEY_TAG, STAGE_ORIGIN_TAG
from orchestrator.train_run import build_datasets, fit_run, run_in_process
from orchestrator.tune_reports import EpochResults, TrainEpochReports, stage_offsets
from search_space.derived import DerivedNetwork
from search_space.genotype import Genotype
from workers.checkpointing import load_state, open_checkpoint
from workers.evaluate import Evaluation, load_derived
from workers.evaluate_on_device import evaluate_checkpoint, evaluate_here
from workers.markers import read_marker, write_marker
from workers.stage_list import EVALUATE, PIPELINE, STAGES
from workers.stage_outputs import StageResult, read_stage_result
from workers.stage_store import ClaimHeld, StageKey

__all__ = ["AXES", "BACKLOG_DIR", "PER_IMAGE_FILE", "StageRuns", "TrialContext", "catch_up", "plan_of", "run_trial"]

TRIAL_DONE = "_TRIAL_DONE.json"
PER_IMAGE_FILE = "per_image.json"  # every test image's PSNR/SSIM (ours, bicubic, teacher), beside TRIAL_DONE
AXES = "axes"  # the key of a trial's config that holds its axis values (dotted field → value)
STAGE_BOUNDARY_FLUSH_S = 5.0  # between Train runs a down tracking server may delay training only this long
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a sweep shares; shipped to trials with `tune.with_parameters`."""

    sweep: str
    sweep_run_id: str
    storage: str
    tracking_uri: str
    mlflow_experiment: str
    experiment: Experiment  # the sweep's, paths absolute; a trial fills in its axis values
    data: ResolvedData  # every data set, resolved and checked once by the driver
    registered_model: str | None = None  # the registry name of the sweep's champion; None: register nothing
    system_metrics: bool = True  # MLflow system metrics of every stage run (tracking.system_metrics)
    datasets: tuple[DatasetRef, ...] = ()  # the trial's training and validation sets, logged as MLflow datasets
    sweep_id: str | None = None  # kept in <storage>/<sweep>/sweep.json; the MLflow runs carry it
    environment: dict[str, str] = field(default_factory=dict)
    hub: Any = None  # the sweep's ReportHub actor (live progress for the console); None: the trial makes its own


def plan_of(config: dict[str, Any], context: TrialContext) -> TrialPlan:
    """The plan of the trial whose Tune config is `config` (`{"axes": {field: value}}`).

    A sweep started before configs held axes named its grid point (`{"trial_id": ...}`): found in the grid.
    """
    if AXES in config:
        trial = trial_for(context.experiment, config[AXES])
    else:
        trial = next(t for t in trials(context.experiment) if t.trial_id == config["trial_id"])
    return plan_trial(trial, context.data, context.storage, context.sweep)


def run_trial(config: dict[str, Any], context: TrialContext) -> None:
    """Tune entry point: the trial of the axis values in `config`."""
    import torch

    torch.set_num_threads(1)  # until a run in this process takes the threads of the CPUs it reserved
    plan = plan_of(config, context)
    trial_id = plan.trial_id
    hub = context.hub if context.hub is not None else ReportHub.remote()
    hub.update.remote(trial_id, stage_steps=stage_steps(plan))  # for the console: a drawn trial has no plan there
    logging.getLogger("orchestrator").addHandler(HubWarnings(hub, trial_id))  # warnings reach the console
    try:
        _run_trial(plan, context, hub)
    except Exception as err:
        hub.update.remote(trial_id, state="failed", error=" ".join(str(err).split())[:300])
        raise
    except SystemExit:  # Tune's scheduler stopped the trial at a report
        hub.update.remote(trial_id, state="stopped")
        raise


def _run_trial(plan: TrialPlan, context: TrialContext, hub: Any) -> None:
    import ray.tune

    trial_id = plan.trial_id
    experiment = plan.experiment
    offsets = stage_offsets(plan)
    results = EpochResults(offsets, experiment.tune.gflops_budget, trial_id)
    done = read_marker(context.storage, context.sweep, "stages", trial_id, TRIAL_DONE)
    tracker = Tracker(context.tracking_uri, context.mlflow_experiment, sweep_id=context.sweep_id)
    params = flatten(experiment.model_dump(mode="json")) | {f"axis.{k}": v for k, v in plan.axes.items()}
    tags = context.environment | {"trilevel.seed": str(experiment.seed)}
    tags |= {f"trilevel.axis.{k}": str(v) for k, v in plan.axes.items()}
    # MLflow's client (seconds of imports in a fresh process) and the trial's run are made while the first
    # stages train, and then what evaluation will import: nothing a stage does waits for them
    creating = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trial-run")
    trial_run = creating.submit(
        tracker.trial_run, context.sweep_run_id, context.sweep, trial_id, params=params, tags=tags
    )
    if context.datasets:  # the run's Datasets in MLflow; after the run is created, in the same thread
        creating.submit(lambda: tracker.log_datasets(trial_run.result(), context.datasets))
    if done is None:
        creating.submit(_warm_up_evaluation)
    creating.shutdown(wait=False)
    flush_timeout_s = experiment.tracking.flush_timeout_s
    finished = {"stage": EVALUATE, "stages_finished": len(PIPELINE), "epochs_done": offsets["total"]}
    if done is not None:  # finished before a driver crash hid that from Tune: report, never redo
        hub.update.remote(trial_id, state="done", stage="done", final=done)
        if not _is_finished(tracker, trial_run.result()):
            tracker.finish(trial_run.result(), "FINISHED")
        not_logged = catch_up(tracker, context.storage, context.sweep, trial_id, flush_timeout_s)
        ray.tune.report(results.final(finished | done | not_logged))
        return
    with tracked(tracker, trial_run.result):
        metrics_monitor = SystemMetrics(context.tracking_uri, enabled=context.system_metrics)
        stage_runs = StageRuns(tracker, trial_run.result, context.sweep, trial_id, metrics_monitor)
        for run in plan.runs:
            _run_tracked(stage_runs, context, plan, run, hub, results)
            last = read_stage_result(plan.outputs, run.stages[-1])
            assert last is not None, f"Train run {run.name} ended without its stages' done markers"
            tracker.flush(timeout_s=STAGE_BOUNDARY_FLUSH_S)
        trained = read_stage_result(plan.outputs, "train")
        assert trained is not None
        hub.update.remote(trial_id, state="evaluating", stage=EVALUATE)
        final = _evaluate(tracker, context, plan, trial_run.result(), trained)
        hub.update.remote(trial_id, state="done", stage="done", final=final)
    # done only once its results are in MLflow or kept on storage as a replayable backlog: a marker written
    # first would let an outage across the trial's end lose its test metrics and model for good
    not_logged = catch_up(tracker, context.storage, context.sweep, trial_id, flush_timeout_s)
    write_marker(context.storage, final, context.sweep, "stages", trial_id, TRIAL_DONE)
    # never the key "done": Tune treats done=True as "stop this trial now", before the run is closed
    ray.tune.report(results.final(finished | final | not_logged))


def _warm_up_evaluation() -> None:
    """Import what evaluation uses (matplotlib, scikit-image, MLflow's model saving: ~4 s in a fresh process).

    Called in a background thread while the stages train, so the trial's end does not wait for it.
    Evaluation imports the same modules itself; should any of this fail, it only costs that time.
    """
    import matplotlib.backends.backend_agg  # the comparison picture
    import matplotlib.figure  # noqa: F401
    import mlflow.pyfunc  # noqa: F401  # the logged models
    import skimage.metrics  # noqa: F401  # SSIM

    with contextlib.suppress(Exception):  # MLflow's private map of installed packages, built at the first model save
        from mlflow.utils.requirements_utils import _init_modules_to_packages_map

        _init_modules_to_packages_map()


def _run_tracked(
    stage_runs: StageRuns, context: TrialContext, plan: TrialPlan, run: TrainRunPlan, hub: Any, results: EpochResults
) -> None:
    """Fit one Train run's stages that neither this trial nor the stage store has; epochs to Tune and stage runs.

    Stored stages are reused and stages another trial is computing are waited for
    (`orchestrator.shared_stages`); what is left runs as one segment of the run at a time.
    """
    import ray.tune

    experiment = plan.experiment
    resources = experiment.resources

    def waiting(stage: str, holder: ClaimHeld) -> None:
        hub.update.remote(plan.trial_id, state="running", stage=f"{stage}: waiting for {holder.owner}")

    shared = SharedStages(f"{context.sweep}/{plan.trial_id}", on_wait=waiting)
    try:
        while (segment := shared.next_segment(run)) is not None:
            datasets = build_datasets(segment, experiment.data.scale, experiment.data.data_cpus)
            try:
                with stage_runs.failing_on_error(), relay_reports(stage_runs.on_report, hub, plan.trial_id) as relay:
                    if segment.in_process:

                        def report(metrics: dict[str, Any], checkpoint: str | None) -> None:
                            relay.callback.put(metrics, checkpoint)  # first: a scheduler's stop ends the trial
                            ray.tune.report(results(metrics, checkpoint))

                        run_in_process(segment, context.storage, datasets, report)
                    else:
                        fit_run(
                            segment,
                            context.storage,
                            datasets,
                            gpus_per_worker=resources.gpus_per_worker,
                            cpus_per_worker=resources.cpus_per_worker,
                            max_failures=resources.max_failures,
                            callbacks=[relay.callback, TrainEpochReports(results)],
                        )
            finally:
                shared.release()
        shared.publish_missing(run)
    finally:
        shared.close()
    store = run.settings.store
    for stage in run.stages:
        result = read_stage_result(plan.outputs, stage)
        if result is not None:
            stage_runs.record(result, None if store is None else store.keys.get(stage))


class StageRuns:
    """The nested MLflow runs of a trial's stages, driven by the Train run's live reports.

    A stage's run is found-or-created at its first report, gets every epoch's metrics (step = epoch)
    and is finished at the report that ends the stage; `record` then adds what the stage left
    (genotype, checkpoint) and finishes it in case the relay missed that report.
    """

    def __init__(
        self,
        tracker: Tracker,
        trial_run: Callable[[], str],
        sweep: str,
        trial_id: str,
        system_metrics: SystemMetrics | None = None,
    ) -> None:
        self.tracker = tracker
        self.system_metrics = system_metrics  # sampled into each stage's run while it is open
        self._trial_run = trial_run  # gives the trial run's id, blocking while the run is being created
        self.sweep = sweep
        self.trial_id = trial_id
        self.ids: dict[str, str] = {}
        self.open_stages: set[str] = set()

    def run_id(self, stage: str) -> str:
        if stage not in self.ids:
            self.ids[stage] = self.tracker.stage_run(self._trial_run(), self.sweep, self.trial_id, stage)
            self.open_stages.add(stage)
            if self.system_metrics is not None:
                self.system_metrics.start(self.ids[stage])  # a placeholder (outage) is skipped
        return self.ids[stage]

    def on_report(self, metrics: dict[str, Any], checkpoint: str | None) -> None:
        """Relay sink: one epoch's report of some stage of the running Train run."""
        stage = metrics.get("stage")
        if stage not in STAGES:
            return
        run_id = self.run_id(stage)
        self.tracker.log_metrics(run_id, _numeric(metrics), step=int(metrics.get("epoch", 0)))
        if "path" in metrics:
            self.tracker.set_tags(run_id, {"trilevel.path": metrics["path"]})
        if metrics.get("stage_finished"):
            if checkpoint:
                self.tracker.set_tags(run_id, {"trilevel.checkpoint": checkpoint})
            self._finish(stage, "FINISHED")

    def record(self, result: StageResult, key: StageKey | None = None) -> None:
        """Log a finished stage's outputs to its run and make sure the run is FINISHED.

        Epochs whose live report never reached MLflow (a driver killed between a report and its
        relay) are filled in from the stage's history, so every epoch is there after a resume.
        A stage reused from the stage store gets its epochs' metrics and tags saying so, with the
        computing trial's stage run id (`trilevel.stage.computed_run`), instead of the same artifacts again.
        """
        run_id = self.run_id(result.stage)
        self._backfill(run_id, result.history)
        self.tracker.set_tags(run_id, {"trilevel.checkpoint": result.checkpoint})
        if key is not None:
            self.tracker.set_tags(run_id, {STAGE_KEY_TAG: key.key})
        if result.origin is not None:
            self._record_reused(run_id, result)
            self._finish(result.stage, "FINISHED", force=True)
            return
        self.tracker.set_tags(run_id, {STAGE_ORIGIN_TAG: "computed"})
        if result.stage == "train":  # the derived network's final checkpoint is small: keep a copy with the run
            with open_checkpoint(result.checkpoint) as directory:
                # a remote checkpoint's local copy is temporary: snapshot it in case the upload is queued
                remote = not os.path.isdir(result.checkpoint)
                self.tracker.log_artifact(run_id, str(directory), "checkpoint", snapshot=remote)
        if result.genotype is not None:
            genotype = Genotype.from_dict(result.genotype)
            self.tracker.log_text(run_id, genotype.to_json(), "genotype.json")
            self.tracker.log_text(run_id, genotype.table(), "genotype.md")
            self.tracker.set_tags(run_id, {"trilevel.path": str(list(genotype.path))})
        self._finish(result.stage, "FINISHED", force=True)

    def _record_reused(self, run_id: str, result: StageResult) -> None:
        origin = result.origin or {}
        by = origin.get("computed_by") or {}
        tags = {
            STAGE_ORIGIN_TAG: "reused",
            COMPUTED_BY_TAG: f"{by.get('sweep')}/{by.get('trial')}",
            "trilevel.stage.entry": str(origin.get("entry")),
        }
        try:
            computed = self.tracker.find_stage_run(str(by.get("sweep")), str(by.get("trial")), result.stage)
        except TrackingUnavailable:
            computed = None
        if computed is not None:
            tags[COMPUTED_RUN_TAG] = computed
        if result.genotype is not None:
            tags["trilevel.path"] = str(list(Genotype.from_dict(result.genotype).path))
        self.tracker.set_tags(run_id, tags)

    def _backfill(self, run_id: str, history: list[dict[str, float]]) -> None:
        try:
            logged = self.tracker.logged_steps(run_id, "epoch")
        except TrackingUnavailable:
            return  # MLflow is down: what was reported live is queued, the rest stays in the marker
        for metrics in history:
            step = int(metrics.get("epoch", -1))
            if step >= 0 and step not in logged:
                self.tracker.log_metrics(run_id, metrics, step=step)

    def _finish(self, stage: str, status: str, force: bool = False) -> None:
        if self.system_metrics is not None and stage in self.ids:
            self.system_metrics.stop(self.ids[stage])
        if stage in self.open_stages or force:
            self.tracker.finish(self.ids[stage], status)
            self.open_stages.discard(stage)

    def failing_on_error(self) -> _FailOpenRuns:
        """Context manager: stage runs still open when the block raises end FAILED (KILLED on Ctrl-C)."""
        return _FailOpenRuns(self)


class _FailOpenRuns:
    def __init__(self, runs: StageRuns) -> None:
        self.runs = runs

    def __enter__(self) -> StageRuns:
        return self.runs

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: object) -> None:
        if err is None:
            return
        status = "FAILED" if isinstance(err, Exception) else "KILLED"
        for stage in sorted(self.runs.open_stages):
            self.runs.tracker.set_tags(self.runs.ids[stage], {ERROR_TAG: f"{type(err).__name__}: {err}"[:5000]})
            self.runs._finish(stage, status)


def _is_finished(tracker: Tracker, run_id: str) -> bool:
    if tracker.is_pending(run_id):
        return False
    try:
        return tracker.status(run_id) == "FINISHED"
    except TrackingUnavailable:
        return False  # finishing again is harmless; the call is queued like any other


def catch_up(tracker: Tracker, storage: str, sweep: str, who: str, timeout_s: float) -> dict[str, int]:
    """Deliver what an outage queued, waiting up to `timeout_s`; keep what could not be on storage, replayable.

    Returns ``{"tracking_not_logged": N}``. When N > 0, the calls still queued are moved to a backlog
    under ``<storage>/<sweep>/tracking-backlog/`` as data, with copies of the files they upload
    (:mod:`orchestrator.tracking.backlog`), and warned about: the sweep's next driver (`trilevel
    resume`) delivers them.
    """
    left = tracker.flush(timeout_s=timeout_s)
    count = len(left) + tracker.dropped
    if left:
        where, kept = keep_backlog(tracker, storage, sweep, who)
        _log.warning(
            "MLflow at %s: %d tracking call(s) of %s not logged yet (%d dropped earlier), kept in %s: "
            "`trilevel resume %s` delivers them",
            tracker.tracking_uri,
            kept,
            who,
            tracker.dropped,
            where,
            sweep,
        )
    return {"tracking_not_logged": count}


def _evaluate(
    tracker: Tracker, context: TrialContext, plan: TrialPlan, trial_run: str, trained: StageResult
) -> dict[str, float]:
    """Evaluate the trained network on the test sets, log the trial's headline numbers, artifacts and model.

    Only `plan.test` is scored here: the validation sets chose the checkpoint and are not reported.
    Every image's scores go to MLflow as a table (``per_image.json`` of the trial run) and to the
    storage path beside the trial's done marker, so arms can be compared image by image.
    """
    experiment = plan.experiment
    stage_run = tracker.stage_run(trial_run, context.sweep, plan.trial_id, EVALUATE)
    with tracked(tracker, stage_run):
        checkpoint = trained.best_checkpoint or trained.checkpoint
        net = load_derived(checkpoint)  # loaded once here: described and logged as the model
        genotype = net.genotype
        evaluation, picture = _evaluation(experiment, checkpoint, net, plan.test)
        metrics = evaluation.metrics | _selection(checkpoint)
        write_marker(
            context.storage,
            {"columns": list(evaluation.table()), "rows": evaluation.per_image},
            context.sweep,
            "stages",
            plan.trial_id,
            PER_IMAGE_FILE,
        )
        tracker.log_table(trial_run, evaluation.table(), PER_IMAGE_FILE)
        tracker.log_metrics(stage_run, metrics)
        tracker.log_metrics(trial_run, metrics)
        tracker.set_tags(trial_run, {"trilevel.path": str(list(genotype.path)), "trilevel.checkpoint": checkpoint})
        tracker.log_text(trial_run, genotype.to_json(), "genotype.json")
        tracker.log_text(trial_run, genotype.table(), "genotype.md")
        if picture is not None:  # bicubic | ours | HR crops: the result as people judge it
            tracker.log_image(trial_run, picture, "comparison.png")
        example = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
        tracker.log_model(trial_run, net, input_example=example)  # tensors in/out: what upscale/export load
        tracker.log_model(  # PNG in, ×scale PNG out: what `mlflow models serve -m models:/NAME@champion` serves
            trial_run,
            net,
            input_example=example,
            name=IMAGE_MODEL,
            io="png",
            registered_model_name=context.registered_model,
            score=Score.of_metrics(metrics, plan.trial_id, context.sweep),
        )
    return _numeric(metrics)


def _evaluation(
    experiment: Experiment, checkpoint: str, net: DerivedNetwork, sets: dict[str, str]
) -> tuple[Evaluation, np.ndarray | None]:
    """Test metrics and comparison picture where the stages trained: the trial's CPU, or a GPU it reserves.

    A CPU run evaluates `net` in this process, as it always did. A GPU run's evaluation is a Ray task
    holding `resources.evaluation_resources()` (one worker's GPU share, at most one GPU, and its CPUs),
    asked for once the stages gave their GPUs back, so a trial never holds more GPUs than its largest
    stage (the pre-flight plans it so). The task fails, naming the node, where torch sees no CUDA.
    """
    scale, supervision = experiment.data.scale, experiment.supervision.model_dump()
    wanted = experiment.resources.evaluation_resources()
    if wanted is None:
        return evaluate_here(net, sets, scale, supervision)
    import ray

    task = ray.remote(evaluate_checkpoint).options(num_cpus=wanted["CPU"], num_gpus=wanted["GPU"], max_retries=0)
    threads = max(1, int(wanted["CPU"]))
    metrics, per_image, picture = ray.get(task.remote(checkpoint, sets, scale, supervision, wanted["GPU"], threads))
    return Evaluation(metrics, per_image), picture


def _selection(checkpoint: str) -> dict[str, float]:
    """The validation PSNR that chose this checkpoint (``val_psnr_selected``): what picks a sweep's best trial.

    Test numbers never choose anything; a checkpoint without a validated best (no val set) gives nothing.
    """
    with open_checkpoint(checkpoint) as directory:
        best = load_state(directory).get("best") or {}
    return {"val_psnr_selected": float(best["val_psnr"])} if "val_psnr" in best else {}


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
