"""Shared fixtures. One Ray instance per test session, sized so Tune + Train + Data never deadlock."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread in the test process: on a 2-core machine the Ray workers need the other core,
    and a 2-thread pool stalls on tiny ops whenever one of its threads is descheduled."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ray_session():
    """Start (once) a local Ray with 2 logical CPUs; tests that need Ray take this fixture."""
    import ray

    from orchestrator.cluster import LOCAL_RAY_ENV

    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> str:
    """The built-in data set (scikit-image's photographs), written once per test session."""
    from workers.shards import write_demo_dataset

    root = tmp_path_factory.mktemp("demo-data")
    write_demo_dataset(str(root))
    return str(root)
