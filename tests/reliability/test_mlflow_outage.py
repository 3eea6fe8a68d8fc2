"""The MLflow server dies mid-sweep and comes back: training goes on, tracking catches up.

A real `mlflow server` (tests/servers.py) is SIGKILLed while the search stage runs and stays down
across the stage boundary into training, so the train stage's run is created late (deferred) and
everything logged meanwhile waits in the trial's queue. The server then restarts on the same port
and store. The sweep must finish as if nothing happened: one run per sweep/trial/stage, all
FINISHED, every epoch's metrics present, checkpoints intact, nothing listed as not logged.
"""

from __future__ import annotations

import glob
import json
import os
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from orchestrator.experiment import load_experiment
from orchestrator.sweep import run_sweep
from orchestrator.trial import BACKLOG_DIR, TRIAL_DONE
from tests.servers import mlflow_server
from workers.checkpointing import load_state

SEARCH_EPOCHS, TRAIN_EPOCHS = 3, 2
OVERRIDES = (
    "sweep={stages.search.lambda_order: [0.1]}",
    f"stages.search.epochs={SEARCH_EPOCHS}",
    f"stages.train.epochs={TRAIN_EPOCHS}",
    "tracking.flush_timeout_s=120",
)


def _registered(run_dir_pattern: str) -> int:
    """Checkpoints Ray Train has registered in the run directory matching the pattern."""
    for snapshot in glob.glob(os.path.join(run_dir_pattern, "checkpoint_manager_snapshot.json")):
        try:
            return len(json.loads(Path(snapshot).read_text())["checkpoint_results"])
        except (OSError, ValueError, KeyError):
            return 0
    return 0


class Outage(threading.Thread):
    """Kill the server once the search stage has logged an epoch; restart it once training has checkpointed."""

    def __init__(self, server, storage: str, sweep: str) -> None:
        super().__init__(daemon=True)
        self.server, self.client = server, MlflowClient(tracking_uri=server.url)
        self.stages = os.path.join(storage, sweep, "stages", "*")
        self.events: dict[str, float] = {}
        self.error: BaseException | None = None

    def _search_epoch_logged(self) -> bool:
        experiment = self.client.get_experiment_by_name("trilevel")
        if experiment is None:
            return False
        runs = self.client.search_runs([experiment.experiment_id], "tags.`trilevel.stage` = 'search'")
        return bool(runs) and "epoch" in runs[0].data.metrics

    def _wait(self, condition, timeout_s: float = 400) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError("the sweep never got there")
            time.sleep(0.5)

    def run(self) -> None:
        try:
            self._wait(self._search_epoch_logged)
            self.server.kill()
            self.events["killed"] = time.time()
            self.events["search_checkpoints_at_kill"] = _registered(os.path.join(self.stages, "search"))
            self._wait(lambda: _registered(os.path.join(self.stages, "train")) >= 1)
            self.events["search_done_before_restart"] = bool(glob.glob(os.path.join(self.stages, "search", "_STAGE_*")))
            self.server.start()
            self.events["restarted"] = time.time()
        except BaseException as err:  # surfaced by the test
            self.error = err


@pytest.mark.usefixtures("ray_session")
def test_sweep_survives_the_tracking_server_restarting(tmp_path):
    storage = str(tmp_path / "runs")
    with mlflow_server(tmp_path / "mlflow") as server:
        experiment = load_experiment(
            "table8", "tiny", OVERRIDES, name="outage", storage=storage, **{"tracking.uri": server.url}
        )
        outage = Outage(server, storage, "outage")
        outage.start()
        outcome = run_sweep(experiment)
        outage.join(timeout=5)
        assert outage.error is None, repr(outage.error)
        assert "restarted" in outage.events, outage.events
        # the outage really spanned the end of the search and the start of training
        assert outage.events["search_checkpoints_at_kill"] < SEARCH_EPOCHS
        assert outage.events["search_done_before_restart"]

        assert outcome.trials == {"lambda_order=0.1": "TERMINATED"}, outcome.errors
        assert outcome.not_logged == {} and not os.path.exists(os.path.join(storage, "outage", BACKLOG_DIR))

        client = MlflowClient(tracking_uri=server.url)
        experiment_id = client.get_experiment_by_name("trilevel").experiment_id

        def runs(kind: str) -> list:
            return client.search_runs([experiment_id], f"tags.`trilevel.kind` = '{kind}'")

        (sweep,), (trial,), stages = runs("sweep"), runs("trial"), runs("stage")
        assert trial.data.tags["mlflow.parentRunId"] == sweep.info.run_id
        by_stage = {run.data.tags["trilevel.stage"]: run for run in stages}
        assert sorted(by_stage) == ["evaluate", "pretrain", "search", "train"] and len(stages) == 4
        assert all(run.data.tags["mlflow.parentRunId"] == trial.info.run_id for run in stages)
        assert all(run.info.status == "FINISHED" for run in [sweep, trial, *stages])
        # the train stage's run was created after the restart, though training ran during the outage
        assert by_stage["train"].info.start_time >= outage.events["restarted"] * 1000 - 1000

        # every epoch reached MLflow, including those reported while the server was down
        for stage, epochs in (("search", SEARCH_EPOCHS), ("train", TRAIN_EPOCHS)):
            history = client.get_metric_history(by_stage[stage].info.run_id, "epoch")
            assert sorted(m.step for m in history) == list(range(epochs)), (stage, history)
        killed_ms = outage.events["killed"] * 1000
        late = client.get_metric_history(by_stage["search"].info.run_id, "epoch")[-1]
        assert late.timestamp > killed_ms  # logged (timestamped) during the outage, delivered after it
        assert "psnr/demo" in trial.data.metrics
        logged = {a.path for a in client.list_artifacts(by_stage["train"].info.run_id)}
        assert logged == {"checkpoint", "genotype.json", "genotype.md"}  # uploaded after the restart

    # checkpoints intact: the trial finished and its final checkpoint loads
    (done,) = glob.glob(os.path.join(storage, "outage", "stages", "*", TRIAL_DONE))
    assert json.loads(Path(done).read_text())["psnr/demo"] == pytest.approx(trial.data.metrics["psnr/demo"])
    checkpoint = by_stage["train"].data.tags["trilevel.checkpoint"]
    assert load_state(checkpoint)["epoch"] == TRAIN_EPOCHS
