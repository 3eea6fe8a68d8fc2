"""Connecting the driver to Ray: an existing cluster (`--address`) or a local one sized for this machine."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["LOCAL_RAY_ENV", "ray_connection"]

# A local, one-machine Ray has no node that can be preempted and no metrics scraper: each Train run
# would still start a preemption-watcher actor and metrics callbacks (~5 s per run on 2 cores).
LOCAL_RAY_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_METRICS_ENABLED": "0"}


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
