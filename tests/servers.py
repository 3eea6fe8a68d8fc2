"""Real servers for tests: `mlflow server` and `ray start --head` on 127.0.0.1, on ports of their own.

Each is started in a session of its own and stopped by what the test started: its process group,
then any straggler carrying a marker in its environment (a Ray job's driver runs in a session of its
own, so killing the head's group does not reach it). Never `ray stop`, which ends every Ray on the
machine. Every process gets RAY_AUTH_MODE=disabled and RAY_USAGE_STATS_ENABLED=0: Ray 2.60 turns
token auth on once it has written a token.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import requests

MARKER_VAR = "TRILEVEL_TEST_SERVER_OWNER"
BIN = Path(sys.executable).parent


# A port found free is released before the server binds it, so another process can take it in between: a start
# that fails is tried again on new ports, this many times in all.
START_ATTEMPTS = 3


def free_port() -> int:
    """A port free now; it may be taken before it is used (see START_ATTEMPTS)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_range(size: int) -> int:
    """The first port of `size` consecutive free ports, below the ephemeral range other servers draw from."""
    rng = secrets.SystemRandom()
    for _ in range(50):
        base = rng.randrange(20000, 30000 - size)
        try:
            for port in range(base, base + size):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range")


def _env(marker: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env |= {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", MARKER_VAR: marker}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # the job's `python` is this venv's
    return env


def marked_processes(marker: str) -> list[int]:
    """PIDs of processes whose environment carries this marker (only ours can)."""
    needle = f"{MARKER_VAR}={marker}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
    return pids


def _stop(process: subprocess.Popen, marker: str, grace_s: float) -> None:
    """SIGTERM our process group, wait, then SIGKILL it and every process still carrying our marker.

    With `grace_s` 0 there is no SIGTERM: the processes die at once, as in a crash.
    """
    if grace_s > 0:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    for pid in marked_processes(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)


def _wait_http(url: str, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{url} not up within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


class MlflowServer:
    """`mlflow server` on a fixed free port with its own SQLite store and artifact folder.

    `kill()` is a real outage (SIGKILL of the server's process group, no goodbye); `start()` brings
    a server back on the same port with the same store, as a restarted pod would come back.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "mlflow.log"
        root.mkdir(parents=True, exist_ok=True)
        self._process: subprocess.Popen | None = None
        self._marker = ""

    def start(self, timeout_s: float = 180) -> None:
        """Start the server; the first start moves to another port if its port was taken in the meantime.

        A restart stays on its port (clients hold the URL), as a restarted pod keeps its service.
        """
        first = self._process is None and not self.log.exists()
        for attempt in range(START_ATTEMPTS if first else 1):
            try:
                return self._start(timeout_s)
            except RuntimeError:
                self.kill()  # one that never answered is still running
                if attempt + 1 == START_ATTEMPTS or not _port_taken(self.log):
                    raise
                self.port = free_port()
                self.url = f"http://127.0.0.1:{self.port}"

    def _start(self, timeout_s: float) -> None:
        self._marker = secrets.token_hex(8)
        cmd = [
            str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "artifacts"),
        ]  # fmt: skip
        env = _env(self._marker) | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.log, "a") as out:
            self._process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_http(f"{self.url}/health", self._process, self.log, timeout_s)

    def kill(self) -> None:
        if self._process is not None:
            _stop(self._process, self._marker, grace_s=0)
            self._process = None

    def stop(self) -> None:
        if self._process is not None:
            _stop(self._process, self._marker, grace_s=10)
            self._process = None


def _node_start_timed_out(log: Path) -> bool:
    """Whether `ray start` gave up on its raylet registering within Ray's fixed 30 s (a machine too busy)."""
    return log.exists() and "The current node timed out during startup" in log.read_text(errors="replace")


def _port_taken(log: Path) -> bool:
    """Whether a server's log says it could not bind its port."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return any(
        sign in text.lower() for sign in ("address already in use", "already in use", "failed to bind", "errno 98")
    )


@contextlib.contextmanager
def ray_head(
    *,
    dashboard: bool = True,
    num_cpus: int = 2,
    num_gpus: int | None = None,
    env: dict[str, str] | None = None,
    wrap: Sequence[str] = (),
) -> Iterator[dict[str, str]]:
    """`ray start --head --block` on free ports with its own temp dir; yields its dashboard URL and GCS address.

    `num_cpus` / `num_gpus` are logical (no device needed): a test that schedules nothing can see the cluster a
    GPU deployment would report. `env` adds variables to the head's processes (e.g. Ray's memory monitor's);
    `wrap` is a command prefix the head runs under (e.g. tests/faults.py's memory cgroup).

    The temp dir is short (/tmp/trl-…): Ray's unix socket paths must stay under ~107 characters.
    """
    for attempt in range(START_ATTEMPTS):
        marker = secrets.token_hex(8)
        temp_dir = Path(f"/tmp/trl-{marker[:8]}")
        try:
            process, started = _start_head(
                marker, temp_dir, dashboard=dashboard, num_cpus=num_cpus, num_gpus=num_gpus, env=env, wrap=wrap
            )
        except RuntimeError:
            again = _port_taken(temp_dir / "head.log") or _node_start_timed_out(temp_dir / "head.log")
            shutil.rmtree(temp_dir, ignore_errors=True)
            if attempt + 1 == START_ATTEMPTS or not again:
                raise
            continue
        try:
            yield started
        finally:
            # a test cluster holds nothing worth a graceful stop, and `ray start --block` takes its time on SIGTERM
            _stop(process, marker, grace_s=0)
            shutil.rmtree(temp_dir, ignore_errors=True)
        return


def _start_head(
    marker: str,
    temp_dir: Path,
    *,
    dashboard: bool,
    num_cpus: int,
    num_gpus: int | None,
    env: dict[str, str] | None,
    wrap: Sequence[str],
) -> tuple[subprocess.Popen, dict[str, str]]:
    """`ray start --head --block` on ports free a moment ago; RuntimeError (log kept) if it never comes up."""
    temp_dir.mkdir()
    gcs, dash = free_port(), free_port()
    workers = free_range(200)
    cmd = [
        str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", str(num_cpus), "--temp-dir", str(temp_dir),
        "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
        "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
        "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
        "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
        "--min-worker-port", str(workers), "--max-worker-port", str(workers + 199),
    ]  # fmt: skip
    if num_gpus is not None:
        cmd += ["--num-gpus", str(num_gpus)]
    from ray._private.utils import get_ray_client_dependency_error

    if get_ray_client_dependency_error() is None:  # else Ray Client is off, and asking for its port is an error
        cmd += ["--ray-client-server-port", str(free_port())]
    if dashboard:
        cmd += ["--include-dashboard", "true"]
    log = temp_dir / "head.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [*wrap, *cmd],
            env=_env(marker) | (env or {}),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=temp_dir,
        )
    url = f"http://127.0.0.1:{dash}"
    try:
        # `ray start` prints its --block notice once its raylet has registered; the dashboard can answer before
        # that and the start still fail (a raylet that does not register within 30 s takes the head down)
        _wait_log(log, "--block", process, timeout_s=120)
        if dashboard:
            _wait_http(f"{url}/api/version", process, log, timeout_s=120)
    except RuntimeError:
        _stop(process, marker, grace_s=0)
        raise
    return process, {"dashboard": url, "gcs": f"127.0.0.1:{gcs}", "temp_dir": str(temp_dir), "marker": marker}


@contextlib.contextmanager
def ray_node(gcs: str, num_cpus: int, env: dict[str, str] | None = None) -> Iterator[dict]:
    """A worker node joining the head at `gcs` (`ray start --address --block`), a process group of its own.

    Yields its marker and `kill()`: SIGKILL of everything the node runs (its raylet, its workers), at once,
    as a machine that is lost. Stopped the same way at the end if it is still up. `env` adds variables to the
    node's processes (its workers inherit them). It starts no log monitor: on this machine it writes its logs
    where the head's log monitor already reads them (one per host, Ray says; each more sends every line again).
    """
    for attempt in range(START_ATTEMPTS):
        marker = secrets.token_hex(8)
        workers = free_range(100)
        cmd = [
            str(BIN / "ray"), "start", "--address", gcs, "--block", "--num-cpus", str(num_cpus),
            "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
            "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
            "--min-worker-port", str(workers), "--max-worker-port", str(workers + 99), "--include-log-monitor", "false",
        ]  # fmt: skip
        log = Path(f"/tmp/trl-node-{marker[:8]}.log")
        with open(log, "w") as out:
            process = subprocess.Popen(
                cmd, env=_env(marker) | (env or {}), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            _wait_log(log, "--block", process, timeout_s=120)
        except RuntimeError:
            _stop(process, marker, grace_s=0)
            again = _port_taken(log) or _node_start_timed_out(log)
            log.unlink(missing_ok=True)
            if attempt + 1 == START_ATTEMPTS or not again:
                raise
            continue
        try:
            yield {"marker": marker, "log": str(log), "kill": lambda p=process, m=marker: _stop(p, m, grace_s=0)}
        finally:
            _stop(process, marker, grace_s=0)
            log.unlink(missing_ok=True)
        return


def _wait_log(log: Path, text: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if text in log.read_text():
            return
        time.sleep(0.5)
    raise RuntimeError(f"no {text!r} in {log} within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


WITHOUT_PROJECT = """
# Written by tests/servers.py: this project's packages cannot be imported in this process (and its children).
import sys

def _ours(hook):
    return getattr(hook, "__module__", "").startswith("__editable__")  # the editable install's finder

sys.meta_path[:] = [finder for finder in sys.meta_path if not _ours(finder)]
sys.path_hooks[:] = [hook for hook in sys.path_hooks if not _ours(hook)]
sys.path_importer_cache.clear()
"""


def without_project_site(root: Path) -> Path:
    """A folder holding a ``sitecustomize.py`` that hides orchestrator, workers and search_space (for PYTHONPATH)."""
    folder = root / "without-project"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(WITHOUT_PROJECT)
    return folder


@contextlib.contextmanager
def model_server(model_uri: str, tracking_uri: str, cwd: Path, timeout_s: float = 180) -> Iterator[str]:
    """`mlflow models serve -m MODEL_URI --env-manager local` on a free port; yields its base URL.

    The server resolves `model_uri` (e.g. ``models:/NAME@champion``) through `tracking_uri` as a user's
    shell would (``MLFLOW_TRACKING_URI``), and runs in this venv (``--env-manager local``) with this
    project's packages made unimportable (:data:`WITHOUT_PROJECT`, a ``sitecustomize`` on PYTHONPATH):
    the model must bring the code it needs, as in an environment where trilevel-nas is not installed.
    A start whose port was taken in the meantime is tried again on another port.
    """
    log = cwd / "model-server.log"
    for attempt in range(START_ATTEMPTS):
        marker, port = secrets.token_hex(8), free_port()
        cmd = [
            str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--env-manager", "local",
        ]  # fmt: skip
        env = _env(marker) | {"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_REGISTRY_URI": tracking_uri}
        env["PYTHONPATH"] = str(without_project_site(cwd))
        with open(log, "w") as out:
            process = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd
            )
        try:
            _wait_http(f"http://127.0.0.1:{port}/ping", process, log, timeout_s)
        except RuntimeError:
            _stop(process, marker, grace_s=0)
            if attempt + 1 == START_ATTEMPTS or not _port_taken(log):
                raise
            continue
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            _stop(process, marker, grace_s=10)
        return
