"""Shared fixtures. One Ray instance per test session, sized so Tune + Train + Data never deadlock."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# The fault tests' barriers (workers.gates, tests/gates.py): set before any Ray starts, so every process of the
# tests' Rays (trials, Train workers, job drivers) inherits it. Only a gate a test arms ever blocks.
if "TRILEVEL_TEST_GATES" not in os.environ:
    os.environ["TRILEVEL_TEST_GATES"] = tempfile.mkdtemp(prefix="trilevel-gates-")
    atexit.register(shutil.rmtree, os.environ["TRILEVEL_TEST_GATES"], True)  # this session's gates, gone after it


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread in the test process: on a 2-core machine the Ray workers need the other core,
    and a 2-thread pool stalls on tiny ops whenever one of its threads is descheduled."""
    import torch

    torch.set_num_threads(1)
    # xdist 3.8 tags a grouped test by rewriting Node._nodeid, which pytest 9.2 no longer reads: the tests
    # sharing a cluster would be split over both processes, each starting its own cluster.
    if config.getoption("dist", "no") == "loadgroup" and pytest.version_tuple >= (9, 2):
        raise pytest.UsageError(f"pytest {pytest.__version__} breaks xdist_group: install constraints.txt's pytest")


@pytest.fixture(autouse=True)
def _isolated_test() -> Iterator[None]:
    """Each test leaves the environment variables and torch's thread count as it found them.

    The product sets variables for the processes it starts (the tracker's MLflow HTTP timeouts, Ray's and Ray
    Train's settings) and a stage sets torch's threads; left behind, they change what later tests in the same
    process see (a 30 s MLflow timeout where a test expects the default, a thread count a timing relies on).
    Set up after the wider-scoped fixtures a test uses: what the session's Ray set stays for the tests sharing it.
    """
    import torch

    environ, threads = dict(os.environ), torch.get_num_threads()
    yield
    for key in set(os.environ) - set(environ):
        del os.environ[key]
    os.environ.update(environ)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ray_session():
    """Start (once) a local Ray with 2 logical CPUs and 1 logical GPU (no CUDA: only placement is tested on it,
    tests/orchestrator/test_gpu_share.py); tests that need Ray take this fixture."""
    import ray

    from orchestrator.cluster import LOCAL_RAY_ENV

    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
    if not ray.is_initialized():
        # address="local": a Ray of the tests' own, whatever RAY_ADDRESS or another head on the machine says
        ray.init(
            address="local",
            num_cpus=2,
            num_gpus=1,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> str:
    """The built-in data set (scikit-image's photographs), written once per test session."""
    from workers.shards.demo import write_demo_dataset

    root = tmp_path_factory.mktemp("demo-data")
    write_demo_dataset(str(root))
    return str(root)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """One real cluster for the tests that need one: `ray start --head` with its job server, reporting the
    logical GPUs and CPUs of a 3-GPU deployment (nothing is scheduled on them but CPU work), and an MLflow
    server. Shared by the pre-flight tests and the faulted-sweep scenario; stopped at the end."""
    from ray._private.utils import get_dashboard_dependency_error

    from tests.servers import MlflowServer, ray_head

    if (missing := get_dashboard_dependency_error()) is not None:
        pytest.skip(f"the Ray job server needs the full dashboard, `pip install 'ray[default]'` ({missing})")
    root = tmp_path_factory.mktemp("cluster")
    mlflow = MlflowServer(root / "mlflow")
    with ThreadPoolExecutor(1) as pool:
        started = pool.submit(mlflow.start)  # the MLflow server comes up while the Ray head does
        try:
            with ray_head(num_cpus=CLUSTER_CPUS, num_gpus=CLUSTER_GPUS) as head:
                started.result()
                yield {**head, "mlflow": mlflow.url, "mlflow_server": mlflow, "root": str(root)}
        finally:
            started.exception()  # waits until the start returned, so stop() sees its process
            mlflow.stop()


CLUSTER_GPUS, CLUSTER_CPUS = 3, 24  # the RayJob's GPU worker group at maxReplicas: 3 pods of 1 GPU and 8 CPUs
