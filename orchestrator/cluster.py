"""Connecting the driver to Ray: an existing cluster (`--address`) or a local one sized for this machine."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["TRAIN_POLL_ENV", "job_env_vars", "ray_connection"]

# Ray Train V2's controller polls its workers every 2 s by default, and a stage waits on several polls
# (start, reports, finish): 0.5 s takes ~3 s off every TorchTrainer run (BENCHMARKS.md). A value set in
# the environment wins.
TRAIN_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
TRAIN_POLL_S = "0.5"


def job_env_vars() -> dict[str, str]:
    """Environment every process of a trilevel job gets: Train V2 on, the faster Train controller poll."""
    return {"RAY_TRAIN_V2_ENABLED": "1", TRAIN_POLL_ENV: os.environ.get(TRAIN_POLL_ENV, TRAIN_POLL_S)}


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
    else:  # a local cluster's processes inherit this process's environment
        for name, value in job_env_vars().items():
            os.environ.setdefault(name, value)
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, log_to_driver=True)
    try:
        yield
    finally:
        ray.shutdown()
