"""A sweep: Ray Tune trials over an experiment's axes (a grid, searched axes, a scheduler), one MLflow parent run.

The driver checks the tracking server before any compute, writes the resolved experiment beside
Tune's state (`<storage>/<sweep>/experiment.yaml`) so `trilevel resume NAME` needs nothing else,
then lets Tune run the trials (`max_concurrent_trials`, held by `orchestrator.trial_limit`; retries
from `FailureConfig`; the `tune:` block's scheduler, search algorithm, samples and callbacks,
`orchestrator.tuning`). Each trial plans itself from the axis values Tune gives it; the driver plans
the grid points first, so a bad value fails before any compute. Resuming uses `Tuner.restore`:
finished trials are not rerun, unfinished ones resume their stages, a search algorithm continues from
its saved state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import posixpath
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from orchestrator.console import SweepConsole

from orchestrator.cluster_lease import hold_on_cluster
from orchestrator.experiment import (
    DEMO,
    RESULT_NEUTRAL_FIELDS,
    Experiment,
    ExperimentError,
    trial_for,
    trial_id,
    trials,
    validate,
)
from orchestrator.memory import trials_survive_memory_kills
from orchestrator.plan import plan_trial, resolve_data
from orchestrator.relay import ReportHub
from orchestrator.sweep_lease import hold_sweep
from orchestrator.tracking import (
    Tracker,
    TrackingUnavailable,
    absolute_tracking_uri,
    flatten,
    run_environment_tags,
    tracked,
)
from orchestrator.tracking.backlog import deliver_backlogs
from orchestrator.tracking.champion import settle_champion_quietly
from orchestrator.tracking.datasets import experiment_datasets
from orchestrator.train_run import start_train_coordinator
from orchestrator.trial import AXES, BACKLOG_DIR, TrialContext, catch_up, run_trial
from orchestrator.tuning import param_space, scheduler, search_algorithm, tune_callbacks
from workers.stage_list import PIPELINE
from workers.storage import join_storage, resolve_uri

__all__ = [
    "EXPERIMENT_FILE",
    "STOPPED",
    "SweepOutcome",
    "continues_saved_sweep",
    "load_sweep_experiment",
    "run_sweep",
]

EXPERIMENT_FILE = "experiment.yaml"
STOPPED = "STOPPED"  # a trial that ended unfinished: stopped early by a scheduler, or by an interrupt


class SweepInterrupted(KeyboardInterrupt):
    """Tune ended its loop on Ctrl-C (SIGINT) or `trilevel stop`: the sweep's run ends KILLED, not FINISHED."""


_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepOutcome:
    name: str
    storage: str
    sweep_run_id: str
    trials: dict[str, str]  # trial id → TERMINATED (finished), STOPPED (by the scheduler) or ERROR
    errors: dict[str, str]
    not_logged: dict[str, int] = dataclass_field(default_factory=dict)  # trial id or "driver" → tracking calls lost
    results: Any = None  # Tune's ResultGrid
    interrupted: bool = False  # Ctrl-C or `trilevel stop`: unfinished trials are STOPPED, the sweep's run KILLED

    @property
    def backlog(self) -> str:
        """Where the lists of tracking calls that could not be delivered are."""
        return _join(self.storage, self.name, BACKLOG_DIR)


_join = join_storage


def absolute_storage(storage: str) -> str:
    """Tune and Train need absolute local paths (URIs such as s3://… pass through); `~` is the user's home."""
    return storage if "://" in storage else os.path.abspath(os.path.expanduser(storage))


def _absolute_path(value: str | None) -> str | None:
    if value is None or "://" in value or value == DEMO:
        return value
    return os.path.abspath(os.path.expanduser(value))


def absolutize(experiment: Experiment) -> Experiment:
    """The experiment with every local relative path made absolute, as the driver sees it.

    Tune runs each trial in its own working directory, so a relative SQLite URI, weights file or
    data folder would silently point somewhere else inside a trial.
    """
    data = experiment.model_dump(mode="json")
    data["storage"] = absolute_storage(data["storage"])
    data["tracking"]["uri"] = absolute_tracking_uri(data["tracking"]["uri"])
    data["supervision"]["weights"] = _absolute_path(data["supervision"]["weights"])
    data["perceptual"]["vgg_weights"] = _absolute_path(data["perceptual"]["vgg_weights"])
    genotype = data["stages"]["train"]["genotype"]
    if genotype and genotype.endswith(".json"):
        data["stages"]["train"]["genotype"] = _absolute_path(genotype)
    data["data"]["train"] = _absolute_path(data["data"]["train"])
    for stage in ("pretrain", "search", "train"):
        data["stages"][stage]["data"] = _absolute_path(data["stages"][stage]["data"])
    for part in ("val", "test"):
        data["data"][part] = {k: _absolute_path(v) for k, v in data["data"][part].items()}
    return validate(data, f"experiment {experiment.name}")


def _check_files(experiment: Experiment) -> None:
    """Weights files the trials will need, checked before any compute starts."""
    needed = [
        ("supervision.weights", experiment.supervision.weights if experiment.supervision.kind == "teacher" else None)
    ]
    losses = {experiment.stages.search.loss, experiment.stages.train.loss}
    if experiment.stages.train.finetune:
        losses.add(experiment.stages.train.finetune.loss)
    if "perceptual" in losses:
        needed.append(("perceptual.vgg_weights", experiment.perceptual.vgg_weights))
    for field, path in needed:
        if path and "://" not in path and not os.path.isfile(path):
            raise ExperimentError(f"{field}: no such file {path}")


def check_storage(storage: str) -> None:
    """Write and remove a probe file under `storage`, so an unwritable path fails before any compute."""
    probe = _join(storage, ".trilevel-write-probe")
    try:
        fs, path = resolve_uri(probe)
        fs.create_dir(posixpath.dirname(path), recursive=True)
        with fs.open_output_stream(path) as stream:
            stream.write(b"ok")
        fs.delete_file(path)
    except (OSError, ValueError) as err:
        raise ExperimentError(f"storage: cannot write to {storage} ({err})") from None


def _write_experiment(experiment: Experiment, storage: str) -> None:
    fs, root = resolve_uri(_join(storage, experiment.name))
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(posixpath.join(root, EXPERIMENT_FILE)) as stream:
        stream.write(yaml.safe_dump(experiment.model_dump(mode="json"), sort_keys=False).encode())


def load_sweep_experiment(name: str, storage: str) -> Experiment:
    """The resolved experiment a sweep was started with (for `resume`, `report`, `status`)."""
    path = _join(absolute_storage(storage), name, EXPERIMENT_FILE)
    fs, root = resolve_uri(path)
    try:
        with fs.open_input_stream(root) as stream:
            data = yaml.safe_load(stream.read().decode())
    except (FileNotFoundError, OSError):
        raise ExperimentError(f"no sweep {name!r} under {storage} (looked for {path})") from None
    return validate(data, path)


def continues_saved_sweep(experiment: Experiment, storage: str) -> bool:
    """True when the existing sweep of this name was started with this same experiment, so it is resumed.

    Why: a re-submitted job (KubeRay re-runs its entrypoint after a head restart) or a re-run command
    must continue the sweep, never dead-end. A *different* experiment under the same name is refused,
    naming the fields that differ and both ways out. Both sides are compared resolved (absolute paths).
    """
    try:
        saved = load_sweep_experiment(experiment.name, storage)
    except (ExperimentError, yaml.YAMLError) as err:
        reason = " ".join(str(err).split())
        raise ExperimentError(
            f"sweep {experiment.name!r} already exists under {storage} but its {EXPERIMENT_FILE} cannot be read "
            f"({reason}): repair {_join(storage, experiment.name, EXPERIMENT_FILE)}, or pick another name (--name)"
        ) from None
    old, new = flatten(saved.model_dump(mode="json")), flatten(experiment.model_dump(mode="json"))
    changed = sorted(
        key for key in old.keys() | new.keys() if old.get(key) != new.get(key) and key not in RESULT_NEUTRAL_FIELDS
    )
    if not changed:
        _log.info("sweep %s exists under %s with the same experiment: resuming it", experiment.name, storage)
        return True
    shown = ", ".join(f"{key}: {old.get(key, '(unset)')} -> {new.get(key, '(unset)')}" for key in changed[:5])
    more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
    raise ExperimentError(
        f"sweep {experiment.name!r} already exists under {storage} with a different experiment ({shown}{more}): "
        f"continue it unchanged with `trilevel resume {experiment.name} --storage {storage}`, or run the changed "
        "experiment under another name (--name)"
    )


def _apply_run_settings(tuner: Any, experiment: Experiment) -> None:
    """A restored sweep runs with the experiment's current concurrency and retries, not the saved ones.

    `Tuner.restore` brings back the TuneConfig/RunConfig pickled at the start; those two fields are
    result-neutral and the reason a user resumes with `--set` (e.g. fewer trials at once after running
    out of memory), so they are set on the restored tuner before it runs. The limit is the scheduler's
    (:mod:`orchestrator.trial_limit`: the restored trials never pass the search algorithm), so the
    scheduler is built again from the experiment (Tune saves no scheduler state: the pickled one is as
    new); a variant generator is built again too, so that its saved state, restored into it, keeps the
    new limit, and Optuna's limiter takes the new limit before its state is restored (a sweep saved with
    Tune's plain ConcurrencyLimiter keeps its saved limit there; the scheduler still holds the new one).
    """
    from ray.tune.search import BasicVariantGenerator

    from orchestrator.trial_limit import UNLIMITED, LimitedSearcher

    internal = tuner._local_tuner
    if internal is None:  # Ray Client mode keeps the tuner remote; the saved settings apply
        return
    resources = experiment.resources
    saved = internal._tune_config
    generator = isinstance(saved.search_alg, BasicVariantGenerator)
    if isinstance(saved.search_alg, LimitedSearcher):
        saved.search_alg.max_concurrent = resources.max_concurrent_trials or UNLIMITED
    internal._tune_config = dataclasses.replace(
        saved,
        max_concurrent_trials=None,  # Tune's own: ignored beside a generator, refused beside another limiter
        scheduler=scheduler(experiment),
        search_alg=search_algorithm(experiment) if generator else saved.search_alg,
    )
    failure = dataclasses.replace(internal._run_config.failure_config, max_failures=resources.max_failures)
    internal._run_config = dataclasses.replace(internal._run_config, failure_config=failure)


def run_sweep(
    experiment: Experiment,
    *,
    resume: bool = False,
    restart_errored: bool = False,
    console: SweepConsole | None = None,
) -> SweepOutcome:
    """Run (or resume) the sweep of `experiment` on the connected Ray cluster.

    `console` (optional) draws the trials' live progress while Tune runs them. The sweep's lease
    (:mod:`orchestrator.sweep_lease`; on object-store storage the cluster's, :mod:`orchestrator.cluster_lease`)
    is held throughout: a second driver of it is refused.
    """
    experiment = absolutize(experiment)
    _check_files(experiment)
    check_storage(experiment.storage)
    Tracker.check_reachable(experiment.tracking.uri)  # before the sweep's folder is made
    storage, name = experiment.storage, experiment.name
    with hold_sweep(storage, name) as identity, hold_on_cluster(storage, name):
        return _run_sweep(experiment, identity, resume, restart_errored, console)


def _run_sweep(
    experiment: Experiment,
    identity: str,
    resume: bool,
    restart_errored: bool,
    console: SweepConsole | None,
) -> SweepOutcome:
    import ray.tune as tune

    trials_survive_memory_kills()
    storage = experiment.storage
    tracker = Tracker(experiment.tracking.uri, experiment.tracking.experiment, sweep_id=identity)
    _deliver_backlogs(tracker, storage, experiment.name)  # what an outage kept from a trial's end: before any trial
    environment = run_environment_tags()
    sweep_dir = _join(storage, experiment.name)
    exists = tune.Tuner.can_restore(sweep_dir)
    if exists and not resume:
        resume = continues_saved_sweep(experiment, storage)
    if resume and not exists:
        raise ExperimentError(f"no sweep {experiment.name!r} to resume under {storage}")
    start_train_coordinator()  # up before the first trial's Train run asks for it
    data = resolve_data(experiment, storage)
    plans = {t.trial_id: plan_trial(t, data, storage, experiment.name) for t in trials(experiment)}  # checked now
    _check_space(experiment)
    if experiment.tune.search.space:  # the trials are what Tune draws: the console learns them as they start
        plans = {}
    tune_config = tune.TuneConfig(
        num_samples=experiment.tune.num_samples,  # the concurrency limit: the scheduler's and the search's
        scheduler=scheduler(experiment),
        search_alg=search_algorithm(experiment),
    )
    callbacks = tune_callbacks(experiment)
    if not resume:
        _write_experiment(experiment, storage)
    sweep_run = tracker.sweep_run(experiment.name, params=flatten(experiment.model_dump(mode="json")), tags=environment)
    context = TrialContext(
        sweep=experiment.name,
        sweep_id=identity,
        sweep_run_id=sweep_run,
        storage=storage,
        tracking_uri=experiment.tracking.uri,
        mlflow_experiment=experiment.tracking.experiment,
        experiment=experiment,
        data=data,
        registered_model=(experiment.tracking.registered_model or experiment.name)
        if experiment.tracking.register_model
        else None,
        system_metrics=experiment.tracking.system_metrics,
        datasets=experiment_datasets(data.train, data.val, data.test),
        environment=environment,
        hub=ReportHub.remote(),
    )
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, context=context), {"cpu": experiment.resources.trial_reservation()}
    )
    interrupted = False
    try:
        with tracked(tracker, sweep_run):
            if resume:
                tuner = tune.Tuner.restore(
                    sweep_dir, trainable, resume_errored=not restart_errored, restart_errored=restart_errored
                )
                _apply_run_settings(tuner, experiment)
            else:
                tuner = tune.Tuner(
                    trainable,
                    param_space=param_space(experiment),
                    tune_config=tune_config,
                    run_config=tune.RunConfig(
                        name=experiment.name,
                        storage_path=storage,
                        failure_config=tune.FailureConfig(max_failures=experiment.resources.max_failures),
                        callbacks=callbacks,
                    ),
                )
            if console is not None:
                console.watch(plans, context.hub)
            try:
                with tune_interrupts() as caught:
                    results = tuner.fit()
            finally:
                if console is not None:
                    console.close()
            statuses, errors, not_logged = {}, {}, {}
            for result in results:
                trial_id = trial_id_of(result.config or {})
                statuses[trial_id] = "ERROR" if result.error else _status(result.metrics or {})
                if result.error:
                    errors[trial_id] = str(result.error).strip().splitlines()[-1][:500]
                if count := int((result.metrics or {}).get("tracking_not_logged", 0)):
                    not_logged[trial_id] = count
            statuses = {trial: statuses[trial] for trial in [*plans, *statuses] if trial in statuses}  # grid order
            tracker.log_metrics(sweep_run, {"trials_finished": sum(s == "TERMINATED" for s in statuses.values())})
            if context.registered_model:  # trials that finished at once may have raced for the alias
                settle_champion_quietly(tracker.client, context.registered_model)
            if caught.interrupted:
                interrupted = True
                stopped = sum(status == STOPPED for status in statuses.values())
                raise SweepInterrupted(f"interrupted: {stopped} trial(s) stopped before finishing")
    except SweepInterrupted:
        pass  # the sweep's run ended KILLED (tracked); its trials' and stages' runs are ended KILLED below
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside Tune's loop: nothing may stay RUNNING
        _end_unfinished(tracker, experiment.name)
        raise
    if count := catch_up(tracker, storage, experiment.name, "driver", experiment.tracking.flush_timeout_s)[
        "tracking_not_logged"
    ]:
        not_logged["driver"] = count
    else:
        _deliver_backlogs(tracker, storage, experiment.name)  # kept by trials that ended during an outage
        _end_unfinished(tracker, experiment.name)
    return SweepOutcome(experiment.name, storage, sweep_run, statuses, errors, not_logged, results, interrupted)


def _deliver_backlogs(tracker: Tracker, storage: str, sweep: str) -> None:
    """Replay the tracking backlogs trials kept on storage (an outage across their end); warn about what is left."""
    try:
        if left := deliver_backlogs(tracker, storage, sweep):
            _log.warning("%d tracking call(s) kept under %s are still not delivered", left, _join(storage, sweep))
    except (TrackingUnavailable, OSError, ValueError, KeyError) as err:  # never a reason not to run the sweep
        _log.warning("tracking backlogs of %s not delivered yet: %s: %s", sweep, type(err).__name__, err)


def _end_unfinished(tracker: Tracker, sweep: str) -> None:
    """End KILLED every run of the sweep still RUNNING: trials stopped by an interrupt, or that crashed."""
    try:
        tracker.end_unfinished(sweep, "KILLED")
    except TrackingUnavailable as err:
        _log.warning("could not close runs left RUNNING by stopped or crashed trials: %s", err)


@dataclass
class _Caught:
    interrupted: bool = False


@contextlib.contextmanager
def tune_interrupts() -> Iterator[_Caught]:
    """Whether Tune's loop inside the block was ended by Ctrl-C (SIGINT) or `trilevel stop` (SIGINT too).

    Tune swallows the signal: `fit()` returns normally, and it then calls the trials it stopped
    TERMINATED (their last report tells them apart from finished ones: :func:`_status`). What it
    does leave behind: its handler, on the first SIGINT, puts back the handler it found. So a marker
    handler is installed here; finding it back in place after `fit()` means Tune caught a SIGINT.
    Outside the main thread (no signal handlers) or with ``TUNE_DISABLE_SIGINT_HANDLER`` nothing is
    detected, and SIGINT raises KeyboardInterrupt as usual.
    """
    caught = _Caught()
    watchable = threading.current_thread() is threading.main_thread() and not int(
        os.getenv("TUNE_DISABLE_SIGINT_HANDLER", "0")
    )
    if not watchable:
        yield caught
        return
    previous = signal.getsignal(signal.SIGINT)

    def marker(signum: int, frame: Any) -> None:  # a second Ctrl-C after Tune's: stop now, as Python would
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, marker)
    try:
        yield caught
        caught.interrupted = signal.getsignal(signal.SIGINT) is marker
    finally:
        signal.signal(signal.SIGINT, previous)


def trial_id_of(config: dict[str, Any]) -> str:
    """The trial id of a Tune config (`{"axes": ...}`; a sweep started before axes were configs: its trial_id)."""
    if AXES in config:
        return trial_id(config[AXES])
    return str(config.get("trial_id", "?"))


def _status(last: dict[str, Any]) -> str:
    """TERMINATED when the trial's last result is its evaluation, else STOPPED (a scheduler ended it early)."""
    return "TERMINATED" if last.get("stages_finished") == len(PIPELINE) else STOPPED


def _check_space(experiment: Experiment) -> None:
    """Each searched axis at its bounds (and each warm-start point) makes a valid trial: fail before compute."""
    grid = {axis: values[0] for axis, values in experiment.sweep.items()}
    samples = [dict(point) for point in experiment.tune.search.points]
    for axis, spec in experiment.tune.search.space.items():
        for value in spec.values or [spec.low, spec.high]:
            samples.append({axis: int(value) if spec.kind == "randint" else value})
    for sample in samples:
        trial_for(experiment, grid | sample)
