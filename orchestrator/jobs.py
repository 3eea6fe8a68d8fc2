"""The Ray job server, as seen from here: reaching it, and following, listing and stopping its jobs.

The client only needs the head's job server, the Ray dashboard port (8265), usually reached
through `kubectl port-forward` or `ray dashboard cluster.yaml`. Every failure the user can act on
is a :class:`SubmitError` with one clear message: an unreachable job server (named, with the
port-forward hint, found in seconds instead of hanging), an unknown submission id, missing
credentials. An explicit ``address`` always wins over ``RAY_ADDRESS``/``RAY_API_SERVER_ADDRESS``,
which Ray's own client would otherwise let override it. A job's metadata names its sweep
(``trilevel.sweep``, as MLflow's tags do) and its tracking URI, so `trilevel jobs`/`status ID`
point at the sweep's progress in MLflow (:func:`mlflow_hint`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from orchestrator.tracking import SWEEP_TAG

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

__all__ = [
    "TERMINAL_STATUSES",
    "TRACKING_URI_KEY",
    "JobFailed",
    "JobSummary",
    "SubmitError",
    "UnknownJob",
    "describe_job",
    "format_time",
    "job_call",
    "job_client",
    "job_logs",
    "job_status",
    "job_status_or_none",
    "list_jobs",
    "mlflow_hint",
    "stop_job",
    "wait_for_job",
]

TRACKING_URI_KEY = "trilevel.tracking_uri"  # job metadata (runtime_env env_vars may be redacted by the dashboard)
TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
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


def job_client(address: str) -> JobSubmissionClient:
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


def job_call(address: str, submission_id: str | None, what: str, fn: Callable[[], Any]) -> Any:
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


# --- following --------------------------------------------------------------------------------
def _info(client: JobSubmissionClient, address: str, submission_id: str) -> Any:
    return job_call(address, submission_id, f"read job {submission_id}", lambda: client.get_job_info(submission_id))


def job_status(address: str, submission_id: str) -> str:
    """The job's status: PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED."""
    return JobSummary.from_details(_info(job_client(address), address, submission_id)).status


def job_status_or_none(address: str, submission_id: str) -> JobSummary | None:
    """The job's summary, or None when the cluster has no such job (an unreachable one still raises)."""
    client = job_client(address)
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
    client = job_client(address)
    _info(client, address, submission_id)
    if follow:
        yield from _follow(client, address, submission_id)
    else:
        yield job_call(address, submission_id, "read the logs", lambda: client.get_job_logs(submission_id))


def wait_for_job(
    address: str, submission_id: str, *, echo: Callable[[str], None] | None = None, poll_s: float = 2.0
) -> str:
    """Stream the job's logs to `echo` until it ends; return SUCCEEDED or raise :class:`JobFailed`."""
    write = echo or (lambda chunk: (sys.stdout.write(chunk), sys.stdout.flush()))
    for chunk in job_logs(address, submission_id, follow=True):
        write(chunk)
    client = job_client(address)
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
    client = job_client(address)
    _info(client, address, submission_id)
    return bool(job_call(address, submission_id, f"stop job {submission_id}", lambda: client.stop_job(submission_id)))


def list_jobs(address: str) -> list[JobSummary]:
    """Every submitted job the cluster remembers, oldest first (drivers not started as jobs are left out)."""
    client = job_client(address)
    details = job_call(address, None, "list the jobs", client.list_jobs)
    jobs = [JobSummary.from_details(d) for d in details if d.submission_id]
    return sorted(jobs, key=lambda job: job.start_time or 0.0)
