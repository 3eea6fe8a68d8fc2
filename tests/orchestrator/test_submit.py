"""`trilevel submit` against real servers: a `ray start --head` with its job server, and `mlflow server`.

No mocks. The head and the tracking server are started here, each on ports of its own (never the
defaults another Ray or MLflow on this machine may hold), and stopped here by what this module started:
their process groups, then any straggler carrying this module's marker in its environment (a job's
driver runs in a session of its own, so killing the head's group does not reach it). Never `ray stop`,
which ends every Ray on the machine. Every process gets RAY_AUTH_MODE=disabled and
RAY_USAGE_STATS_ENABLED=0: Ray 2.60 turns token auth on once it has written a token.

The head is local, so the job's `--storage` is a local tmp dir; a multi-node cluster needs a shared
volume or s3://… there. The end-to-end test needs the full Ray dashboard (`ray[default]`: the job
server lives in it) and is skipped, saying so, where it is missing. The other tests need no server.
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
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import requests
import yaml
from click.testing import CliRunner

from orchestrator.experiment import ExperimentError, load_experiment
from orchestrator.submit import (
    EXPERIMENT_ENV_VAR,
    SubmitError,
    build_entrypoint,
    job_logs,
    job_status,
    job_status_or_none,
    list_jobs,
    stop_job,
    submit_sweep,
)

STAGES = {"pretrain", "search", "train", "evaluate"}
MARKER_VAR = "TRILEVEL_TEST_SUBMIT_OWNER"
# The tiny table8 sweep cut to one trial, and its search to one epoch (all four stages still run).
ONE_TRIAL = (
    "sweep={stages.search.lambda_order: [0.1]}",
    "resources.max_concurrent_trials=1",
    "stages.search.epochs=1",
)
BIN = Path(sys.executable).parent


# --- process helpers ----------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_range(size: int) -> int:
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


def _marked(marker: str) -> list[int]:
    """PIDs of processes whose environment carries this module's marker (only ours can)."""
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
    """SIGTERM our process group, wait, then SIGKILL it and every process still carrying our marker."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    for pid in _marked(marker):
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


@contextlib.contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    """`mlflow server` on a free port with its own SQLite store and artifact folder; yields its URL."""
    marker = secrets.token_hex(8)
    port = _free_port()
    log = root / "mlflow.log"
    cmd = [
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    env = _env(marker) | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "w") as out:
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(f"{url}/health", process, log, timeout_s=90)
        yield url
    finally:
        _stop(process, marker, grace_s=10)


@contextlib.contextmanager
def ray_head(*, dashboard: bool = True) -> Iterator[dict[str, str]]:
    """`ray start --head --block` on free ports with its own temp dir; yields its dashboard URL and GCS address.

    The temp dir is short (/tmp/trl-…): Ray's unix socket paths must stay under ~107 characters.
    """
    marker = secrets.token_hex(8)
    temp_dir = Path(f"/tmp/trl-{marker[:8]}")
    temp_dir.mkdir()
    gcs, dash = _free_port(), _free_port()
    workers = _free_range(200)
    cmd = [
        str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2", "--temp-dir", str(temp_dir),
        "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
        "--node-manager-port", str(_free_port()), "--object-manager-port", str(_free_port()),
        "--dashboard-agent-listen-port", str(_free_port()), "--dashboard-agent-grpc-port", str(_free_port()),
        "--metrics-export-port", str(_free_port()), "--runtime-env-agent-port", str(_free_port()),
        "--min-worker-port", str(workers), "--max-worker-port", str(workers + 199),
    ]  # fmt: skip
    from ray._private.utils import get_ray_client_dependency_error

    if get_ray_client_dependency_error() is None:  # else Ray Client is off, and asking for its port is an error
        cmd += ["--ray-client-server-port", str(_free_port())]
    if dashboard:
        cmd += ["--include-dashboard", "true"]
    log = temp_dir / "head.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            cmd, env=_env(marker), stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=temp_dir
        )
    try:
        url = f"http://127.0.0.1:{dash}"
        if dashboard:
            _wait_http(f"{url}/api/version", process, log, timeout_s=120)
        else:
            _wait_log(log, "--block", process, timeout_s=120)
        yield {"dashboard": url, "gcs": f"127.0.0.1:{gcs}", "temp_dir": str(temp_dir), "marker": marker}
    finally:
        _stop(process, marker, grace_s=10)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_log(log: Path, text: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if text in log.read_text():
            return
        time.sleep(0.5)
    raise RuntimeError(f"no {text!r} in {log} within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


# --- MLflow's REST API ----------------------------------------------------------------------------
def _runs(url: str, kind: str) -> list[dict]:
    got = requests.get(f"{url}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": "trilevel"})
    assert got.status_code == 200, got.text
    experiment_id = got.json()["experiment"]["experiment_id"]
    body = {"experiment_ids": [experiment_id], "filter": f"tags.`trilevel.kind` = '{kind}'", "max_results": 100}
    found = requests.post(f"{url}/api/2.0/mlflow/runs/search", json=body)
    assert found.status_code == 200, found.text
    return found.json().get("runs", [])


def _tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def _metrics(run: dict) -> dict[str, float]:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


# --- the end-to-end test --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A Ray head with its job server and an MLflow server, both stopped at the end even on failure."""
    from ray._private.utils import get_dashboard_dependency_error

    if (missing := get_dashboard_dependency_error()) is not None:
        pytest.skip(f"the Ray job server needs the full dashboard, `pip install 'ray[default]'` ({missing})")
    root = tmp_path_factory.mktemp("submit")
    with ray_head() as head, mlflow_server(root) as mlflow_url:
        yield {"address": head["dashboard"], "mlflow": mlflow_url, "root": str(root)}


def test_submitted_sweep_runs_on_the_cluster_and_is_tracked(servers):
    address, mlflow_url = servers["address"], servers["mlflow"]
    storage = os.path.join(servers["root"], "runs")
    submission_id = submit_sweep(
        "table8",
        address=address,
        scale="tiny",
        overrides=ONE_TRIAL,
        name="submit-e2e",
        storage=storage,
        tracking_uri=mlflow_url,
        wait=False,
    )
    assert submission_id.startswith("trilevel-submit-e2e-")

    deadline = time.monotonic() + 240
    status = job_status(address, submission_id)
    while status not in {"SUCCEEDED", "FAILED", "STOPPED"} and time.monotonic() < deadline:
        time.sleep(3)
        status = job_status(address, submission_id)
    output = "".join(job_logs(address, submission_id))
    if status in {"PENDING", "RUNNING"}:
        stop_job(address, submission_id)
    assert status == "SUCCEEDED", f"job {submission_id} is {status}:\n{output[-6000:]}"
    assert "Sweep submit-e2e: lambda_order=0.1 TERMINATED" in output, output[-3000:]

    sweeps, trials, stages = (_runs(mlflow_url, kind) for kind in ("sweep", "trial", "stage"))
    assert [_tags(r)["trilevel.sweep"] for r in sweeps] == ["submit-e2e"]
    assert len(trials) == 1 and _tags(trials[0])["mlflow.parentRunId"] == sweeps[0]["info"]["run_id"]
    assert "psnr/demo" in _metrics(trials[0])
    mine = [s for s in stages if _tags(s)["mlflow.parentRunId"] == trials[0]["info"]["run_id"]]
    assert sorted(_tags(s)["trilevel.stage"] for s in mine) == sorted(STAGES)
    assert all(r["info"]["status"] == "FINISHED" for r in sweeps + trials + mine)

    followed = "".join(job_logs(address, submission_id, follow=True))  # a finished job's stream just ends
    assert "Sweep submit-e2e: lambda_order=0.1 TERMINATED" in followed

    # A finished job: nothing to stop, listed with its sweep, status through the `status` hook.
    assert stop_job(address, submission_id) is False
    listed = {job.submission_id: job for job in list_jobs(address)}
    assert listed[submission_id].sweep == "submit-e2e" and listed[submission_id].status == "SUCCEEDED"
    summary = job_status_or_none(submission_id, address)
    assert summary is not None and summary.status == "SUCCEEDED"
    assert job_status_or_none("trilevel-no-such-job", address) is None
    with pytest.raises(SubmitError, match="No job 'trilevel-no-such-job'"):
        job_status(address, "trilevel-no-such-job")

    from orchestrator.cli_submit import echo_job_status, jobs, stop

    shown = CliRunner().invoke(click.command()(lambda: echo_job_status(submission_id, address)))
    assert shown.exit_code == 0 and "SUCCEEDED" in shown.output, shown.output
    assert f"trilevel status submit-e2e --tracking-uri {mlflow_url}" in shown.output
    unknown = CliRunner().invoke(click.command()(lambda: echo_job_status("trilevel-no-such-job", address)))
    assert unknown.exit_code == 1 and "No job 'trilevel-no-such-job'" in unknown.output

    listing = CliRunner().invoke(jobs, ["--address", address])
    assert listing.exit_code == 0 and submission_id in listing.output, listing.output
    stopped = CliRunner().invoke(stop, [submission_id, "--address", address])
    assert stopped.exit_code == 0 and "not running (SUCCEEDED)" in stopped.output, stopped.output


# --- no server needed -----------------------------------------------------------------------------
def test_unreachable_address_is_named_with_the_port_forward_hint(tmp_path):
    closed = f"http://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    with pytest.raises(SubmitError) as err:
        submit_sweep("table8", address=closed, storage=str(tmp_path), tracking_uri=f"sqlite:///{tmp_path}/m.db")
    assert closed in str(err.value) and "8265" in str(err.value) and "port-forward" in str(err.value)
    for call in (lambda: job_status(closed, "x"), lambda: list(job_logs(closed, "x")), lambda: list_jobs(closed)):
        with pytest.raises(SubmitError, match="Cannot reach the Ray job server"):
            call()
    assert time.monotonic() - started < 30


def test_bad_input_is_refused_before_anything_is_submitted(tmp_path):
    closed = f"http://127.0.0.1:{_free_port()}"  # never contacted: the input is checked first
    with pytest.raises(ExperimentError, match="unknown experiment 'no-such-preset'"):
        submit_sweep("no-such-preset", address=closed, storage=str(tmp_path))
    with pytest.raises(ExperimentError, match=r"stages\.search\.epochs"):
        submit_sweep("table8", address=closed, overrides=["stages.search.epochs=0"], storage=str(tmp_path))
    with pytest.raises(SubmitError, match="relative"):
        submit_sweep("table8", address=closed, storage="runs", tracking_uri=f"sqlite:///{tmp_path}/m.db")
    with pytest.raises(SubmitError, match="relative local path"):
        submit_sweep("table8", address=closed, storage=str(tmp_path), tracking_uri="sqlite:///m.db")

    from orchestrator.cli_submit import submit

    result = CliRunner().invoke(submit, ["no-such-preset", "--address", closed, "--storage", str(tmp_path)])
    assert result.exit_code == 1 and "unknown experiment" in result.output and "Traceback" not in result.output


def test_a_file_experiment_reaches_the_job_resolved(tmp_path):
    """The entrypoint of a YAML file really rebuilds it on the head: run it with a `python` that only loads it."""
    source = tmp_path / "my exp.yaml"
    source.write_text("extends: table8\nname: from-file\nseed: 7\n")
    resolved = load_experiment(str(source), "tiny", ONE_TRIAL, storage=str(tmp_path / "runs"))
    entrypoint = build_entrypoint(str(source), resolved, "tiny", ONE_TRIAL)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text(
        f'#!/bin/sh\nexec {sys.executable} -c "import sys; from orchestrator.experiment import load_experiment; '
        f'print(load_experiment(sys.argv[1]).model_dump_json())" "$4"\n'
    )
    (fake / "python").chmod(0o755)
    env = {
        "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}",
        EXPERIMENT_ENV_VAR: yaml.safe_dump(resolved.model_dump(mode="json"), sort_keys=False),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    ran = subprocess.run(["sh", "-c", entrypoint], env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == resolved.model_dump_json()
