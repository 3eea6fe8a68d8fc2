"""A sweep's identity and the lease its live driver holds, both kept with the sweep on storage.

Why: two drivers of one sweep corrupt each other (both run the trials, one deletes the other's
checkpoint folder, ending one marks the other's runs KILLED), and two users whose sweeps share a
name on different storage would share MLflow runs. So:

* ``<storage>/<sweep>/sweep.json`` gives the sweep an id when it is created (``{"id", "name",
  "created"}``); MLflow runs carry it (tag ``trilevel.sweep_id``) and are found by it.
* ``<storage>/<sweep>/lease.json`` is held by the one live driver: host, pid (and the pid's start
  time, so a reused pid is not mistaken for the holder), when it started and when it last renewed.
  It is created atomically (written whole, then hard-linked into place, which fails like ``O_EXCL``
  when the file exists: two racing drivers cannot both win), renewed by a
  heartbeat thread (write to a temporary file, then ``os.replace``) and removed when the driver ends.
  A second driver is refused with :class:`SweepBusy` naming the holder and what to do. A holder is
  dead, and its lease taken over without manual cleanup, when it is on this host and its process is
  gone, or when its heartbeat is older than :data:`LEASE_TTL_S` (another host). Taking over goes
  through ``lease.json.break`` (created the same way), so two drivers breaking one stale lease cannot both win.

Object-store storage (``s3://``, ``gs://``) has no atomic create-if-absent through pyarrow: the sweep
id is kept there (written when absent), and the lease is held on the Ray cluster instead, by a named
actor that lives as long as its driver (:mod:`orchestrator.cluster_lease`, taken once the driver is
connected). That covers drivers sharing one Ray cluster, not drivers on different clusters (or each on
a local Ray) sharing one bucket: a warning says so. Use a shared filesystem (NFS, a mounted volume)
for sweeps that people on several clusters may start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from workers.storage import join_storage, read_bytes, resolve_uri, write_bytes

__all__ = [
    "LEASE_FILE",
    "LEASE_TTL_S",
    "SWEEP_FILE",
    "Holder",
    "ReentrantHolds",
    "SweepBusy",
    "SweepLease",
    "busy_message",
    "hold_sweep",
    "on_object_store",
    "process_alive",
    "process_start",
    "read_sweep_id",
    "sweep_id",
    "utc_text",
]

SWEEP_FILE = "sweep.json"
LEASE_FILE = "lease.json"
LEASE_TTL_S = float(os.environ.get("TRILEVEL_LEASE_TTL_S", "120"))  # a heartbeat older than this: holder dead
RENEW_S = LEASE_TTL_S / 6
_log = logging.getLogger(__name__)


class SweepBusy(RuntimeError):
    """Another live driver holds the sweep's lease; the message names it and what to do."""


def utc_text(seconds: float) -> str:
    """A Unix time as the lease messages show it (UTC, to the second)."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _is_local(storage: str) -> bool:
    return "://" not in storage or storage.startswith("file://")


def on_object_store(storage: str) -> bool:
    """True for object-store storage (``s3://``, ``gs://``, …): no file lease there, the cluster's instead."""
    return not _is_local(storage)


def _local(path: str) -> str:
    return path.removeprefix("file://")


def _create_exclusive(path: str, data: dict[str, Any]) -> bool:
    """Write `data` as JSON to `path` only if no file is there, atomically; False if one was.

    The file is written whole under a temporary name and hard-linked into place (``link`` fails if
    `path` exists, like ``O_EXCL``), so no reader ever sees it half-written.
    """
    temporary = f"{path}.{uuid.uuid4().hex}.tmp"
    fd = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        with os.fdopen(fd, "w") as stream:
            json.dump(data, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.link(temporary, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(temporary)
    return True


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as stream:
            value = json.load(stream)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # half-written or damaged: treated as a lease nobody holds
    return value if isinstance(value, dict) else {}


def sweep_id(storage: str, name: str) -> str:
    """The id of sweep `name` under `storage`, created (and kept in ``sweep.json``) if the sweep has none.

    Two drivers creating one sweep at once agree on one id: the first ``O_EXCL`` create wins, the
    other reads it. A damaged ``sweep.json`` is an error naming the file.
    """
    path = join_storage(storage, name, SWEEP_FILE)
    fresh = {"id": uuid.uuid4().hex, "name": name, "created": utc_text(time.time())}
    if _is_local(storage):
        local = _local(path)
        os.makedirs(os.path.dirname(local), exist_ok=True)
        _create_exclusive(local, fresh)
        found = _read_json(local)
    else:
        fs, where = resolve_uri(path)
        try:
            found = json.loads(read_bytes(fs, where))
        except FileNotFoundError:
            fs.create_dir(os.path.dirname(where), recursive=True)
            write_bytes(fs, where, json.dumps(fresh).encode())
            found = fresh
        except ValueError:
            found = {}
    if not found or not isinstance(found.get("id"), str) or not found["id"]:
        raise ValueError(f"{path}: field 'id' missing or not a string ({found!r}); repair or remove the file")
    return found["id"]


def read_sweep_id(storage: str, name: str) -> str | None:
    """The id of an existing sweep, None when it has none (made before ids, or not there); creates nothing."""
    fs, where = resolve_uri(join_storage(storage, name, SWEEP_FILE))
    try:
        found = json.loads(read_bytes(fs, where))
    except (OSError, ValueError):
        return None
    identity = found.get("id") if isinstance(found, dict) else None
    return identity if isinstance(identity, str) and identity else None


def process_start(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (Linux), None when unknown or gone."""
    try:
        with open(f"/proc/{pid}/stat") as stream:
            return stream.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def process_alive(pid: int, start: str | None) -> bool:
    """Whether process `pid` of this host still runs (and is the one that started at `start`, when known)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return start is None or process_start(pid) in (None, start)


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, as read from ``lease.json``."""

    host: str
    pid: int
    started: float
    renewed: float
    token: str
    pid_start: str | None = None

    @classmethod
    def of(cls, data: dict[str, Any]) -> Holder | None:
        try:
            return cls(
                str(data["host"]),
                int(data["pid"]),
                float(data["started"]),
                float(data["renewed"]),
                str(data["token"]),
                data.get("pid_start"),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def dead(self, now: float) -> bool:
        """True when this holder can no longer be running its sweep."""
        if self.host == socket.gethostname():
            return not process_alive(self.pid, self.pid_start)
        return now - self.renewed > LEASE_TTL_S

    def describe(self, now: float) -> str:
        return (
            f"pid {self.pid} on host {self.host}, since {utc_text(self.started)} "
            f"(last heartbeat {max(0, now - self.renewed):.0f} s ago)"
        )


def busy_message(name: str, storage: str, holder: str, expiry: str, job: str | None = None) -> str:
    """Why a second driver of sweep `name` is refused: who runs it (`holder`), how to follow or stop it, and
    how the holder's lease ends (`expiry`); `job`: the holder's Ray Job submission id, when it is one."""
    stop = f"`trilevel stop {job}`" if job else "Ctrl-C in its terminal, `trilevel stop JOB` for a Ray Job"
    return (
        f"sweep {name!r} under {storage} is being run by another driver: {holder}. Follow it with `trilevel status "
        f"{name}`, or stop it ({stop}) and then `trilevel resume {name}`. {expiry}; to run a separate sweep, "
        "pick another name (--name)."
    )


class SweepLease:
    """The lease of one sweep on local (or shared) storage; see the module docstring.

    `acquire` raises :class:`SweepBusy` while another live driver holds it; a heartbeat thread
    renews it until `release`.
    """

    def __init__(self, storage: str, name: str) -> None:
        self.storage, self.name = storage, name
        self.path = _local(join_storage(storage, name, LEASE_FILE))
        self.token = uuid.uuid4().hex
        self.lost = False  # set when the heartbeat found another holder in our place
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self, started: float) -> dict[str, Any]:
        pid = os.getpid()
        return {
            "host": socket.gethostname(),
            "pid": pid,
            "pid_start": process_start(pid),
            "started": started,
            "renewed": time.time(),
            "token": self.token,
            "sweep": self.name,
        }

    def acquire(self) -> None:
        """Take the lease, breaking it if its holder is dead; :class:`SweepBusy` if a live driver holds it."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._started = time.time()
        for _ in range(5):
            if _create_exclusive(self.path, self._record(self._started)):
                self._start_heartbeat()
                return
            data = _read_json(self.path)
            if data is None:
                continue  # released meanwhile: try again
            holder = Holder.of(data)
            now = time.time()
            if holder is not None and not holder.dead(now):
                raise SweepBusy(self._busy_message(holder, now))
            self._break(data, holder)
        raise SweepBusy(f"sweep {self.name!r}: could not take {self.path} (other drivers keep taking it); try again")

    def _busy_message(self, holder: Holder, now: float) -> str:
        return busy_message(
            self.name,
            self.storage,
            holder.describe(now),
            "A driver that died without ending leaves its lease behind: it expires at once on the same host and "
            f"{LEASE_TTL_S:.0f} s after its last heartbeat from another host ({self.path})",
        )

    def _break(self, seen: dict[str, Any], holder: Holder | None) -> None:
        """Remove the dead holder's lease, if it is still the one we read (one breaker at a time)."""
        lock = self.path + ".break"
        with contextlib.suppress(FileNotFoundError):
            if time.time() - os.path.getmtime(lock) > LEASE_TTL_S:
                os.unlink(lock)  # a breaker that died mid-break
        if not _create_exclusive(lock, {"token": self.token}):
            time.sleep(0.2)
            return
        try:
            if _read_json(self.path) == seen:
                os.unlink(self.path)
                who = holder.describe(time.time()) if holder else "unreadable lease"
                _log.warning("sweep %s: took over the lease of a driver that is gone (%s)", self.name, who)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(RENEW_S):
            self.renew()

    def renew(self) -> None:
        """Write a fresh heartbeat, unless another driver took the lease (then `lost` is set, loudly)."""
        current = _read_json(self.path)
        if current is None or current.get("token") != self.token:
            if not self.lost:
                _log.error(
                    "sweep %s: this driver's lease at %s was taken by another driver (%s); stop one of them",
                    self.name,
                    self.path,
                    current,
                )
            self.lost = True
            return
        temporary = f"{self.path}.{self.token}.tmp"
        with open(temporary, "w") as stream:
            json.dump(self._record(self._started), stream)
        os.replace(temporary, self.path)

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        current = _read_json(self.path)
        if current is not None and current.get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


class _Lease(Protocol):
    def release(self) -> None: ...


class ReentrantHolds:
    """The leases this process holds, by key, with how deeply each is held: the first hold takes the lease,
    the last one out releases it.

    Why: the CLI takes a sweep's leases before (file) or right after (cluster) connecting to Ray, and
    `run_sweep` takes them again inside; a second acquire would find the process's own lease and refuse it.
    """

    def __init__(self) -> None:
        self._held: dict[str, tuple[_Lease | None, int]] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, key: str, take: Callable[[], _Lease | None]) -> Iterator[None]:
        """Hold `key` for the block; `take()` runs at the outermost hold only and returns the lease (or None)."""
        with self._lock:
            lease, depth = self._held.get(key, (None, 0))
            if depth == 0:
                lease = take()
            self._held[key] = (lease, depth + 1)
        try:
            yield
        finally:
            with self._lock:
                lease, depth = self._held.pop(key)
                if depth > 1:
                    self._held[key] = (lease, depth - 1)
                elif lease is not None:
                    lease.release()


_holds = ReentrantHolds()  # lease path → the file lease


@contextlib.contextmanager
def hold_sweep(storage: str, name: str) -> Iterator[str]:
    """Hold the lease of sweep `name` under `storage` for the block, yielding the sweep's id.

    Re-entrant within a process (the CLI takes it before Ray starts, `run_sweep` again inside).
    Object-store storage: the id only, no file lease (warned; the cluster's lease is taken once connected:
    :mod:`orchestrator.cluster_lease`).
    """
    identity = sweep_id(storage, name)

    def take() -> SweepLease | None:
        if not _is_local(storage):
            _log.warning(
                "storage %s is an object store: sweep %s has no lease on it, only one on the Ray cluster, which "
                "refuses a second driver on this cluster but not one on another cluster (or a local Ray) "
                "sharing the bucket; use a shared filesystem path to have a lease across clusters",
                storage,
                name,
            )
            return None
        lease = SweepLease(storage, name)
        lease.acquire()
        return lease

    with _holds.hold(join_storage(storage, name), take):
        yield identity
