"""Connecting the driver to Ray: an existing cluster (`--address`) or a local one sized for this machine."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["LOCAL_RAY_ENV", "RayUnreachable", "check_reachable", "ray_connection"]

# How long a cluster's head may take to accept a TCP connection before the address is called dead.
REACH_TIMEOUT_S = 5.0

# A local, one-machine Ray has no node that can be preempted and no metrics scraper: each Train run
# would still start a preemption-watcher actor and metrics callbacks (~5 s per run on 2 cores).
LOCAL_RAY_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_METRICS_ENABLED": "0"}


class RayUnreachable(RuntimeError):
    """Nothing answers at the `--address` the user gave: a typo, a stopped head, a closed port."""


def _bootstrap(address: str) -> tuple[str, int] | None:
    """(host, port) that `ray.init(address)` will dial, as Ray resolves it; None where Ray decides alone."""
    if address.startswith("ray://"):
        host, _, port = address.removeprefix("ray://").partition(":")
        return (host, int(port)) if port.isdigit() else None
    try:  # Ray's own resolution (auto, RAY_ADDRESS, localhost -> this node's IP); a private helper, so guarded
        from ray._private.services import canonicalize_bootstrap_address

        resolved = canonicalize_bootstrap_address(address)
    except Exception:  # an unparsable or undiscoverable address: ray.init says why itself
        return None
    if not resolved:
        return None
    host, _, port = resolved.rpartition(":")
    return (host, int(port)) if port.isdigit() else None


def check_reachable(address: str, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """Fail at once, naming the address, when no Ray head accepts connections there.

    `ray.init` retries a dead GCS address for up to ~20 minutes (20 attempts of about a minute),
    printing only low-level RPC warnings to the driver log, so a mistyped `--address` looked like a hang.
    """
    target = _bootstrap(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout_s):
            pass
    except OSError as err:
        host, port = target
        raise RayUnreachable(
            f"no Ray cluster answers at --address {address} ({host}:{port}: {err.strerror or err}); "
            "check the address (a head's GCS address, `auto` or ray://HOST:10001) and that the head runs, "
            "or leave --address out to run on a local Ray"
        ) from None


@contextmanager
def ray_connection(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[None]:
    """`ray.init` for the duration of a command; a local Ray is shut down again, a cluster is left running.

    `address` is `auto`, `ray://host:10001` or a head's GCS address. Only what this context
    started is stopped: never `ray stop`, which would end every Ray on the machine.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    if address:
        check_reachable(address)
        ray.init(address=address, log_to_driver=True)
    else:
        for key, value in LOCAL_RAY_ENV.items():  # inherited by every process of the local Ray
            os.environ.setdefault(key, value)
        # address="local": always a new Ray of our own, even when RAY_ADDRESS is set or a `ray start` head
        # runs elsewhere on this machine (without it, ray.init would attach to that head and refuse num_cpus).
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, log_to_driver=True)
    try:
        yield
    finally:
        ray.shutdown()
