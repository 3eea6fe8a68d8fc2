"""MLflow tracking for sweeps, trials and stages: one writer, found before created, never fatal.

Why it looks like this:

* **Hierarchy.** A sweep is a parent run, each trial a child run of it, each stage (pretrain,
  search, train, evaluate) a run nested under its trial. MLflow nests runs through the
  ``mlflow.parentRunId`` tag; our own ``trilevel.*`` tags say what a run is (``trilevel.kind``) and
  whose it is (``trilevel.sweep``, ``trilevel.trial``, ``trilevel.stage``), so reports and resumes
  can query them with ``MlflowClient.search_runs``.
* **Find-or-create.** Run names come from ids, never timestamps, and a run is looked up by those
  tags before one is created, so a retried or resumed trial (or stage) writes into the run it had:
  exactly one run per sweep, per (sweep, trial) and per (sweep, trial, stage). A found run that was
  KILLED or FAILED is reopened (RUNNING) because work continues in it; a FINISHED one is left
  FINISHED unless :meth:`Tracker.reopen` is called.
* **Only the orchestrator talks to MLflow**, through an explicit ``MlflowClient`` bound to one
  tracking URI: no ``mlflow.set_tracking_uri``/``mlflow.start_run`` global state, so several
  trackers (or a test and a tracker) never step on each other. Even :meth:`Tracker.log_model` goes
  through client APIs (``create_logged_model`` → ``log_model_artifacts`` → ``log_outputs`` →
  ``finalize_logged_model``), because ``mlflow.pytorch.log_model`` resolves the *global* tracking
  URI and, without an active run, the *global* experiment.
* **Resilience.** Tracking must not stop training. Every call goes through one retry wrapper
  (exponential backoff, bounded); when a logging call still fails, it is queued in memory (bounded),
  one warning per outage says what is being held back, later calls go straight to the queue (with a
  periodic probe that drains it once the server answers again) and :meth:`Tracker.flush` retries the
  queue at stage boundaries and at the end. Metric timestamps and end times are taken when the call
  is made, not when it is finally delivered. Trial and stage runs that cannot be found or created
  during an outage are *deferred*: the caller gets a placeholder id (``pending-…``) at once, the
  find-or-create is queued, and every call naming the placeholder is queued behind it and resolved
  to the real run id when delivered, so a stage boundary in an outage does not stop training. The
  sweep run and the queries (status, searches) still raise :class:`TrackingUnavailable`: the driver
  needs their answer. :meth:`Tracker.check_reachable` fails fast, before any compute starts.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import importlib.metadata
import json
import logging
import numbers
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlparse

if TYPE_CHECKING:
    import mlflow.entities
    import numpy as np
    import torch
    from mlflow import MlflowClient

__all__ = [
    "COMMAND_TAG",
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "KIND_TAG",
    "PARENT_TAG",
    "PENDING_PREFIX",
    "RUN_STATUSES",
    "SOURCE_NAME_TAG",
    "SOURCE_TYPE_TAG",
    "STAGES",
    "STAGE_TAG",
    "SWEEP_TAG",
    "TRIAL_TAG",
    "Tracker",
    "TrackingUnavailable",
    "filter_literal",
    "flatten",
    "run_environment_tags",
    "source_tags",
    "tracked",
]

_log = logging.getLogger(__name__)

KIND_TAG = "trilevel.kind"
SWEEP_TAG = "trilevel.sweep"
TRIAL_TAG = "trilevel.trial"
STAGE_TAG = "trilevel.stage"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag (mlflow.utils.mlflow_tags.MLFLOW_PARENT_RUN_ID)
# MLflow 3 opens an experiment without a kind on its GenAI view (traces, token usage); ours trains models.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
SOURCE_NAME_TAG = "mlflow.source.name"  # the UI's "Source" column (mlflow.utils.mlflow_tags.MLFLOW_SOURCE_NAME)
SOURCE_TYPE_TAG = "mlflow.source.type"
COMMAND_TAG = "trilevel.command"
_SOURCE_KEYS = (SOURCE_NAME_TAG, SOURCE_TYPE_TAG, COMMAND_TAG)
CONFLICT_TAG_PREFIX = "trilevel.param_conflict."
ERROR_TAG = "trilevel.error"
STAGES = ("pretrain", "search", "train", "evaluate")
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")

# MLflow's limits (mlflow.utils.validation: MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH, MAX_ENTITY_KEY_LENGTH,
# MAX_PARAMS_TAGS_PER_BATCH, MAX_METRICS_PER_BATCH), fixed here so importing this module stays cheap.
_MAX_PARAM_VALUE = 6000
_MAX_TAG_VALUE = 8000
_MAX_KEY = 250
_MAX_PARAMS_TAGS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_INVALID_KEY_CHARS = re.compile(r"[^/\w.\- :]")  # MLflow accepts slashes, alphanumerics, _ . - space and colon
_PACKAGES = ("trilevel-nas", "torch", "ray", "mlflow", "numpy")


class TrackingUnavailable(RuntimeError):
    """The tracking backend cannot be reached (or written) and the caller needs an answer from it."""


class _Permanent(Exception):
    """Marker: an error that retrying cannot fix (bad request, missing run, programming error)."""


@dataclass
class _Call:
    """One queued tracking call: what it does (for warnings and flush reports) and how."""

    description: str
    fn: Callable[[], Any]
    created: float = field(default_factory=time.time)
    cleanup: Callable[[], None] | None = None


def _now_ms() -> int:
    return int(time.time() * 1000)


def _is_permanent(err: BaseException) -> bool:
    """4xx answers (bar 429) and type/value errors fail the same way on every try; the rest may pass later."""
    from mlflow.exceptions import MlflowException

    if isinstance(err, MlflowException):
        status = err.get_http_status_code()
        return 400 <= status < 500 and status != 429
    # A local file that is gone (an artifact whose temporary copy was removed) stays gone.
    return isinstance(err, TypeError | ValueError | KeyError | FileNotFoundError)


def filter_literal(value: str) -> str:
    """A search_runs string literal; names are ids, so a value holding both quote kinds is refused."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"names used in run lookups cannot contain both ' and \": {value!r}")


def _tag_filter(tags: Mapping[str, str]) -> str:
    return " and ".join(f"tags.`{key}` = {filter_literal(value)}" for key, value in tags.items())


def _key(key: str) -> str:
    """A key MLflow accepts: allowed characters only, no empty/'.'/'..' path parts, at most 250 characters."""
    cleaned = _INVALID_KEY_CHARS.sub("_", str(key))
    parts = [part for part in cleaned.split("/") if part not in ("", ".", "..")]
    return ("/".join(parts) or "_")[:_MAX_KEY]


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return json.dumps(list(value), default=str)
    return str(value)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings to ``{"a.b.c": "value"}``; lists/tuples become JSON, everything else ``str()``.

    ``flatten({"stages": {"search": {"lr": 0.1}}}) == {"stages.search.lr": "0.1"}``. An empty nested
    mapping keeps its key (value ``"{}"``) so it stays visible.
    """
    out: dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            if value:
                out.update(flatten(value, name))
            else:
                out[name] = "{}"
        else:
            out[name] = _text(value)
    return out


def _as_number(value: Any) -> float | None:
    """A float for numbers, numpy scalars and one-element tensors/arrays (bools count as 0/1); None otherwise."""
    if isinstance(value, numbers.Real):
        return float(value)
    if callable(getattr(value, "item", None)):
        try:
            item = value.item()
        except (ValueError, RuntimeError):  # more than one element
            return None
        return float(item) if isinstance(item, numbers.Real) else None
    return None


def _split_metrics(metrics: Mapping[str, Any], prefix: str = "") -> tuple[dict[str, float], dict[str, str]]:
    """(numeric metrics, string values for tags); nested mappings flatten with dots; other values are dropped."""
    numeric: dict[str, float] = {}
    texts: dict[str, str] = {}
    for key, value in metrics.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            sub_numeric, sub_texts = _split_metrics(value, name)
            numeric.update(sub_numeric)
            texts.update(sub_texts)
        elif isinstance(value, str):
            texts[name] = value
        elif (number := _as_number(value)) is not None:
            numeric[name] = number
        else:
            _log.debug("tracking: metric %r ignored, %s is not numeric", name, type(value).__name__)
    return numeric, texts


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


PENDING_PREFIX = "pending-"


def _short(run_id: str) -> str:
    return run_id[: len(PENDING_PREFIX) + 6] if run_id.startswith(PENDING_PREFIX) else run_id[:8]


# --------------------------------------------------------------------------------------------------------------
# Environment tags


def _git_commit(source: Path) -> tuple[str, str]:
    """(commit, dirty) of the checkout holding `source`, or ("unknown", "unknown") outside git."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown", "unknown"
    return (commit or "unknown"), ("true" if changed else "false")


def _package_version(name: str, source: Path) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
    if name == "trilevel-nas":  # running from a checkout that is not installed: read its pyproject
        try:
            import tomllib

            with open(source / "pyproject.toml", "rb") as handle:
                return str(tomllib.load(handle)["project"]["version"])
        except (OSError, KeyError, ValueError):
            pass
    return "unknown"


def _command(argv: list[str]) -> list[str]:
    """The command as a user typed it: ``trilevel …`` for the console script and ``python -m orchestrator``."""
    program = Path(argv[0]) if argv else Path("python")
    if program.name == "trilevel" or (program.name == "__main__.py" and program.parent.name == "orchestrator"):
        return ["trilevel", *argv[1:]]
    return [program.name, *argv[1:]]


def source_tags(argv: list[str] | None = None) -> dict[str, str]:
    """MLflow's source tags for the command that runs (`argv`, default ``sys.argv``), e.g. ``trilevel sweep table8``.

    ``mlflow.source.name`` is what the UI's Source column shows, and the UI shows only the part after
    the last ``/``, so paths in it are cut to their file names; ``trilevel.command`` keeps the command
    exactly. ``mlflow.source.type`` is ``LOCAL``, as for any process MLflow's own fluent API tracks.
    """
    words = _command(list(sys.argv if argv is None else argv))
    shown = [os.path.basename(word.rstrip("/")) or word if "/" in word else word for word in words]
    return {
        SOURCE_NAME_TAG: " ".join(shown)[:_MAX_TAG_VALUE],
        SOURCE_TYPE_TAG: "LOCAL",
        COMMAND_TAG: shlex.join(words)[:_MAX_TAG_VALUE],
    }


def run_environment_tags() -> dict[str, str]:
    """Tags that say where a run ran: git commit of the package source, package versions, host, platform.

    Keys: ``trilevel.git_commit``, ``trilevel.git_dirty``, ``mlflow.source.git.commit`` (shown by the
    MLflow UI), ``trilevel.version.<package>`` for trilevel-nas, torch, ray, mlflow, numpy and python,
    ``trilevel.hostname`` and ``trilevel.platform``, and the command's :func:`source_tags`. Nothing is
    imported to read versions.
    """
    source = Path(__file__).resolve().parent.parent
    commit, dirty = _git_commit(source)
    tags = {
        "trilevel.git_commit": commit,
        "trilevel.git_dirty": dirty,
        "trilevel.hostname": socket.gethostname(),
        "trilevel.platform": platform.platform(),
        "trilevel.version.python": platform.python_version(),
    }
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    for package in _PACKAGES:
        tags[f"trilevel.version.{package}"] = _package_version(package, source)
    return tags | source_tags()


# --------------------------------------------------------------------------------------------------------------
# Reachability


def _sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (absolute), or None for other URIs and in-memory stores."""
    path = unquote(tracking_uri[len("sqlite:///") :]) if tracking_uri.startswith("sqlite:///") else ""
    return None if path in ("", ":memory:") else Path(path).expanduser().absolute()


def _check_sqlite_path(tracking_uri: str) -> None:
    database = _sqlite_file(tracking_uri)
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


def _sqlite_artifacts(tracking_uri: str) -> str | None:
    """`mlartifacts/` beside a SQLite database: MLflow's own default is `./mlruns` of whichever directory
    the first run happened to start in, which scatters one store's artifacts across working directories."""
    database = _sqlite_file(tracking_uri)
    return None if database is None else (database.parent / "mlartifacts").as_uri()


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


# --------------------------------------------------------------------------------------------------------------
# Tracker


class Tracker:
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
        if urlparse(tracking_uri).scheme in ("http", "https"):
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        self._setup()

    def _setup(self) -> None:
        self._client_obj: MlflowClient | None = None
        self._experiment_id: str | None = None
        self._env_tags: dict[str, str] | None = None
        self._lock = threading.RLock()
        self._queue: collections.deque[_Call] = collections.deque()
        self._warned_outage = False
        self._dropped = 0
        self._next_probe = 0.0
        self._probe_wait = self.backoff_s
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
        return len(self._queue)

    @property
    def dropped(self) -> int:
        """Queued calls lost because the queue was full (oldest first)."""
        return self._dropped

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
            raise _Permanent(f"run {run_id} was never created (its deferred creation failed)") from None

    def _wait(self, attempt: int) -> float:
        return min(self.backoff_s * (2**attempt), self.max_backoff_s)

    def _attempt(self, call: _Call, attempts: int, deadline: float | None = None) -> Any:
        """Run `call` up to `attempts` times with exponential backoff; permanent errors raise at once."""
        for attempt in range(attempts):
            try:
                return call.fn()
            except _Permanent:
                raise
            except Exception as err:
                if _is_permanent(err):
                    raise _Permanent(f"{call.description}: {type(err).__name__}: {err}") from err
                last = attempt == attempts - 1
                remaining = None if deadline is None else deadline - time.monotonic()
                if last or (remaining is not None and remaining <= 0):
                    raise
                wait = self._wait(attempt)
                time.sleep(wait if remaining is None else min(wait, remaining))
        raise AssertionError("unreachable")  # pragma: no cover

    def _query(self, description: str, fn: Callable[[], Any]) -> Any:
        """Calls whose answer the caller needs (find-or-create, searches): retried, then TrackingUnavailable."""
        with self._lock:
            try:
                return self._attempt(_Call(description, fn), self.retries)
            except _Permanent as err:
                raise TrackingUnavailable(f"MLflow at {self.tracking_uri}: {err}") from err.__cause__
            except Exception as err:
                raise TrackingUnavailable(
                    f"MLflow at {self.tracking_uri}: {description} failed after {self.retries} attempt(s): "
                    f"{type(err).__name__}: {err}"
                ) from err

    def _enqueue(self, call: _Call) -> None:
        if len(self._queue) >= self.max_pending:
            lost = self._queue.popleft()
            if lost.cleanup is not None:
                lost.cleanup()
            if self._dropped == 0:
                _log.warning(
                    "MLflow tracking queue full (%d calls); dropping the oldest, starting with: %s",
                    self.max_pending,
                    lost.description,
                )
            self._dropped += 1
        self._queue.append(call)

    def _drain(self, attempts: int, deadline: float | None = None) -> bool:
        """Send queued calls in order; stop at the first that still fails. True when the queue is empty."""
        while self._queue:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            call = self._queue[0]
            try:
                self._attempt(call, attempts, deadline)
            except _Permanent as err:
                _log.warning("MLflow rejected a queued tracking call, dropped: %s", err)
            except Exception:
                return False
            self._queue.popleft()
            if call.cleanup is not None:
                call.cleanup()
        if self._warned_outage:
            _log.warning("MLflow at %s answers again; queued tracking calls delivered", self.tracking_uri)
            self._warned_outage = False
        self._probe_wait = self.backoff_s
        return True

    def _submit(self, call: _Call) -> bool:
        """Deliver `call` now if possible, else queue it; never raises into training. True when delivered."""
        with self._lock:
            if self._queue:
                # Outage mode: keep order; probe now and then (growing gaps) instead of waiting on every call.
                if time.monotonic() < self._next_probe:
                    self._enqueue(call)
                    return False
                if not self._drain(attempts=1):
                    self._enqueue(call)
                    self._probe_wait = min(max(self._probe_wait * 2, self.backoff_s), self.max_backoff_s)
                    self._next_probe = time.monotonic() + self._probe_wait
                    return False
            try:
                self._attempt(call, self.retries)
            except _Permanent as err:
                _log.warning("MLflow rejected a tracking call, not logged: %s", err)
                if call.cleanup is not None:
                    call.cleanup()
                return False
            except Exception as err:
                self._start_outage(call, err)
                return False
            if call.cleanup is not None:
                call.cleanup()
            return True

    def _start_outage(self, call: _Call, err: BaseException) -> None:
        """Queue the first call that failed for good, warning once per outage."""
        if not self._warned_outage:
            _log.warning(
                "MLflow at %s unreachable after %d attempt(s) (%s: %s); training continues, tracking "
                "calls are queued in memory (first not logged: %s) and retried by flush()",
                self.tracking_uri,
                self.retries,
                type(err).__name__,
                err,
                call.description,
            )
            self._warned_outage = True
        self._enqueue(call)
        self._probe_wait = self.backoff_s
        self._next_probe = time.monotonic() + self._probe_wait

    def flush(self, timeout_s: float = 60.0) -> list[str]:
        """Retry queued calls in order for up to `timeout_s`; return descriptions of those still queued."""
        with self._lock:
            if self._queue:
                self._drain(attempts=self.retries, deadline=time.monotonic() + timeout_s)
            return [call.description for call in self._queue]

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
                        artifact_location=self.artifact_location or _sqlite_artifacts(self.tracking_uri),
                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
                    )
                except MlflowException:  # created concurrently by another process
                    found = client.get_experiment_by_name(self.experiment)
                    if found is None:
                        raise
            if found is not None:
                if found.lifecycle_stage != "active":
                    raise _Permanent(
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
        raw_identity = dict(identity)

        def find_or_create() -> tuple[str, bool]:
            identity = {k: self.resolve(v) if k == PARENT_TAG else v for k, v in raw_identity.items()}
            client = self.client
            experiment_id = self._experiment_id_now()
            found = client.search_runs(
                [experiment_id], _tag_filter(identity), max_results=50, order_by=["attributes.start_time ASC"]
            )
            if not found:
                all_tags = {_key(k): _text(v)[:_MAX_TAG_VALUE] for k, v in {**tags, **identity}.items()}
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
        with self._lock:
            if not self._queue or self._drain(attempts=1):
                try:
                    return self._attempt(_Call(description, find_or_create), self.retries)
                except _Permanent as err:
                    raise TrackingUnavailable(f"MLflow at {self.tracking_uri}: {err}") from err.__cause__
                except Exception as err:
                    failure: BaseException | None = err
            else:
                failure = None
            placeholder = f"{PENDING_PREFIX}{uuid.uuid4().hex}"

            def create_later() -> None:
                self._created[placeholder] = find_or_create()[0]

            call = _Call(f"create run {run_name!r} ({_short(placeholder)})", create_later)
            if failure is None:
                self._enqueue(call)
            else:
                self._start_outage(call, failure)
            _log.warning(
                "MLflow at %s unreachable: run %r will be created when it answers; what is logged into it "
                "until then is queued",
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
        self._trial_sources[run_id] = {k: all_tags[k] for k in _SOURCE_KEYS if k in all_tags}
        if not created:
            self.set_tags(run_id, all_tags)
        if params:
            self.log_params(run_id, params)
        return run_id

    def stage_run(self, trial_run_id: str, sweep: str, trial: str, stage: str) -> str:
        """The stage's run (``<trial>/<stage>``), nested under the trial run; deferred during an outage.

        A new stage run carries its trial run's source tags (the command that started the sweep; this
        process may be a Ray worker whose own command line says nothing to a user).
        """
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
        identity = {KIND_TAG: "stage", SWEEP_TAG: sweep, TRIAL_TAG: trial, STAGE_TAG: stage, PARENT_TAG: trial_run_id}
        tags = self._trial_sources.get(trial_run_id, {})
        return self._find_or_create(identity, f"{trial}/{stage}", tags, defer=True)[0]

    def reopen(self, run_id: str) -> None:
        """Set a run (typically FINISHED) back to RUNNING, because work continues in it."""
        self._query(
            f"reopen run {_short(run_id)}", lambda: self.client.update_run(self.resolve(run_id), status="RUNNING")
        )

    def status(self, run_id: str) -> str:
        """RUNNING, FINISHED, FAILED, KILLED or SCHEDULED (raises TrackingUnavailable)."""
        if self.is_pending(run_id):
            raise TrackingUnavailable(f"MLflow at {self.tracking_uri}: run {_short(run_id)} is not created yet")
        return self._query(f"get run {_short(run_id)}", lambda: self.client.get_run(self.resolve(run_id)).info.status)

    def runs_of_sweep(self, sweep: str, kind: str | None = None) -> list[mlflow.entities.Run]:
        """Every live run tagged with this sweep (all pages), optionally only one kind: sweep, trial or stage."""
        if kind is not None and kind not in ("sweep", "trial", "stage"):
            raise ValueError(f"kind must be sweep, trial or stage, got {kind!r}")
        identity = {SWEEP_TAG: sweep, **({KIND_TAG: kind} if kind else {})}
        return self._search(_tag_filter(identity), f"search runs of sweep {sweep!r}")

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
        end_time = _now_ms()
        self._submit(
            _Call(
                f"finish run {_short(run_id)} as {status}",
                lambda: self.client.set_terminated(self.resolve(run_id), status=status, end_time=end_time),
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
            f"{_tag_filter({SWEEP_TAG: sweep})} and attributes.status = 'RUNNING'", f"search running runs of {sweep!r}"
        )
        order = {"stage": 0, "trial": 1, "sweep": 2}
        running.sort(key=lambda run: order.get(run.data.tags.get(KIND_TAG, ""), 0))
        for run in running:
            self.finish(run.info.run_id, status)
        return len(running)

    # ---------------------------------------------------------------------------------------------------------
    # Logging (never raises into training on an outage; see module docstring)

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Flatten (``stages.search.lr``) and truncate params; skip those already logged with the same value.

        MLflow forbids changing a logged param: a different value is not logged, but warned about and
        recorded as tag ``trilevel.param_conflict.<key>`` holding the new value.
        """
        flat = {_key(k): v[:_MAX_PARAM_VALUE] for k, v in flatten(params).items()}
        if not flat:
            return

        def log() -> None:
            from mlflow.entities import Param, RunTag

            client, run = self.client, self.resolve(run_id)
            logged = client.get_run(run).data.params
            new = [Param(k, v) for k, v in flat.items() if k not in logged]
            conflicts = {k: v for k, v in flat.items() if k in logged and logged[k] != v}
            for key, value in conflicts.items():
                _log.warning(
                    "MLflow run %s: param %r already logged as %r, new value %r kept as tag %s%s",
                    _short(run_id),
                    key,
                    logged[key],
                    value,
                    CONFLICT_TAG_PREFIX,
                    key,
                )
            tags = [RunTag(_key(CONFLICT_TAG_PREFIX + k), v[:_MAX_TAG_VALUE]) for k, v in conflicts.items()]
            for chunk in _chunks(new, _MAX_PARAMS_TAGS_PER_BATCH):
                client.log_batch(run, params=chunk, synchronous=True)
            for chunk in _chunks(tags, _MAX_PARAMS_TAGS_PER_BATCH):
                client.log_batch(run, tags=chunk, synchronous=True)

        self._submit(_Call(f"log_params run {_short(run_id)} ({len(flat)} params)", log))

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log numeric values (NaN/inf allowed; nested keys join with dots); strings become tags."""
        numeric, texts = _split_metrics(metrics)
        if texts:
            self.set_tags(run_id, texts)
        if not numeric:
            return
        from mlflow.entities import Metric

        timestamp = _now_ms()
        entries = [Metric(_key(k), v, timestamp, int(step or 0)) for k, v in numeric.items()]

        def log() -> None:
            for chunk in _chunks(entries, _MAX_METRICS_PER_BATCH):
                self.client.log_batch(self.resolve(run_id), metrics=chunk, synchronous=True)

        keys = ",".join(list(numeric)[:8]) + (",…" if len(numeric) > 8 else "")
        self._submit(_Call(f"log_metrics run {_short(run_id)} step {step} [{keys}]", log))

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Set (or overwrite) tags; values are stringified and truncated to MLflow's limit."""
        if not tags:
            return
        from mlflow.entities import RunTag

        entries = [RunTag(_key(k), _text(v)[:_MAX_TAG_VALUE]) for k, v in tags.items()]

        def log() -> None:
            for chunk in _chunks(entries, _MAX_PARAMS_TAGS_PER_BATCH):
                self.client.log_batch(self.resolve(run_id), tags=chunk, synchronous=True)

        self._submit(_Call(f"set_tags run {_short(run_id)} ({len(entries)} tags)", log))

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """Write `text` as the run artifact `artifact_file` (e.g. ``genotype.json``)."""
        self._submit(
            _Call(
                f"log_text run {_short(run_id)} {artifact_file}",
                lambda: self.client.log_text(self.resolve(run_id), text, artifact_file),
            )
        )

    def log_dict(self, run_id: str, dictionary: Mapping[str, Any], artifact_file: str) -> None:
        """Write a JSON/YAML artifact (format from the extension), e.g. the resolved config."""
        data = copy.deepcopy(dict(dictionary))
        self._submit(
            _Call(
                f"log_dict run {_short(run_id)} {artifact_file}",
                lambda: self.client.log_dict(self.resolve(run_id), data, artifact_file),
            )
        )

    def log_table(self, run_id: str, data: Mapping[str, list], artifact_file: str) -> None:
        """A table artifact (``MlflowClient.log_table``: columns → values, ``.json``), shown in the UI."""
        columns = {key: list(values) for key, values in data.items()}
        self._submit(
            _Call(
                f"log_table run {_short(run_id)} {artifact_file}",
                lambda: self.client.log_table(self.resolve(run_id), columns, artifact_file),
            )
        )

    def log_image(self, run_id: str, image: Any, artifact_file: str) -> None:
        """An image artifact (numpy HxW[xC] array or PIL image) via ``MlflowClient.log_image``."""
        self._submit(
            _Call(
                f"log_image run {_short(run_id)} {artifact_file}",
                lambda: self.client.log_image(self.resolve(run_id), image, artifact_file=artifact_file),
            )
        )

    def log_artifact(
        self, run_id: str, local_path: str, artifact_path: str | None = None, *, snapshot: bool = False
    ) -> None:
        """Upload a local file or directory, read when delivered.

        A queued upload needs the path to still exist then; pass `snapshot=True` for a temporary
        path (a local copy of a remote checkpoint): it is copied now and the copy removed once delivered.
        """
        path = str(local_path)
        if not os.path.exists(path):
            _log.warning("MLflow run %s: artifact %s does not exist, not logged", _short(run_id), path)
            return
        is_dir = os.path.isdir(path)
        cleanup = None
        if snapshot:
            copy_root = tempfile.mkdtemp(prefix="trilevel-artifact-")
            copied = os.path.join(copy_root, os.path.basename(path.rstrip(os.sep)) or "artifact")
            (shutil.copytree if is_dir else shutil.copy2)(path, copied)
            description, path = path, copied
            cleanup = lambda: shutil.rmtree(copy_root, ignore_errors=True)  # noqa: E731
        else:
            description = path

        def upload() -> None:
            (self.client.log_artifacts if is_dir else self.client.log_artifact)(
                self.resolve(run_id), path, artifact_path
            )

        self._submit(_Call(f"log_artifact run {_short(run_id)} {description}", upload, cleanup=cleanup))

    def log_model(
        self,
        run_id: str,
        model: torch.nn.Module,
        *,
        input_example: np.ndarray,
        name: str = "model",
        registered_model_name: str | None = None,
        step: int = 0,
        serialization_format: Literal["pickle", "pt2"] = "pickle",
        pip_requirements: list[str] | None = None,
    ) -> str | None:
        """Log `model` as an MLflow 3 LoggedModel linked to the run, with a signature from `input_example`.

        The model runs once on `input_example` (eval mode, no grad; its train/eval mode is restored)
        to infer the signature, and a CPU copy is saved locally with ``mlflow.pytorch.save_model``.
        Image tensors (4-D, N×C×H×W) keep only their channel count in the signature: batch, height and
        width are -1, so the served model (``mlflow.pyfunc``, ``mlflow models serve``) takes any image size,
        not only the example's.
        ``serialization_format="pickle"`` (our default) works for any module but loading needs this
        package importable; ``"pt2"`` (MLflow 3.17's own default outside Databricks) is a
        self-contained ``torch.export`` graph, but export fails on some modules, takes seconds, and
        fixes size-1 dimensions of the example (batch 1 → batch fixed at 1).

        The upload then uses client APIs only (``create_logged_model``, ``log_model_artifacts``,
        ``log_outputs``, ``finalize_logged_model``, and ``create_registered_model`` /
        ``create_model_version`` when `registered_model_name` is given) instead of
        ``mlflow.pytorch.log_model``, which resolves the *global* tracking URI and, without a global
        active run, the global experiment. Errors in the model itself raise; an outage queues the
        upload (the saved copy waits in a temporary directory). Returns the model id (load with
        ``mlflow.pytorch.load_model(f"models:/{id}")`` under this tracking URI, or from
        ``client.get_logged_model(id).artifact_location``), or None when queued or rejected.
        """
        import mlflow.pytorch
        import numpy as np
        import torch
        from mlflow.models import Model, infer_signature

        example = np.asarray(input_example)
        was_training = model.training
        try:
            model.eval()
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            with torch.no_grad():
                output = model(torch.from_numpy(example).to(device))
        finally:
            model.train(was_training)
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"log_model needs a model returning one tensor, got {type(output).__name__}")
        signature = _free_image_sizes(infer_signature(example, output.detach().cpu().numpy()))
        portable = model if device.type == "cpu" else copy.deepcopy(model).cpu()
        if pip_requirements is None:  # pinned here: MLflow would otherwise infer them in a subprocess (slow)
            pip_requirements = [f"{name}=={_package_version(name, Path())}" for name in ("torch", "numpy")]
            if serialization_format == "pickle":
                pip_requirements.append(f"cloudpickle=={_package_version('cloudpickle', Path())}")

        workdir = tempfile.mkdtemp(prefix="trilevel-model-")
        local = os.path.join(workdir, "model")
        try:
            mlflow.pytorch.save_model(
                portable,
                local,
                signature=signature,
                input_example=example,
                pip_requirements=pip_requirements,
                serialization_format=serialization_format,
            )
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise

        state: dict[str, Any] = {}

        def upload() -> str:
            from mlflow.entities import LoggedModelOutput, LoggedModelStatus
            from mlflow.exceptions import MlflowException

            client, run_id_now = self.client, self.resolve(run_id)
            if "model_id" not in state:
                run = client.get_run(run_id_now)
                tags = {k: v for k, v in run.data.tags.items() if k.startswith("trilevel.")}
                created = client.create_logged_model(
                    run.info.experiment_id, name=name, source_run_id=run_id_now, tags=tags
                )
                state["model_id"], state["location"] = created.model_id, created.artifact_location
                mlmodel = Model.load(local)  # record the ids in MLmodel, as mlflow's own log_model does
                mlmodel.model_id = mlmodel.model_uuid = created.model_id
                mlmodel.run_id = run_id_now
                mlmodel.artifact_path = created.artifact_location
                mlmodel.save(os.path.join(local, "MLmodel"))
            model_id = state["model_id"]
            for done, action in (
                ("uploaded", lambda: client.log_model_artifacts(model_id, local)),
                ("linked", lambda: client.log_outputs(run_id_now, [LoggedModelOutput(model_id, step=step)])),
                ("ready", lambda: client.finalize_logged_model(model_id, LoggedModelStatus.READY)),
            ):
                if not state.get(done):
                    action()
                    state[done] = True
            if registered_model_name and not state.get("registered"):
                try:
                    client.create_registered_model(registered_model_name)
                except MlflowException as err:
                    if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                        raise
                # source: the artifact location, not models:/<id>: the SQL registry store resolves the latter
                # through the *global* tracking URI (its own TODO), which is not ours. It keeps no model_id
                # column either way; the version points at the same files and records the run.
                version = client.create_model_version(
                    registered_model_name, source=state["location"], run_id=run_id_now, model_id=model_id
                )
                state["registered"] = True
                # The link the UI shows from the logged model to its versions, as mlflow's _register_model sets it.
                versions = json.loads(client.get_logged_model(model_id).tags.get("mlflow.modelVersions", "[]"))
                versions.append({"name": version.name, "version": version.version})
                client.set_logged_model_tags(model_id, {"mlflow.modelVersions": json.dumps(versions)})
            return model_id

        delivered = self._submit(
            _Call(
                f"log_model run {_short(run_id)} {name}",
                upload,
                cleanup=lambda: shutil.rmtree(workdir, ignore_errors=True),
            )
        )
        return state.get("model_id") if delivered else None


def _free_image_sizes(signature: Any) -> Any:
    """`signature` with every 4-D tensor spec's batch, height and width set to -1 (any size)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    def free(schema: Schema | None) -> Schema | None:
        if schema is None:
            return None
        specs = [
            TensorSpec(spec.type, (-1, spec.shape[1], -1, -1), spec.name)
            if isinstance(spec, TensorSpec) and len(spec.shape) == 4
            else spec
            for spec in schema.inputs
        ]
        return Schema(specs)

    return ModelSignature(free(signature.inputs), free(signature.outputs), signature.params)


@contextlib.contextmanager
def tracked(tracker: Tracker, run_id: str) -> Iterator[str]:
    """End `run_id` FINISHED on success, KILLED on Ctrl-C/exit/cancel, FAILED on errors (which re-raise).

    The error's type and message are kept as tag ``trilevel.error``; runs are never left RUNNING
    by a crash in the block (a SIGKILLed process is what :meth:`Tracker.end_unfinished` is for).
    """
    import asyncio

    try:
        yield run_id
    except (KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError) as err:
        tracker.set_tags(run_id, {ERROR_TAG: f"{type(err).__name__}: {err}"})
        tracker.finish(run_id, "KILLED")
        raise
    except BaseException as err:
        tracker.set_tags(run_id, {ERROR_TAG: f"{type(err).__name__}: {err}"})
        tracker.finish(run_id, "FAILED")
        raise
    else:
        tracker.finish(run_id, "FINISHED")
