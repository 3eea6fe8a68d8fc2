"""MLflow tracking for sweeps, trials and stages: one writer, found before created, never fatal.

Why it looks like this:

* **Hierarchy.** A sweep is a parent run, each trial a child run of it, each stage (pretrain,
  search, train, evaluate) a run nested under its trial. MLflow nests runs through the
  ``mlflow.parentRunId`` tag; our own ``trilevel.*`` tags (:mod:`orchestrator.tracking.tags`) say
  what a run is (``trilevel.kind``) and whose it is (``trilevel.sweep``, ``trilevel.trial``,
  ``trilevel.stage``), so reports and resumes can query them with ``MlflowClient.search_runs``.
* **Find-or-create.** Run names come from ids, never timestamps, and a run is looked up by those
  tags before one is created, so a retried or resumed trial (or stage) writes into the run it had:
  exactly one run per sweep, per (sweep, trial) and per (sweep, trial, stage). A found run that was
  KILLED or FAILED is reopened (RUNNING) because work continues in it; a FINISHED one is left
  FINISHED unless :meth:`Tracker.reopen` is called.
* **Only the orchestrator talks to MLflow**, through an explicit ``MlflowClient`` bound to one
  tracking URI: no ``mlflow.set_tracking_uri``/``mlflow.start_run`` global state, so several
  trackers (or a test and a tracker) never step on each other. Even :meth:`Tracker.log_model` goes
  through client APIs (:mod:`orchestrator.tracking.models`).
* **Resilience.** Tracking must not stop training. Every call goes through the tracker's outbox
  (:mod:`orchestrator.tracking.outbox`): retried with exponential backoff, then queued in memory
  during an outage and delivered in order once the server answers; :meth:`Tracker.flush` retries the
  queue at stage boundaries and at the end. Metric timestamps and end times are taken when the call
  is made, not when it is finally delivered. Trial and stage runs that cannot be found or created
  during an outage are *deferred*: the caller gets a placeholder id (``pending-…``) at once, the
  find-or-create is queued, and every call naming the placeholder is queued behind it and resolved
  to the real run id when delivered, so a stage boundary in an outage does not stop training. The
  sweep run and the queries (status, searches) still raise :class:`TrackingUnavailable`: the driver
  needs their answer. :meth:`Tracker.check_reachable` fails fast, before any compute starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from orchestrator.tracking.environment import run_environment_tags
from orchestrator.tracking.errors import TrackingUnavailable, is_permanent
from orchestrator.tracking.limits import MAX_TAG_VALUE, mlflow_key, tag_filter, text
from orchestrator.tracking.log_calls import PENDING_PREFIX, LogCalls, now_ms, short
from orchestrator.tracking.outbox import Call, Outbox, Permanent
from orchestrator.tracking.reachability import check_reachable
from orchestrator.tracking.tags import (
    ERROR_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    KIND_TAG,
    KINDS,
    PARENT_TAG,
    RUN_STATUSES,
    SOURCE_KEYS,
    STAGE_TAG,
    STAGES,
    SWEEP_ID_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
)
from orchestrator.tracking.uri import sqlite_artifact_root

if TYPE_CHECKING:
    import mlflow.entities
    from mlflow import MlflowClient

__all__ = ["PENDING_PREFIX", "Tracker", "tracked"]

_log = logging.getLogger(__name__)


class Tracker(LogCalls):
    """Find-or-create runs of the sweep → trial → stage hierarchy and log into them, surviving outages.

    Args:
        tracking_uri: ``sqlite:///path/mlflow.db``, ``http(s)://host:port``, ``postgresql://…``, …
        experiment: MLflow experiment name, created on first use.
        retries: attempts per call (1 = no retry) before a logging call is queued / a lookup raises.
        backoff_s: first wait between attempts; doubles each time, capped at ``max_backoff_s``.
        max_backoff_s: cap of one wait, also the longest gap between probes while the server is down.
        artifact_location: artifact root for a newly created experiment (default: the server's; for a
            SQLite store, ``mlartifacts/`` beside the database file).
        max_pending: the queue bound; when full, the oldest queued call is dropped (with a warning).
        sweep_id: the sweep's id (``orchestrator.sweep_lease``): every run this tracker finds or creates
            carries it (tag ``trilevel.sweep_id``) and is found by it, so sweeps of one name on different
            storage never share runs. None: runs are found by sweep name alone.

    For ``http(s)`` URIs the tracker owns retrying: unless ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` /
    ``MLFLOW_HTTP_REQUEST_TIMEOUT`` are set, it sets them (0 retries, 30 s) for this process, since
    MLflow's own defaults (7 retries, backoff factor 2, 120 s) multiply with ours into minutes per call.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str = "trilevel",
        *,
        retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        artifact_location: str | None = None,
        max_pending: int = 10_000,
        sweep_id: str | None = None,
    ) -> None:
        if retries < 1:
            raise ValueError(f"retries must be >= 1 (attempts per call), got {retries}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.retries = retries
        self.backoff_s = max(0.0, backoff_s)
        self.max_backoff_s = max(self.backoff_s, max_backoff_s)
        self.artifact_location = artifact_location
        self.max_pending = max_pending
        self.sweep_id = sweep_id
        if urlparse(tracking_uri).scheme in ("http", "https"):
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        self._setup()

    def _setup(self) -> None:
        self._client_obj: MlflowClient | None = None
        self._experiment_id: str | None = None
        self._env_tags: dict[str, str] | None = None
        self._outbox = Outbox(
            self.tracking_uri,
            retries=self.retries,
            backoff_s=self.backoff_s,
            max_backoff_s=self.max_backoff_s,
            max_pending=self.max_pending,
            is_permanent=is_permanent,
        )
        self._created: dict[str, str] = {}  # placeholder → real run id, once its deferred creation is delivered
        self._trial_sources: dict[str, dict[str, str]] = {}  # trial run id → its source tags, for its stage runs

    # A Tracker travels to Ray workers as its settings; each process builds its own client and queue.
    def __getstate__(self) -> dict[str, Any]:
        keep = (
            "tracking_uri",
            "experiment",
            "retries",
            "backoff_s",
            "max_backoff_s",
            "artifact_location",
            "max_pending",
            "sweep_id",
        )
        return {name: getattr(self, name) for name in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._setup()

    def __repr__(self) -> str:
        return f"Tracker({self.tracking_uri!r}, {self.experiment!r}, pending={self.pending})"

    # ---------------------------------------------------------------------------------------------------------
    # Reachability and plumbing

    @classmethod
    def check_reachable(cls, tracking_uri: str, timeout_s: float = 10.0) -> None:
        """Raise :class:`TrackingUnavailable`, naming the URI, unless the backend answers within `timeout_s`.

        See :func:`orchestrator.tracking.reachability.check_reachable`.
        """
        check_reachable(tracking_uri, timeout_s)

    @property
    def client(self) -> MlflowClient:
        """The ``MlflowClient`` bound to this tracker's URI (created on first use)."""
        if self._client_obj is None:
            from mlflow import MlflowClient

            self._client_obj = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client_obj

    @property
    def pending(self) -> int:
        """Number of tracking calls queued because the backend was unreachable."""
        return self._outbox.pending

    @property
    def dropped(self) -> int:
        """Queued calls lost because the queue was full (oldest first)."""
        return self._outbox.dropped

    def is_pending(self, run_id: str) -> bool:
        """True for a deferred run whose creation has not been delivered yet."""
        return run_id.startswith(PENDING_PREFIX) and run_id not in self._created

    def resolve(self, run_id: str) -> str:
        """The real id of `run_id` (a placeholder's, once created); raises for a placeholder never created."""
        if not run_id.startswith(PENDING_PREFIX):
            return run_id
        try:
            return self._created[run_id]
        except KeyError:
            raise Permanent(f"run {run_id} was never created (its deferred creation failed)") from None

    def _query(self, description: str, fn: Callable[[], Any]) -> Any:
        """Calls whose answer the caller needs (find-or-create, searches): retried, then TrackingUnavailable."""
        try:
            return self._outbox.ask(Call(description, fn))
        except Permanent as err:
            raise TrackingUnavailable(f"MLflow at {self.tracking_uri}: {err}") from err.__cause__
        except Exception as err:
            raise TrackingUnavailable(
                f"MLflow at {self.tracking_uri}: {description} failed after {self.retries} attempt(s): "
                f"{type(err).__name__}: {err}"
            ) from err

    def _submit(self, call: Call) -> bool:
        """Deliver `call` now if possible, else queue it; never raises into training. True when delivered."""
        return self._outbox.submit(call)

    def flush(self, timeout_s: float = 60.0) -> list[str]:
        """Retry queued calls in order for up to `timeout_s`; return descriptions of those still queued."""
        return self._outbox.flush(timeout_s)

    # ---------------------------------------------------------------------------------------------------------
    # Runs

    def _experiment_id_now(self) -> str:
        if self._experiment_id is None:
            client = self.client
            found = client.get_experiment_by_name(self.experiment)
            if found is None:
                from mlflow.exceptions import MlflowException

                try:
                    self._experiment_id = client.create_experiment(
                        self.experiment,
                        artifact_location=self.artifact_location or sqlite_artifact_root(self.tracking_uri),
                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
                    )
                except MlflowException:  # created concurrently by another process
                    found = client.get_experiment_by_name(self.experiment)
                    if found is None:
                        raise
            if found is not None:
                if found.lifecycle_stage != "active":
                    raise Permanent(
                        f"MLflow experiment {self.experiment!r} at {self.tracking_uri} is deleted; restore it "
                        f"(`mlflow experiments restore --experiment-id {found.experiment_id}`) or choose another name"
                    )
                self._experiment_id = found.experiment_id
                if EXPERIMENT_KIND_TAG not in found.tags:  # made before we set a kind: the UI would open on GenAI
                    client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return self._experiment_id

    def experiment_id(self) -> str:
        """The experiment's id, creating the experiment if needed (raises TrackingUnavailable)."""
        return self._query(f"get or create experiment {self.experiment!r}", self._experiment_id_now)

    def _environment(self) -> dict[str, str]:
        if self._env_tags is None:
            self._env_tags = run_environment_tags()
        return self._env_tags

    def _find_or_create(
        self, identity: dict[str, str], run_name: str, tags: Mapping[str, Any], *, defer: bool = False
    ) -> tuple[str, bool]:
        """(run id, created): the oldest live run with these identity tags, else a new one carrying `tags` too.

        With `defer`, an outage yields a placeholder id instead of an error (see the module docstring);
        "created" is then True, since nothing could be logged into the run yet.
        """
        raw_identity = dict(identity) | ({SWEEP_ID_TAG: self.sweep_id} if self.sweep_id else {})

        def find_or_create() -> tuple[str, bool]:
            identity = {k: self.resolve(v) if k == PARENT_TAG else v for k, v in raw_identity.items()}
            client = self.client
            experiment_id = self._experiment_id_now()
            found = client.search_runs(
                [experiment_id], tag_filter(identity), max_results=50, order_by=["attributes.start_time ASC"]
            )
            if not found:
                all_tags = {mlflow_key(k): text(v)[:MAX_TAG_VALUE] for k, v in {**tags, **identity}.items()}
                return client.create_run(experiment_id, run_name=run_name, tags=all_tags).info.run_id, True
            if len(found) > 1:
                _log.warning(
                    "%d MLflow runs match %s; using the oldest (%s)", len(found), identity, found[0].info.run_id
                )
            run = found[0]
            if run.info.status in ("KILLED", "FAILED"):
                client.update_run(run.info.run_id, status="RUNNING")
            return run.info.run_id, False

        description = f"find or create run {run_name!r}"
        if not defer:
            return self._query(description, find_or_create)
        placeholder = f"{PENDING_PREFIX}{uuid.uuid4().hex}"

        def create_later() -> None:
            self._created[placeholder] = find_or_create()[0]

        try:
            delivered, found = self._outbox.now_or_later(
                Call(description, find_or_create),
                Call(
                    f"create run {run_name!r} ({short(placeholder)})",
                    create_later,
                    record={
                        "op": "create_run",
                        "placeholder": placeholder,
                        "identity": raw_identity,
                        "run_name": run_name,
                        "tags": {k: text(v)[:MAX_TAG_VALUE] for k, v in tags.items()},
                    },
                ),
            )
        except Permanent as err:
            raise TrackingUnavailable(f"MLflow at {self.tracking_uri}: {err}") from err.__cause__
        if delivered:
            return found
        _log.warning(
            "MLflow at %s unreachable: run %r will be created when it answers; what is logged into it until then "
            "is queued",
            self.tracking_uri,
            run_name,
        )
        return placeholder, True

    def sweep_run(self, sweep: str, *, params: dict | None = None, tags: dict | None = None) -> str:
        """The sweep's parent run (found by tag, else created); params/tags are logged into it."""
        identity = {KIND_TAG: "sweep", SWEEP_TAG: sweep}
        all_tags = {**self._environment(), **(tags or {})}
        run_id, created = self._find_or_create(identity, sweep, all_tags)
        if not created:
            self.set_tags(run_id, all_tags)
        if params:
            self.log_params(run_id, params)
        return run_id

    def trial_run(self, sweep_run_id: str, sweep: str, trial: str, *, params: dict, tags: dict) -> str:
        """The trial's run, a child of the sweep run; params (flattened) and tags (plus environment) logged.

        Deferred during an outage: the id may be a placeholder (:meth:`is_pending`).
        """
        identity = {KIND_TAG: "trial", SWEEP_TAG: sweep, TRIAL_TAG: trial, PARENT_TAG: sweep_run_id}
        all_tags = {**self._environment(), **(tags or {})}
        run_id, created = self._find_or_create(identity, trial, all_tags, defer=True)
        self._trial_sources[run_id] = {k: all_tags[k] for k in SOURCE_KEYS if k in all_tags}
        if not created:
            self.set_tags(run_id, all_tags)
        if params:
            self.log_params(run_id, params)
        return run_id

    def stage_run(self, trial_run_id: str, sweep: str, trial: str, stage: str) -> str:
        """The stage's run (``<trial>/<stage>``), nested under the trial run; deferred during an outage.

        A new stage run carries the environment tags (commit, versions, host: every run says what code
        made it) and its trial run's source tags (the command that started the sweep; this process may be
        a Ray worker whose own command line says nothing to a user).
        """
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
        identity = {KIND_TAG: "stage", SWEEP_TAG: sweep, TRIAL_TAG: trial, STAGE_TAG: stage, PARENT_TAG: trial_run_id}
        tags = {**self._environment(), **self._trial_sources.get(trial_run_id, {})}
        return self._find_or_create(identity, f"{trial}/{stage}", tags, defer=True)[0]

    def find_stage_run(self, sweep: str, trial: str, stage: str) -> str | None:
        """The id of the (sweep, trial, stage) run, or None (raises TrackingUnavailable)."""
        identity = {KIND_TAG: "stage", SWEEP_TAG: sweep, TRIAL_TAG: trial, STAGE_TAG: stage}
        found = self._search(tag_filter(identity), f"find stage run {trial}/{stage} of {sweep!r}")
        return found[0].info.run_id if found else None

    def reopen(self, run_id: str) -> None:
        """Set a run (typically FINISHED) back to RUNNING, because work continues in it."""
        self._query(
            f"reopen run {short(run_id)}", lambda: self.client.update_run(self.resolve(run_id), status="RUNNING")
        )

    def status(self, run_id: str) -> str:
        """RUNNING, FINISHED, FAILED, KILLED or SCHEDULED (raises TrackingUnavailable)."""
        if self.is_pending(run_id):
            raise TrackingUnavailable(f"MLflow at {self.tracking_uri}: run {short(run_id)} is not created yet")
        return self._query(f"get run {short(run_id)}", lambda: self.client.get_run(self.resolve(run_id)).info.status)

    def logged_steps(self, run_id: str, key: str) -> set[int]:
        """The steps at which `key` was logged to `run_id` (raises TrackingUnavailable)."""
        if self.is_pending(run_id):
            return set()
        history = self._query(
            f"read {key} of run {short(run_id)}", lambda: self.client.get_metric_history(self.resolve(run_id), key)
        )
        return {metric.step for metric in history}

    def runs_of_sweep(self, sweep: str, kind: str | None = None) -> list[mlflow.entities.Run]:
        """Every live run tagged with this sweep (all pages), optionally only one kind: sweep, trial or stage."""
        if kind is not None and kind not in KINDS:
            raise ValueError(f"kind must be sweep, trial or stage, got {kind!r}")
        identity = {SWEEP_TAG: sweep, **({KIND_TAG: kind} if kind else {}), **self._id_filter()}
        return self._search(tag_filter(identity), f"search runs of sweep {sweep!r}")

    def _id_filter(self) -> dict[str, str]:
        return {SWEEP_ID_TAG: self.sweep_id} if self.sweep_id else {}

    def _search(self, filter_string: str, description: str) -> list[mlflow.entities.Run]:
        def search() -> list[mlflow.entities.Run]:
            runs: list[mlflow.entities.Run] = []
            token = None
            while True:
                page = self.client.search_runs(
                    [self._experiment_id_now()],
                    filter_string,
                    max_results=1000,
                    order_by=["attributes.start_time ASC"],
                    page_token=token,
                )
                runs.extend(page)
                token = page.token
                if not token:
                    return runs

        return self._query(description, search)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        """End a run as FINISHED, FAILED or KILLED (end time taken now, even if delivered later)."""
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
        end_time = now_ms()
        self._submit(
            Call(
                f"finish run {short(run_id)} as {status}",
                lambda: self.client.set_terminated(self.resolve(run_id), status=status, end_time=end_time),
                record={"op": "finish", "run": run_id, "status": status, "end_time": end_time},
            )
        )

    def end_unfinished(self, sweep: str, status: str) -> int:
        """Mark every RUNNING run of this sweep (stages, then trials, then the sweep) with `status`; the count.

        For cleanup after Ctrl-C or a crashed driver. Queued calls are flushed first (so a queued
        ``finish`` wins over `status`); finding the runs needs the backend (TrackingUnavailable if
        it is down), while the status updates themselves are queued like any logging call.
        """
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
        if self.pending:  # queued finish() calls come first, so runs that did finish are not marked `status`
            self.flush()
        running = self._search(
            f"{tag_filter({SWEEP_TAG: sweep, **self._id_filter()})} and attributes.status = 'RUNNING'",
            f"search running runs of {sweep!r}",
        )
        order = {"stage": 0, "trial": 1, "sweep": 2}
        running.sort(key=lambda run: order.get(run.data.tags.get(KIND_TAG, ""), 0))
        for run in running:
            self.finish(run.info.run_id, status)
        return len(running)


@contextlib.contextmanager
def tracked(tracker: Tracker, run_id: str | Callable[[], str]) -> Iterator[None]:
    """End `run_id` FINISHED on success, KILLED on Ctrl-C/exit/cancel, FAILED on errors (which re-raise).

    The error's type and message are kept as tag ``trilevel.error``; runs are never left RUNNING
    by a crash in the block (a SIGKILLed process is what :meth:`Tracker.end_unfinished` is for).
    `run_id` may be a callable giving the id (a run created meanwhile), asked for when the block ends.
    """
    import asyncio

    def run() -> str:
        return run_id() if callable(run_id) else run_id

    try:
        yield
    except (KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError) as err:
        tracker.set_tags(run(), {ERROR_TAG: f"{type(err).__name__}: {err}"})
        tracker.finish(run(), "KILLED")
        raise
    except BaseException as err:
        tracker.set_tags(run(), {ERROR_TAG: f"{type(err).__name__}: {err}"})
        tracker.finish(run(), "FAILED")
        raise
    else:
        tracker.finish(run(), "FINISHED")
