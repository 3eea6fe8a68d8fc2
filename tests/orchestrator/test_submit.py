"""`trilevel submit` without a cluster: bad input, an unreachable job server, a file experiment's entrypoint.

A submitted sweep on a real `ray start --head` and `mlflow server` (and the job commands on it) is
`tests/reliability/test_faulted_sweep.py`, which submits one through every fault a sweep must survive.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from orchestrator.experiment import ExperimentError, load_experiment
from orchestrator.jobs import SubmitError, job_logs, job_status, job_status_or_none, list_jobs, stop_job
from orchestrator.submit import (
    EXPERIMENT_ENV_VAR,
    build_entrypoint,
    build_reproduce_entrypoint,
    build_runtime_env,
    reproduce_target,
    submit_reproduce,
    submit_sweep,
)
from orchestrator.tracking.environment import COMMIT_ENV_VAR, DIRTY_ENV_VAR, VERSION_ENV_VAR
from tests.servers import free_port

STAGES = {"pretrain", "search", "train", "evaluate"}
# The tiny table8 sweep cut to one trial, and its search to one epoch (all four stages still run).
ONE_TRIAL = (
    "sweep={stages.search.lambda_order: [0.1]}",
    "resources.max_concurrent_trials=1",
    "stages.search.epochs=1",
)


# --- no server needed -----------------------------------------------------------------------------
def test_unreachable_address_is_named_with_the_port_forward_hint(tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SubmitError) as err:
        submit_sweep("table8", address=closed, storage=str(tmp_path), tracking_uri=f"sqlite:///{tmp_path}/m.db")
    assert closed in str(err.value) and "8265" in str(err.value) and "port-forward" in str(err.value)
    calls = (
        lambda: job_status(closed, "x"),
        lambda: job_status_or_none(closed, "x"),  # the address first, as in every function of orchestrator.jobs
        lambda: list(job_logs(closed, "x")),
        lambda: stop_job(closed, "x"),
        lambda: list_jobs(closed),
    )
    for call in calls:
        with pytest.raises(SubmitError, match=f"Cannot reach the Ray job server at {re.escape(closed)} "):
            call()
    from orchestrator.cli.report import status

    asked = CliRunner().invoke(status, ["x", "--address", closed])  # `trilevel status ID --address`: the same probe
    assert asked.exit_code == 1 and f"Cannot reach the Ray job server at {closed} " in asked.output


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

    from orchestrator.cli.submit import submit

    result = CliRunner().invoke(submit, ["no-such-preset", "--address", closed, "--storage", str(tmp_path)])
    assert result.exit_code == 1 and "unknown experiment" in result.output and "Traceback" not in result.output

    # `submit reproduce`: its tables, seeds and paths are checked here too
    with pytest.raises(ExperimentError, match="--tables: unknown 10; choose from 7, 8, 9, fig1"):
        submit_reproduce(address=closed, tables=["10"], storage=str(tmp_path))
    with pytest.raises(SubmitError, match="relative"):
        submit_reproduce(address=closed, tables=["8"], storage="runs", tracking_uri=f"sqlite:///{tmp_path}/m.db")
    where = ["--address", closed, "--storage", str(tmp_path)]
    for args, said in (
        (["reproduce", "--tables", "8", "--name", "x"], "--name x: `submit reproduce` names its sweeps"),
        (["table8", "--tables", "8"], "--tables 8: only `submit reproduce` takes it, not a sweep (table8)"),
        (["reproduce", "--seeds", "0"], "Invalid value for '--seeds': 0 is not in the range x>=1"),
    ):
        result = CliRunner().invoke(submit, [*args, *where])
        assert result.exit_code == 2 and said in result.output and "Traceback" not in result.output, result.output


def test_the_reproduce_job_runs_trilevel_reproduce_with_the_same_options(tmp_path):
    """The job's command is `trilevel reproduce` as the CLI parses it: the submitted options, on the head's Ray."""
    from orchestrator.cli.reproduce import reproduce

    storage, uri = str(tmp_path / "runs"), f"sqlite:///{tmp_path}/m.db"
    experiments = reproduce_target("small", 3, ["8", "fig1"], ["stages.search.epochs=2"], 2, storage, uri)
    assert [e.name for e in experiments] == ["reproduce-small-table8-random2", "reproduce-small-fig1-random2"]
    words = shlex.split(
        build_reproduce_entrypoint(experiments, "small", 3, ["8", "fig1"], ["stages.search.epochs=2"], 2, True)
    )
    assert words[:4] == ["python", "-m", "orchestrator", "reproduce"]
    params = reproduce.make_context("reproduce", words[4:]).params
    assert params | {"overrides": list(params["overrides"])} == {
        "scale": "small",
        "seeds": 3,
        "random_draws": 2,
        "tables": "8,fig1",
        "overrides": ["stages.search.epochs=2"],
        "storage": storage,
        "tracking_uri": uri,
        "address": "auto",
        "dry_run": True,
        "no_reuse": False,
        "verbose": False,
    }


def test_a_preset_sweeps_seeds_and_random_arms_on_the_cluster_as_it_does_here(tmp_path):
    from orchestrator.cli.run import sweep

    resolved = load_experiment("table8", "tiny", ONE_TRIAL, storage=str(tmp_path / "runs"))
    words = shlex.split(build_entrypoint("table8", resolved, "tiny", ONE_TRIAL, seeds=3, random_draws=2))
    params = sweep.make_context("sweep", words[4:]).params
    assert (params["seeds"], params["random_draws"], params["experiment"]) == (3, 2, "table8")


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


def test_the_job_carries_the_submitting_checkouts_commit_and_version(tmp_path, monkeypatch):
    """The upload has no .git: the commit and version travel in the job's env, where every run's tags read them."""
    for name in (COMMIT_ENV_VAR, DIRTY_ENV_VAR, VERSION_ENV_VAR):
        monkeypatch.delenv(name, raising=False)
    root = Path(__file__).resolve().parents[2]
    resolved = load_experiment("table8", "tiny", ONE_TRIAL, storage=str(tmp_path / "runs"))
    env = build_runtime_env("table8", resolved, str(root), echo=lambda _: None)
    assert env["working_dir"] == str(root) and ".git" in env["excludes"]
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == resolved.tracking.uri
    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    assert env["env_vars"][VERSION_ENV_VAR] == version
    if (root / ".git").exists():
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        assert env["env_vars"][COMMIT_ENV_VAR] == head.stdout.strip()
        assert env["env_vars"][DIRTY_ENV_VAR] in {"true", "false"}
    # code that is itself a submitted job's or the image's (no .git) passes on the provenance it was given
    monkeypatch.setenv(COMMIT_ENV_VAR, "b" * 40)
    copy = tmp_path / "copy"
    copy.mkdir()
    env = build_runtime_env("table8", resolved, str(copy), echo=lambda _: None)
    assert env["env_vars"][COMMIT_ENV_VAR] == "b" * 40 and EXPERIMENT_ENV_VAR not in env["env_vars"]
