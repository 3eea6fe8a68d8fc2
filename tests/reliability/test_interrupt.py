"""Ctrl-C on a real `trilevel run` and `trilevel reproduce`, `trilevel stop` on a real `trilevel reproduce` job, and a
second driver of the same sweep while it runs (issue 19, items 1 and 4).

No mock: the driver is a `python -m orchestrator run` process on the session's real cluster (tests/conftest.py:
no Ray start of its own to pay), in a session of its own so the test can send SIGINT to its whole process
group as a terminal does on Ctrl-C. While it trains,
a second driver of the same sweep is refused before starting Ray, naming the first. The interrupted
driver must exit non-zero saying the trial stopped, with every MLflow run of the sweep KILLED or FINISHED
(the sweep's and the trial's KILLED, none RUNNING); `trilevel resume` then finishes the trial. `trilevel stop`
reaches a submitted `trilevel reproduce` (its driver gets SIGINT, as on Ctrl-C) while its trial stands at a test
gate, so the interrupt lands mid-stage by construction; Ctrl-C on the same `trilevel reproduce` run locally exits
130 with the runs KILLED, and running it once more finishes the trial.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from orchestrator.reproduce import plan_reproduce, reproduce_experiments
from tests.gates import Gate
from tests.helpers import TINY, wait_for
from workers.stage_io import checkpoint_names

pytestmark = pytest.mark.xdist_group("cluster")  # shares the session cluster (tests/conftest.py)

SWEEP = "interrupted"
EPOCHS = (
    "stages.pretrain.epochs=1",
    "stages.pretrain.steps_per_epoch=2",
    "stages.search.epochs=2",
    "stages.search.steps_per_epoch=2",
    "stages.train.epochs=1",
    "stages.train.steps_per_epoch=2",
)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator", *args]


def _checkpointed(storage: Path) -> bool:
    return any(checkpoint_names(str(run)) for run in storage.glob(f"{SWEEP}/stages/*/run-*"))


def _statuses(uri: str, sweep: str = SWEEP) -> dict[str, str]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("trilevel")
    runs = client.search_runs([experiment.experiment_id], f"tags.`trilevel.sweep` = '{sweep}'", max_results=100)
    return {f"{run.data.tags['trilevel.kind']}:{run.info.run_name}": run.info.status for run in runs}


def test_ctrl_c_ends_killed_and_non_zero_a_second_driver_is_refused_and_resume_finishes(cluster, demo_data, tmp_path):
    storage, uri = tmp_path / "runs", f"sqlite:///{tmp_path / 'mlflow.db'}"
    where = ["--name", SWEEP, "--storage", str(storage), "--tracking-uri", uri, "--address", cluster["gcs"]]
    data = [f"data.train={demo_data}/train", f"data.val={{demo-val: {demo_data}/val}}"]
    settings = [*TINY, *EPOCHS, *data, f"data.test={{demo: {demo_data}/test}}"]
    command = _cli("run", "table8", *where, *(arg for item in settings for arg in ("--set", item)))
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        first = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for((storage / SWEEP / "lease.json").is_file, 300, "the first driver's lease")
        second = subprocess.run(command, capture_output=True, text=True, timeout=300)
        refused = " ".join((second.stdout + second.stderr).split())
        assert second.returncode == 1, refused[-3000:]
        assert f"being run by another driver: pid {first.pid} on host {socket.gethostname()}" in refused
        assert "Traceback" not in refused and "log to" not in refused  # refused before connecting to Ray

        wait_for(lambda: first.poll() is not None or _checkpointed(storage), 600, "the trial's first checkpoint")
        assert first.poll() is None, log.read_text()[-4000:]
        os.killpg(first.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C: the whole foreground group
        code = first.wait(timeout=300)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    said = log.read_text()
    assert code == 130, said[-4000:]
    assert "STOPPED" in said and f"trilevel resume {SWEEP}" in said, said[-4000:]
    assert "TERMINATED" not in said, said[-4000:]
    statuses = _statuses(uri)
    assert statuses[f"sweep:{SWEEP}"] == "KILLED" and "RUNNING" not in statuses.values(), statuses
    (trial,) = [key for key in statuses if key.startswith("trial:")]
    assert statuses[trial] == "KILLED", statuses
    assert not (storage / SWEEP / "lease.json").exists()  # released on the way out

    again = subprocess.run(
        _cli("resume", SWEEP, "--storage", str(storage), "--address", cluster["gcs"]),
        capture_output=True,
        text=True,
        timeout=900,
    )
    said = again.stdout + again.stderr
    assert again.returncode == 0, said[-4000:]
    assert f"Sweep {SWEEP}: " in said and "TERMINATED" in said, said[-4000:]
    statuses = _statuses(uri)
    assert set(statuses.values()) == {"FINISHED"} and len(statuses) == 1 + 1 + 4, statuses  # sweep, trial, stages


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_trilevel_stop_on_a_reproduce_job_and_ctrl_c_on_reproduce_end_it_honestly_and_reproduce_again_finishes(
    cluster, demo_data, tmp_path
):
    """`trilevel stop JOB` on a `trilevel submit reproduce` job (one arm of table8) whose trial stands at a gate
    before its first checkpoint: the job's `trilevel reproduce` driver gets SIGINT (what `stop` sends), says the
    trial stopped, its runs and the sweep's end KILLED, none RUNNING. The same `trilevel reproduce`, run locally,
    is hit by Ctrl-C before the train stage's checkpoint: it exits 130 (a stopped job's exit status is Ray's to
    hide), its runs KILLED again, and while it ran a second one was refused before connecting to Ray; run once
    more, it finishes the trial."""
    from click.testing import CliRunner

    from orchestrator.cli.report import status
    from orchestrator.cli.submit import stop, submit
    from orchestrator.jobs import job_logs, job_status, list_jobs

    storage, uri, address = tmp_path / "runs", f"sqlite:///{tmp_path / 'mlflow.db'}", cluster["dashboard"]
    data = [f"data.train={demo_data}/train", f"data.val={{demo-val: {demo_data}/val}}"]
    settings = [
        *TINY,
        *EPOCHS,
        *data,
        f"data.test={{demo: {demo_data}/test}}",
        "sweep={stages.search.lambda_order: [0.1]}",
    ]
    (experiment,) = reproduce_experiments("tiny", 1, ["8"], settings, storage=str(storage), **{"tracking.uri": uri})
    (trial,) = plan_reproduce([experiment]).plans[experiment.name]
    options = ["--tables", "8", "--storage", str(storage), "--tracking-uri", uri]
    options += [arg for item in settings for arg in ("--set", item)]
    with Gate(trial.runs[0].settings.checkpoints, "pretrain-e0001") as gate:
        submitted = CliRunner().invoke(submit, ["reproduce", "--address", address, *options, "--no-wait"])
        assert submitted.exit_code == 0, submitted.output
        job = submitted.stdout.split()[0]
        assert job.startswith("trilevel-reproduce-tiny-"), submitted.output
        (listed,) = [found for found in list_jobs(address) if found.submission_id == job]
        assert listed.sweep == experiment.name  # the job's metadata names its sweeps; `status ID` points at each
        assert listed.entrypoint.startswith("python -m orchestrator reproduce --scale tiny --seeds 1 --tables 8 ")
        shown = CliRunner().invoke(status, [job, "--address", address])
        assert f"Trials:   trilevel status {experiment.name} --tracking-uri {uri}" in shown.output, shown.output
        wait_for(lambda: gate.reached() or job_status(address, job) in {"FAILED", "SUCCEEDED"}, 600, "the gate")
        assert gate.reached(), "".join(job_logs(address, job))[-4000:]
        held = gate.wait()  # the trial's process, standing before its first checkpoint
        stopped = CliRunner().invoke(stop, [job, "--address", address])
        assert stopped.exit_code == 0 and "Stop requested" in stopped.output, stopped.output
        wait_for(lambda: job_status(address, job) == "STOPPED", 120, "the job to stop")
        wait_for(lambda: not _alive(held), 120, "the stopped trial's process to end")  # before the gate opens
    logs = "".join(job_logs(address, job))
    assert f"Interrupted: 1 trial(s) of {experiment.name} stopped before finishing" in logs, logs[-4000:]
    assert "Run the same command again to resume" in logs and "TERMINATED" not in logs, logs[-4000:]
    statuses = _statuses(uri, experiment.name)
    assert statuses[f"sweep:{experiment.name}"] == "KILLED" and "RUNNING" not in statuses.values(), statuses
    (interrupted,) = [key for key in statuses if key.startswith("trial:")]
    assert statuses[interrupted] == "KILLED", statuses
    assert not (storage / experiment.name / "lease.json").exists()  # the stopped job's driver released it

    # Ctrl-C on the same `trilevel reproduce` run locally (SIGINT to its process group, as a terminal sends it)
    # while its trial stands before the search stage's first checkpoint: exit 130, the trial stopped, the runs
    # KILLED. The gate opens once Tune took the signal (its loop has ended: the trial's next report is its last,
    # with search, train and evaluation still ahead), so the trial stops at that report instead of being
    # force-killed 10 s later, stuck at the gate.
    command = _cli("reproduce", *options, "--address", cluster["gcs"])
    (run,) = [run for run in trial.runs if any(stage.stage == "search" for stage in run.settings.stages)]
    log = tmp_path / "reproduce.log"
    with Gate(run.settings.checkpoints, "search-e0001") as gate:
        with open(log, "w") as out:
            driver = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            # A second `trilevel reproduce` meanwhile is refused naming it, before it connects to Ray (its address
            # leads nowhere: connecting first would fail there instead); it runs while the first one trains.
            wait_for(lambda: (storage / experiment.name / "lease.json").is_file(), 300, "the reproduce driver's lease")
            second = subprocess.run(
                _cli("reproduce", *options, "--address", "127.0.0.1:1"), capture_output=True, text=True, timeout=120
            )
            refused = " ".join((second.stdout + second.stderr).split())
            assert second.returncode == 1 and "Traceback" not in refused, refused[-3000:]
            assert f"being run by another driver: pid {driver.pid} on host {socket.gethostname()}" in refused
            wait_for(lambda: gate.reached() or driver.poll() is not None, 600, "the search stage's gate")
            assert gate.reached(), log.read_text()[-4000:]
            held = gate.wait()
            os.killpg(driver.pid, signal.SIGINT)
            wait_for(lambda: "Stop signal received" in log.read_text() or driver.poll() is not None, 120, "Tune")
            gate.open()
            code = driver.wait(timeout=300)
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
        wait_for(lambda: not _alive(held), 120, "the interrupted trial's process to end")
    said = log.read_text()
    assert code == 130, said[-4000:]
    assert f"Interrupted: 1 trial(s) of {experiment.name} stopped before finishing" in said, said[-4000:]
    assert "TERMINATED" not in said, said[-4000:]
    statuses = _statuses(uri, experiment.name)
    assert statuses[f"sweep:{experiment.name}"] == "KILLED" and statuses[interrupted] == "KILLED", statuses
    assert "RUNNING" not in statuses.values(), statuses

    again = subprocess.run(command, capture_output=True, text=True, timeout=900)
    said = again.stdout + again.stderr
    assert again.returncode == 0, said[-4000:]
    assert "Stages: 3 computed, 0 reused from the stage store." in said, said[-4000:]
    statuses = _statuses(uri, experiment.name)
    assert set(statuses.values()) == {"FINISHED"} and len(statuses) == 1 + 1 + 4, statuses  # sweep, trial, stages
