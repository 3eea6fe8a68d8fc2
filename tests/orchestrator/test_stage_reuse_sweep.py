"""Two trials of a real Tune sweep that share their pretrain compute it once, even when its computing trial is killed.

One tiny sweep (table8 at `tiny`, λ_order 0 and 0.1, both trials at once, minimal epochs) carries the
end-to-end checks of the stage store (the store's own cases are unit tests: tests/workers/test_stage_store.py):

- both trials need the same pretrain at the same time: one claims and computes it, the other waits;
- the computing trial's process is SIGKILLed once its pretrain has a checkpoint: Tune retries the
  trial, which takes its claim over and resumes from that checkpoint (not rewritten), while the other
  trial keeps waiting, then reuses the stored pretrain;
- stages computed: one pretrain, two searches, two trains; no claim left behind;
- MLflow: the reusing trial's pretrain run says "reused" and names the computing trial's run, with
  no artifacts of its own.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest

from orchestrator.experiment import load_experiment
from orchestrator.sweep import run_sweep
from tests.helpers import TINY
from workers.stage_store import STORE_DIR
from workers.stage_store.claims import CLAIM_FILE

pytestmark = pytest.mark.xdist_group("local_ray")  # shares the in-process Ray (tests/conftest.py)

SHORT = (
    "stages.pretrain.epochs=2",
    "stages.pretrain.steps_per_epoch=2",
    "stages.search.epochs=1",
    "stages.search.steps_per_epoch=1",
    "stages.train.epochs=1",
    "stages.train.steps_per_epoch=1",
    "sweep={stages.search.lambda_order: [0.0, 0.1]}",
    "resources.max_concurrent_trials=2",
    "resources.max_failures=1",
)


class KillTheComputingTrial(threading.Thread):
    """SIGKILL the process holding the pretrain claim once its run has registered its first pretrain checkpoint."""

    def __init__(self, store: Path, sweep_dir: Path) -> None:
        super().__init__(daemon=True)
        self.store, self.sweep_dir = store, sweep_dir
        self.killed: dict[str, object] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            for claim in self.store.glob(f"pretrain/*/{CLAIM_FILE}"):
                try:
                    holder = json.loads(claim.read_text())
                except (OSError, ValueError):
                    continue
                trial = holder["owner"].split("/", 1)[1]
                first = self.sweep_dir / "stages" / trial / "run-pretrain-search-train" / "pretrain-e0001"
                listed = first.parent / "_CHECKPOINTS.json"
                if listed.exists() and "pretrain-e0001" in listed.read_text():
                    self.killed = {"trial": trial, "pid": holder["pid"], "mtime": (first / "state.pt").stat().st_mtime}
                    os.kill(int(holder["pid"]), signal.SIGKILL)
                    return


def test_two_trials_compute_their_shared_pretrain_once_through_a_kill(ray_session, demo_data, tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fields = {"storage": str(tmp_path / "runs"), "tracking.uri": uri, "data.train": f"{demo_data}/train"}
    data_val = (f"data.val={{demo-val: {demo_data}/val}}", f"data.test={{demo: {demo_data}/test}}")
    experiment = load_experiment("table8", "tiny", (*TINY, *SHORT, *data_val), name="shared", **fields)
    store = tmp_path / "runs" / STORE_DIR
    killer = KillTheComputingTrial(store, tmp_path / "runs" / "shared")
    killer.start()
    try:
        outcome = run_sweep(experiment)
    finally:
        killer.stop.set()
    assert outcome.trials == {"lambda_order=0.0": "TERMINATED", "lambda_order=0.1": "TERMINATED"}, outcome.errors
    assert killer.killed, "the computing trial was never killed while its pretrain ran"

    # computed: one pretrain, two searches, two trains; every claim released
    computed = {stage: len(list(store.glob(f"{stage}/*/_STAGE.json"))) for stage in ("pretrain", "search", "train")}
    assert computed == {"pretrain": 1, "search": 2, "train": 2}
    assert not list(store.glob(f"*/*/{CLAIM_FILE}"))
    (entry,) = store.glob("pretrain/*/_STAGE.json")
    computed_by = json.loads(entry.read_text())["computed_by"]
    assert computed_by["trial"] == killed_trial(killer)  # the killed trial's retry finished the stage it had claimed
    resumed_from = Path(computed_by["checkpoints"]) / "pretrain-e0001" / "state.pt"
    assert resumed_from.stat().st_mtime == killer.killed["mtime"]  # resumed from that checkpoint, not started over

    # MLflow: the other trial's pretrain run says where its pretrain came from, and logs no artifacts of it
    client = MlflowClient(tracking_uri=uri)
    stages = client.search_runs(
        [client.get_experiment_by_name("trilevel").experiment_id],
        "tags.`trilevel.kind` = 'stage' and tags.`trilevel.stage` = 'pretrain' and tags.`trilevel.sweep` = 'shared'",
    )
    by_trial = {run.data.tags["trilevel.trial"]: run for run in stages}
    computing, reusing = by_trial[killed_trial(killer)], by_trial[other_trial(killer)]
    assert computing.data.tags["trilevel.stage.origin"] == "computed"
    assert reusing.data.tags["trilevel.stage.origin"] == "reused"
    assert reusing.data.tags["trilevel.stage.computed_run"] == computing.info.run_id
    assert reusing.data.tags["trilevel.stage.key"] == computing.data.tags["trilevel.stage.key"]
    assert reusing.info.status == "FINISHED" and not client.list_artifacts(reusing.info.run_id)
    assert len(client.get_metric_history(reusing.info.run_id, "loss")) == 2  # its epochs' curves are there


def killed_trial(killer: KillTheComputingTrial) -> str:
    return str(killer.killed["trial"])


def other_trial(killer: KillTheComputingTrial) -> str:
    return ({"lambda_order=0.0", "lambda_order=0.1"} - {killed_trial(killer)}).pop()
