"""A sweep's lease on its Ray cluster, for object-store storage, where no file lease can be taken.

Why: on ``s3://``/``gs://`` storage :mod:`orchestrator.sweep_lease` keeps the sweep's id but cannot take
its file lease (pyarrow has no atomic create-if-absent on object stores), so two drivers of one sweep
would both run its trials, delete each other's checkpoints and end each other's MLflow runs KILLED.
Drivers that share a bucket share a Ray cluster in the setting this project serves (a team with one
Ray cluster, one bucket, one MLflow server; a Ray Job's driver runs on the cluster), and the cluster's
GCS does have an atomic create-if-absent: a named actor. So the live driver of a sweep holds the actor
named ``<storage>/<sweep>`` in the namespace :data:`NAMESPACE`:

* Created with ``get_if_exists``: the GCS registers a name once (named actors are registered
  synchronously), so of two racing drivers one creates the actor and the other gets a handle to that
  same actor. The actor keeps its creator's host, pid, start time and a random token; the driver whose
  token it holds has the lease, any other is refused with :class:`~orchestrator.sweep_lease.SweepBusy`
  naming the holder, as the file lease does.
* Owned by the driver, not detached: Ray ends an actor when its owner dies (Ctrl-C, crash, SIGKILL,
  its node lost), so a crashed driver's lease ends with it: no heartbeat, no expiry, no cleanup. The
  actor itself is restarted if its own node is lost (``max_restarts=-1``), holding the same driver.
* ``num_cpus=0``: it takes no CPU from the trials and is placed even on a full cluster.
* Released (the actor killed) when the sweep ends; re-entrant within a driver, like the file lease.

What it cannot cover: drivers on *different* Ray clusters (or each on a local Ray) sharing one bucket,
since one cluster's GCS cannot see another's; :func:`orchestrator.sweep_lease.hold_sweep` warns about
it. On a filesystem the file lease applies and this one does not: the file lease is atomic across
clusters and without any, so a second lock there would cost a Ray worker process per sweep and refuse
no driver the file lease lets through.

Order: the file lease is taken before Ray starts (a refused driver pays no Ray start); this one only
once the driver is connected: by the CLI right after connecting (before a pre-flight), and again,
re-entrantly, by :func:`orchestrator.sweep.run_sweep`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

from orchestrator.sweep_lease import (
    ReentrantHolds,
    SweepBusy,
    busy_message,
    on_object_store,
    process_alive,
    process_start,
    utc_text,
)
from workers.storage import join_storage

__all__ = ["NAMESPACE", "ClusterLease", "hold_on_cluster"]

NAMESPACE = "trilevel-leases"  # fixed: every driver of the cluster, whatever its own namespace, meets here
DEAD_HOLDER_WAIT_S = 30.0  # how long a driver waits for Ray to end the lease of a holder it sees dead
_HOLDER_TIMEOUT_S = 120.0  # the lease actor's first call: placing it may wait for a worker process


class _LeaseActor:
    """The lease: alive exactly as long as its owner, the driver that created it; says who that is."""

    def __init__(self, holder: dict[str, Any]) -> None:
        self._holder = holder

    def holder(self) -> dict[str, Any]:
        return self._holder


def _submission_id() -> str | None:
    """The Ray Job submission id when this driver is a Ray Job's entrypoint (what `trilevel stop` takes)."""
    try:
        config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
        job = config.get("metadata", {}).get("job_submission_id")
    except (ValueError, AttributeError):
        return None
    return job if isinstance(job, str) and job else None


class ClusterLease:
    """The lease of sweep `name` under `storage` on the connected Ray cluster; see the module docstring."""

    def __init__(self, storage: str, name: str) -> None:
        self.storage, self.name = storage, name
        self.actor_name = join_storage(storage, name)  # the storage URI and the sweep: readable in `ray list actors`
        self.token = uuid.uuid4().hex
        self._actor: Any = None

    def _record(self) -> dict[str, Any]:
        pid = os.getpid()
        return {
            "host": socket.gethostname(),
            "pid": pid,
            "pid_start": process_start(pid),
            "started": time.time(),
            "token": self.token,
            "job": _submission_id(),
        }

    def acquire(self) -> None:
        """Take the lease; :class:`SweepBusy` naming the holder while another live driver holds it."""
        import ray
        from ray.exceptions import GetTimeoutError, RayError

        lease = ray.remote(_LeaseActor).options(
            name=self.actor_name,
            namespace=NAMESPACE,
            get_if_exists=True,  # one GCS registration wins; everyone else gets a handle to the winner
            lifetime="non_detached",  # fate-shares with this driver, whatever the job's default lifetime
            num_cpus=0,
            max_restarts=-1,
            max_task_retries=-1,
        )
        record = self._record()
        deadline = time.monotonic() + DEAD_HOLDER_WAIT_S
        while True:
            holder, error = None, None
            try:
                actor = lease.remote(record)
                holder = ray.get(actor.holder.remote(), timeout=_HOLDER_TIMEOUT_S)
            except GetTimeoutError:
                raise
            except (RayError, ValueError) as err:  # the name changed hands between lookup and call (a holder
                error = err  # ended, or a racing driver registered it first): look again
            if holder is not None and holder.get("token") == self.token:
                self._actor = actor  # the handle keeps the actor alive (a named actor is collected without one)
                return
            if holder is not None and not self._holder_gone(holder):
                raise SweepBusy(self._busy_message(holder))
            if time.monotonic() > deadline:
                why = f"{type(error).__name__}: {error}" if error else "its holder is gone but Ray still keeps it"
                raise SweepBusy(
                    f"sweep {self.name!r}: could not take its lease on the Ray cluster (actor {self.actor_name!r} "
                    f"in namespace {NAMESPACE!r}) within {DEAD_HOLDER_WAIT_S:.0f} s ({why}); try again in a minute"
                )
            time.sleep(0.5)

    @staticmethod
    def _holder_gone(holder: dict[str, Any]) -> bool:
        """True when the holder is a process of this host that has ended, or this very process (a lease it
        released: a live one would be re-entered, never taken again); Ray ends such a lease within moments."""
        if holder.get("host") != socket.gethostname():
            return False
        try:
            pid = int(holder["pid"])
            return pid == os.getpid() or not process_alive(pid, holder.get("pid_start"))
        except (KeyError, TypeError, ValueError):
            return False

    def _busy_message(self, holder: dict[str, Any]) -> str:
        since = utc_text(float(holder.get("started", 0.0)))
        who = f"pid {holder.get('pid')} on host {holder.get('host')}, since {since}"
        job = holder.get("job") if isinstance(holder.get("job"), str) else None
        if job:
            who += f" (Ray Job {job})"
        expiry = (
            f"Its lease is held on this Ray cluster (actor {self.actor_name!r} in namespace {NAMESPACE!r}) and ends "
            "with that driver, crashed or not"
        )
        return busy_message(self.name, self.storage, who, expiry, job)

    def release(self) -> None:
        """End the lease (kill its actor) if this driver holds it."""
        if self._actor is None:
            return
        import ray

        actor, self._actor = self._actor, None
        with contextlib.suppress(Exception):  # already gone with its node, or Ray shut down: the lease ended
            ray.kill(actor, no_restart=True)


def _connected() -> bool:
    import ray

    return ray.is_initialized()


_holds = ReentrantHolds()  # actor name → the cluster lease


@contextlib.contextmanager
def hold_on_cluster(storage: str, name: str) -> Iterator[None]:
    """Hold sweep `name`'s lease on the connected Ray cluster for the block, when `storage` is an object store.

    Nothing on a filesystem (the file lease holds there) or without a connected Ray (then no other driver
    can share this one's cluster). Re-entrant within a process.
    """

    def take() -> ClusterLease | None:
        if not (on_object_store(storage) and _connected()):
            return None
        lease = ClusterLease(storage, name)
        lease.acquire()
        return lease

    with _holds.hold(join_storage(storage, name), take):
        yield
