"""`trilevel submit` against real servers: a `ray start --head` with its job server, and `mlflow server`.

No mocks. The head and the tracking server are started here on ports of their own (never the
defaults another Ray or MLflow on this machine may hold) and stopped by what this module started
(see tests/servers.py).

The head is local, so the job's `--storage` is a local tmp dir; a multi-node cluster needs a shared
volume or s3://… there. The end-to-end test needs the full Ray dashboard (`ray[default]`: the job
server lives in it) and is skipped, saying so, where it is missing. The other tests need no server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
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
from tests.servers import free_port, mlflow_server, ray_head, rest_metrics, rest_runs, rest_tags

STAGES = {"pretrain", "search", "train", "evaluate"}
# The tiny table8 sweep cut to one trial, and its search to one epoch (all four stages still run).
ONE_TRIAL = (
    "sweep={stages.search.lambda_order: [0.1]}",
    "resources.max_concurrent_trials=1",
    "stages.search.epochs=1",
)


# --- the end-to-end test --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A Ray head with its job server and an MLflow server, both stopped at the end even on failure."""
    from ray._private.utils import get_dashboard_dependency_error

    if (missing := get_dashboard_dependency_error()) is not None:
        pytest.skip(f"the Ray job server needs the full dashboard, `pip install 'ray[default]'` ({missing})")
    root = tmp_path_factory.mktemp("submit")
    with ray_head() as head, mlflow_server(root) as mlflow:
        yield {"address": head["dashboard"], "mlflow": mlflow.url, "root": str(root)}


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

    sweeps, trials, stages = (rest_runs(mlflow_url, kind) for kind in ("sweep", "trial", "stage"))
    assert [rest_tags(r)["trilevel.sweep"] for r in sweeps] == ["submit-e2e"]
    assert len(trials) == 1 and rest_tags(trials[0])["mlflow.parentRunId"] == sweeps[0]["info"]["run_id"]
    assert "psnr/demo" in rest_metrics(trials[0])
    mine = [s for s in stages if rest_tags(s)["mlflow.parentRunId"] == trials[0]["info"]["run_id"]]
    assert sorted(rest_tags(s)["trilevel.stage"] for s in mine) == sorted(STAGES)
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
    closed = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(SubmitError) as err:
        submit_sweep("table8", address=closed, storage=str(tmp_path), tracking_uri=f"sqlite:///{tmp_path}/m.db")
    assert closed in str(err.value) and "8265" in str(err.value) and "port-forward" in str(err.value)
    for call in (lambda: job_status(closed, "x"), lambda: list(job_logs(closed, "x")), lambda: list_jobs(closed)):
        with pytest.raises(SubmitError, match="Cannot reach the Ray job server"):
            call()
    assert time.monotonic() - started < 30


def test_bad_input_is_refused_before_anything_is_submitted(tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"  # never contacted: the input is checked first
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
