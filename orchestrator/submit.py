"""Submitting a sweep to a running Ray cluster as a Ray Job, and following, listing and stopping it.

Why a job and not `trilevel sweep --address ray://…`: the sweep driver then runs *on the cluster's
head*, so it survives the laptop going to sleep or the port-forward dropping, and its output is kept
by the cluster (`trilevel logs`). The client only needs the head's job server, the Ray dashboard
port (8265), usually reached through `kubectl port-forward` or `ray dashboard cluster.yaml`.

How a submission is built:

* The experiment is resolved and validated **locally first** (`load_experiment`), so a typo is a
  clear error before anything is uploaded, and the submission id carries a short hash of the
  resolved config: ``trilevel-<sweep>-<hash8>-<unix time>``. The job's metadata names its sweep
  (``trilevel.sweep``, as MLflow's tags do) and its tracking URI, so `trilevel jobs`/`status ID`
  point at the sweep's progress in MLflow.
* The entrypoint is `python -m orchestrator sweep … --address auto`: the job runs on the head, where
  the job supervisor sets ``RAY_ADDRESS`` to the cluster it belongs to. A preset is passed by name
  with the same `--scale`/`--set` arguments; an experiment *file* exists only on this machine, so its
  resolved YAML travels in the environment variable ``TRILEVEL_EXPERIMENT_YAML`` and is written to a
  temporary file on the head.
* The code travels in the job's ``runtime_env``: ``working_dir`` is this package's source root (the
  folder holding `orchestrator/`, `workers/` and `search_space/`), minus data, runs, databases,
  virtualenvs and caches (``EXCLUDES``). A pip-installed package (site-packages) is first copied
  to a temporary folder holding only those three packages, so site-packages is never uploaded.
  ``env_vars`` turn on Ray Train V2, point MLflow at the tracking URI and turn off usage stats.
* Paths are resolved **on the cluster**, not here: `--storage` must be absolute or a URI (a
  relative path would land in the job's temporary working directory), and on a multi-node cluster
  it must be a volume every node mounts or ``s3://…``/``gs://…``. A local folder only works when the
  cluster is one machine. The same holds for a ``sqlite:///`` tracking URI; an MLflow server is the
  normal choice. An ``http(s)`` tracking server is checked from here before submitting, unless
  ``check_tracking=False`` (a server only the cluster can resolve, e.g. ``http://mlflow:5000``).

Every failure the user can act on is a :class:`SubmitError` with one clear message: an unreachable
job server (named, with the port-forward hint), an unknown submission id, missing credentials.
An explicit ``address`` always wins over ``RAY_ADDRESS``/``RAY_API_SERVER_ADDRESS``, which Ray's own
client would otherwise let override it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import yaml

from orchestrator.experiment import Experiment, load_experiment
from orchestrator.tracking import SWEEP_TAG, Tracker, sqlite_path

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

__all__ = [
    "EXCLUDES",
    "EXPERIMENT_ENV_VAR",
    "LARGE_FILE_BYTES",
    "TERMINAL_STATUSES",
    "TRACKING_URI_KEY",
    "JobFailed",
    "JobSummary",
    "SubmitError",
    "UnknownJob",
    "build_entrypoint",
    "describe_job",
    "format_time",
    "job_logs",
    "job_status",
    "job_status_or_none",
    "large_files",
    "list_jobs",
    "mlflow_hint",
    "source_root",
    "stop_job",
    "submission_id_for",
    "submit_sweep",
    "wait_for_job",
]

# gitignore-style patterns, relative to the working_dir (Ray also honours its .gitignore).
EXCLUDES: tuple[str, ...] = (
    "data",
    "runs",
    "mlruns",
    "mlartifacts",
    "*.db",
    ".venv",
    ".git",
    "bench/results",
    "__pycache__",
    "*.pyc",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
    "trilevel-runs",
    "trilevel-data",
    "trilevel-reports",
    "checkpoints",
    "weights",
    "*.pth",
    "*.pt",
    "*.ckpt",
    "*.safetensors",
)
LARGE_FILE_BYTES = 8 * 1024 * 1024  # a source tree has nothing this big; Ray caps the whole upload near 512 MiB
EXPERIMENT_ENV_VAR = "TRILEVEL_EXPERIMENT_YAML"
TRACKING_URI_KEY = "trilevel.tracking_uri"  # job metadata (runtime_env env_vars may be redacted by the dashboard)
TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
_PACKAGES = ("orchestrator", "workers", "search_space")
_PYTHON = "python"  # the cluster image's interpreter, with trilevel-nas's dependencies installed
_PROBE_TIMEOUT_S = 10.0
_PORT_FORWARD_HINT = (
    "Is the cluster up, and is its head's dashboard port (8265) reachable from here? For a remote "
    "head, forward it first (`kubectl port-forward svc/<cluster>-head-svc 8265:8265`, or "
    "`ray dashboard cluster.yaml`) and pass --address http://127.0.0.1:8265."
)


class SubmitError(RuntimeError):
    """A submission or job query that cannot be done; the message says why and what to do."""


class UnknownJob(SubmitError):
    """The cluster has no job of that submission id."""


class JobFailed(SubmitError):
    """The job ended, but not with SUCCEEDED."""

    def __init__(self, submission_id: str, status: str, message: str | None) -> None:
        self.submission_id, self.status = submission_id, status
        detail = f": {message}" if message else ""
        super().__init__(f"Job {submission_id} ended {status}{detail}")


@dataclass(frozen=True)
class JobSummary:
    """What `trilevel jobs`/`status` show of one job (times in seconds since the epoch)."""

    submission_id: str
    status: str
    sweep: str | None
    entrypoint: str
    message: str | None
    start_time: float | None
    end_time: float | None
    tracking_uri: str | None = None

    @classmethod
    def from_details(cls, details: Any) -> JobSummary:
        status = getattr(details.status, "value", details.status)
        metadata = details.metadata or {}
        return cls(
            submission_id=details.submission_id or details.job_id or "?",
            status=str(status),
            sweep=metadata.get(SWEEP_TAG),
            entrypoint=details.entrypoint,
            message=details.message,
            start_time=details.start_time / 1000 if details.start_time else None,
            end_time=details.end_time / 1000 if details.end_time else None,
            tracking_uri=metadata.get(TRACKING_URI_KEY),
        )


def format_time(seconds: float | None) -> str:
    """Local date and time of an epoch timestamp, or "-"."""
    return datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S") if seconds else "-"


def describe_job(job: JobSummary) -> str:
    """A few lines for a terminal: id, status, sweep, times, the job server's message."""
    lines = [
        f"Job:      {job.submission_id}",
        f"Status:   {job.status}",
        f"Sweep:    {job.sweep or '-'}",
        f"MLflow:   {job.tracking_uri or '-'}",
        f"Started:  {format_time(job.start_time)}",
        f"Ended:    {format_time(job.end_time)}",
    ]
    if job.message:
        lines.append(f"Message:  {job.message}")
    return "\n".join(lines)


# --- the job server ---------------------------------------------------------------------------
@contextlib.contextmanager
def _explicit_address() -> Iterator[None]:
    """Ray's client lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override its `address`; ours is explicit."""
    names = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _probe(address: str) -> None:
    """One short request to an http(s) job server, so a dead address fails in seconds, never hangs.

    Only reachability is judged here (Ray's client has no timeout); any HTTP answer will do, and
    what it means (auth, no job API) is left to Ray's client, which sends the auth token.
    """
    import requests

    try:
        requests.get(f"{address.rstrip('/')}/api/version", timeout=_PROBE_TIMEOUT_S)
    except requests.RequestException as err:
        reason = "timed out" if isinstance(err, requests.Timeout) else type(err).__name__
        raise SubmitError(f"Cannot reach the Ray job server at {address} ({reason}). {_PORT_FORWARD_HINT}") from None


def _with_scheme(address: str) -> str:
    """`host:8265` means the job server over http (Ray would take a bare host:port for a GCS address)."""
    return address if "://" in address or address == "auto" else f"http://{address}"


def _client(address: str) -> JobSubmissionClient:
    """A job client for `address`, every failure turned into a :class:`SubmitError` naming it."""
    if not address:
        raise SubmitError("No Ray job server address: pass --address http://<head>:8265.")
    address = _with_scheme(address)
    if urlparse(address).scheme in ("http", "https"):
        _probe(address)
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        with _explicit_address():
            return JobSubmissionClient(address)
    except Exception as err:
        if isinstance(err, AuthenticationError):
            raise SubmitError(
                f"The Ray cluster at {address} wants its auth token: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN "
                f"(deployment/README.md, section 3a). Ray says: {err}"
            ) from None
        if "returned 404" in str(err):  # Ray's version check: something answers, but not a job server
            raise SubmitError(
                f"{address} answers but has no Ray job API (HTTP 404): is it the head's dashboard port (8265), "
                "and does the head run the full dashboard (`pip install 'ray[default]'`)?"
            ) from None
        raise SubmitError(
            f"Cannot use the Ray job server at {address} ({type(err).__name__}: {err}). {_PORT_FORWARD_HINT}"
        ) from None


def _call(address: str, submission_id: str | None, what: str, fn: Callable[[], Any]) -> Any:
    """Run one job-server request; an unknown id and any other failure become clear messages."""
    try:
        return fn()
    except SubmitError:
        raise
    except Exception as err:
        text = str(err)
        if submission_id is not None and ("status code 404" in text or "does not exist" in text):
            raise UnknownJob(
                f"No job {submission_id!r} on the Ray cluster at {address}; "
                f"`trilevel jobs --address {address}` lists its jobs."
            ) from None
        if isinstance(err, OSError):  # requests.ConnectionError and the builtin ConnectionError are OSErrors
            raise SubmitError(
                f"Lost the Ray job server at {address} while trying to {what}. {_PORT_FORWARD_HINT}"
            ) from None
        raise SubmitError(f"Could not {what} on {address}: {type(err).__name__}: {text}") from None


# --- submitting -------------------------------------------------------------------------------
def source_root() -> Path:
    """The folder that holds this package's `orchestrator/`, `workers/` and `search_space/`."""
    import orchestrator

    root = Path(orchestrator.__file__).resolve().parent.parent
    missing = [p for p in _PACKAGES if not (root / p / "__init__.py").is_file()]
    if missing:
        raise SubmitError(f"{root} lacks the packages {', '.join(missing)}: pass working_dir explicitly.")
    return root


@contextlib.contextmanager
def _upload_dir(working_dir: str | None) -> Iterator[str]:
    """The folder to upload: `working_dir`, the source checkout, or a staged copy of an installed package."""
    if working_dir is not None:
        if not os.path.isdir(working_dir):
            raise SubmitError(f"working_dir {working_dir}: no such directory")
        yield os.path.abspath(working_dir)
        return
    root = source_root()
    if root.name not in ("site-packages", "dist-packages"):
        yield str(root)
        return
    with tempfile.TemporaryDirectory(prefix="trilevel-submit-") as staged:
        for package in _PACKAGES:
            shutil.copytree(root / package, Path(staged) / package, ignore=shutil.ignore_patterns(*EXCLUDES))
        yield staged


def _is_local_relative(uri: str) -> bool:
    if (database := sqlite_path(uri)) is not None:
        return not os.path.isabs(database)
    return "://" not in uri and not os.path.isabs(uri)


def _check_cluster_paths(experiment: Experiment) -> None:
    if _is_local_relative(experiment.storage):
        raise SubmitError(
            f"The storage {experiment.storage!r} (--storage, or the experiment's storage) is relative, but the "
            "job resolves it on the cluster, inside its temporary working directory. Give an absolute path on a "
            "volume every node mounts (e.g. /mnt/trilevel/runs) or s3://…/gs://…."
        )
    if _is_local_relative(experiment.tracking.uri):
        raise SubmitError(
            f"The tracking URI {experiment.tracking.uri!r} (--tracking-uri, or the experiment's tracking.uri) is "
            "a relative local path, which the job would resolve on the cluster. Pass the MLflow server as the "
            "cluster sees it, e.g. --tracking-uri http://mlflow:5000."
        )


def _config_hash(experiment: Experiment) -> str:
    resolved = json.dumps(experiment.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(resolved.encode()).hexdigest()[:8]


def submission_id_for(experiment: Experiment, now: float | None = None) -> str:
    """``trilevel-<sweep>-<8 hex of the resolved config>-<unix time>``: same config, same middle part."""
    return f"trilevel-{experiment.name}-{_config_hash(experiment)}-{int(time.time() if now is None else now)}"


def _is_file(experiment: str) -> bool:
    path = Path(experiment)
    return path.suffix in (".yaml", ".yml") or path.exists()


def large_files(root: str, excludes: Sequence[str] = EXCLUDES, limit: int = LARGE_FILE_BYTES) -> list[tuple[str, int]]:
    """(path relative to `root`, bytes) of every file over `limit` that the job's upload would carry.

    The walk is Ray's own (`runtime_env` packaging: `excludes` and `.gitignore`/`.rayignore`), so the
    list is exactly what `submit_job` would zip; sorted by path.
    """
    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    base = Path(root).absolute()
    found: list[tuple[str, int]] = []

    def visit(path: Path) -> None:
        if path.is_file() and not path.is_symlink() and (size := path.stat().st_size) > limit:
            found.append((path.relative_to(base).as_posix(), size))

    include_gitignore = os.environ.get(ray_constants.RAY_RUNTIME_ENV_IGNORE_GITIGNORE, "0") != "1"
    _dir_travel(base, [_get_excludes(base, list(excludes))], visit, include_gitignore=include_gitignore)
    return sorted(found)


def _upload_excludes(upload: str, echo: Callable[[str], None]) -> list[str]:
    """EXCLUDES plus every large file of the upload, each named (data and weights belong on the cluster's storage)."""
    extra = []
    for relative, size in large_files(upload):
        echo(
            f"Not uploading {relative} ({size / 2**20:.0f} MiB): the job ships source code only; put data and "
            "weights on the cluster's storage and point the experiment at them.\n"
        )
        extra.append(f"/{relative}")
    return [*EXCLUDES, *extra]


def mlflow_hint(tracking_uri: str) -> str:
    """How to open the sweep's MLflow UI from this machine: the URL, or the port-forward to a cluster-only name.

    `http://mlflow:5000` (or `mlflow.<namespace>.svc…`) resolves only inside the cluster; a laptop
    reaches it through `kubectl port-forward` to that Service.
    """
    parsed = urlparse(tracking_uri)
    if parsed.scheme not in ("http", "https"):
        return f"MLflow:   mlflow ui --backend-store-uri {tracking_uri}   (run where that store is)"
    host, port = parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80)
    labels = host.split(".")
    in_cluster = (len(labels) == 1 and host != "localhost") or host.endswith((".svc", ".svc.cluster.local"))
    if not in_cluster:
        return f"MLflow:   {tracking_uri}"
    namespace = f"-n {labels[1]} " if len(labels) > 2 else ""
    local = f"http://127.0.0.1:{port}"
    return (
        f"MLflow:   {tracking_uri} is the cluster's name for it; from here run "
        f"`kubectl {namespace}port-forward svc/{labels[0]} {port}:{port}` and open {local} "
        f"(`trilevel status <sweep> --tracking-uri {local}`)"
    )


def build_entrypoint(
    experiment: str, resolved: Experiment, scale: str, overrides: Sequence[str], dry_run: bool = False
) -> str:
    """The job's shell command. A preset keeps its arguments; a file's resolved YAML comes from the env."""
    tail = ["--name", resolved.name, "--storage", resolved.storage, "--tracking-uri", resolved.tracking.uri]
    tail += ["--address", "auto"] + (["--dry-run"] if dry_run else [])
    if not _is_file(experiment):
        args = [_PYTHON, "-m", "orchestrator", "sweep", experiment, "--scale", scale]
        for item in overrides:
            args += ["--set", item]
        return shlex.join(args + tail)
    target = f'"$d"/{shlex.quote(resolved.name + ".yaml")}'
    run = shlex.join([_PYTHON, "-m", "orchestrator", "sweep"]) + f" {target} " + shlex.join(tail)
    return f'd="$(mktemp -d)" && printenv {EXPERIMENT_ENV_VAR} > {target} && {run}'


def submit_sweep(
    experiment: str,
    *,
    address: str,
    scale: str = "tiny",
    overrides: Sequence[str] = (),
    name: str | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    wait: bool = False,
    working_dir: str | None = None,
    check_tracking: bool = True,
    echo: Callable[[str], None] | None = None,
    dry_run: bool = False,
) -> str:
    """Submit the sweep of `experiment` (a preset or a YAML file) as a Ray Job; return its submission id.

    `address` is the head's job server (``http://<head>:8265``). `storage` and `tracking_uri` are
    what the *cluster* sees: an absolute path or ``s3://…`` (a local folder only works on a
    single-machine cluster; multi-node needs shared or object storage) and an MLflow server the
    nodes reach. With `wait`, the job's logs go to `echo` (default: stdout) until it ends, and
    :class:`JobFailed` is raised unless it SUCCEEDED. `working_dir` replaces the uploaded source
    root (it must contain the three packages). With `dry_run`, the job runs the sweep's `--dry-run` on
    the cluster (paths, weights, volume, MLflow and GPUs checked where the sweep would run; nothing
    started) and this waits for it. Large files (`LARGE_FILE_BYTES`) are left out of the upload, each
    named through `echo`.

    Raises:
        ExperimentError: the experiment does not validate (nothing was submitted).
        TrackingUnavailable: an http(s) tracking server does not answer (unless `check_tracking` is False).
        SubmitError: relative paths, an unreachable job server, a rejected submission.
    """
    fields = {"name": name, "storage": storage, "tracking.uri": tracking_uri}
    resolved = load_experiment(experiment, scale, overrides, **{k: v for k, v in fields.items() if v is not None})
    _check_cluster_paths(resolved)
    uri = resolved.tracking.uri
    if check_tracking and urlparse(uri).scheme in ("http", "https"):
        Tracker.check_reachable(uri)
    client = _client(address)

    env_vars = {"RAY_TRAIN_V2_ENABLED": "1", "MLFLOW_TRACKING_URI": uri, "RAY_USAGE_STATS_ENABLED": "0"}
    if _is_file(experiment):
        env_vars[EXPERIMENT_ENV_VAR] = yaml.safe_dump(resolved.model_dump(mode="json"), sort_keys=False)
    submission_id = submission_id_for(resolved) + ("-dry-run" if dry_run else "")
    say = echo or (lambda text: (sys.stderr.write(text), sys.stderr.flush()))
    with _upload_dir(working_dir) as upload:
        runtime_env = {"working_dir": upload, "excludes": _upload_excludes(upload, say), "env_vars": env_vars}
        _call(
            address,
            None,
            "submit the job",
            lambda: client.submit_job(
                entrypoint=build_entrypoint(experiment, resolved, scale, overrides, dry_run),
                submission_id=submission_id,
                runtime_env=runtime_env,
                metadata={
                    SWEEP_TAG: resolved.name,
                    TRACKING_URI_KEY: uri,
                    "trilevel.config_hash": _config_hash(resolved),
                },
            ),
        )
    if wait or dry_run:
        wait_for_job(address, submission_id, echo=echo)
    return submission_id


# --- following --------------------------------------------------------------------------------
def _info(client: JobSubmissionClient, address: str, submission_id: str) -> Any:
    return _call(address, submission_id, f"read job {submission_id}", lambda: client.get_job_info(submission_id))


def job_status(address: str, submission_id: str) -> str:
    """The job's status: PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED."""
    return JobSummary.from_details(_info(_client(address), address, submission_id)).status


def job_status_or_none(submission_id: str, address: str) -> JobSummary | None:
    """The job's summary, or None when the cluster has no such job (an unreachable one still raises)."""
    client = _client(address)
    try:
        return JobSummary.from_details(_info(client, address, submission_id))
    except UnknownJob:
        return None


def _follow(client: JobSubmissionClient, address: str, submission_id: str) -> Iterator[str]:
    """`tail_job_logs` (async) as a plain iterator; it ends when the job does."""
    stream = client.tail_job_logs(submission_id)
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                chunk = loop.run_until_complete(stream.__anext__())
            except StopAsyncIteration:
                return
            except Exception as err:
                raise SubmitError(
                    f"Lost the log stream of job {submission_id} from {address} ({type(err).__name__}: {err}). "
                    f"The job goes on; `trilevel logs {submission_id} --address {address} --follow` picks it up."
                ) from None
            yield chunk
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(stream.aclose())
        loop.close()


def job_logs(address: str, submission_id: str, follow: bool = False) -> Iterator[str]:
    """The job's output so far (one chunk), or with `follow` every chunk as it comes until the job ends.

    The id is checked before anything is yielded, so an unknown id raises :class:`SubmitError` at once
    (on the first `next`).
    """
    client = _client(address)
    _info(client, address, submission_id)
    if follow:
        yield from _follow(client, address, submission_id)
    else:
        yield _call(address, submission_id, "read the logs", lambda: client.get_job_logs(submission_id))


def wait_for_job(
    address: str, submission_id: str, *, echo: Callable[[str], None] | None = None, poll_s: float = 2.0
) -> str:
    """Stream the job's logs to `echo` until it ends; return SUCCEEDED or raise :class:`JobFailed`."""
    write = echo or (lambda chunk: (sys.stdout.write(chunk), sys.stdout.flush()))
    for chunk in job_logs(address, submission_id, follow=True):
        write(chunk)
    client = _client(address)
    while True:  # the stream closes as the job ends; its status may be a moment behind
        job = JobSummary.from_details(_info(client, address, submission_id))
        if job.status in TERMINAL_STATUSES:
            break
        time.sleep(poll_s)
    if job.status != "SUCCEEDED":
        raise JobFailed(submission_id, job.status, job.message)
    return job.status


def stop_job(address: str, submission_id: str) -> bool:
    """Ask the cluster to stop the job: True if it was running, False if it had already ended."""
    client = _client(address)
    _info(client, address, submission_id)
    return bool(_call(address, submission_id, f"stop job {submission_id}", lambda: client.stop_job(submission_id)))


def list_jobs(address: str) -> list[JobSummary]:
    """Every submitted job the cluster remembers, oldest first (drivers not started as jobs are left out)."""
    client = _client(address)
    details = _call(address, None, "list the jobs", client.list_jobs)
    jobs = [JobSummary.from_details(d) for d in details if d.submission_id]
    return sorted(jobs, key=lambda job: job.start_time or 0.0)
