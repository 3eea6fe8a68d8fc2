"""A tracking outage across a trial's end loses nothing (issue 19, item 6), against a real stopped MLflow server.

The trial's end is played as `_evaluate` and `run_trial` do it, through the tracker, while the server is
down: the trial's and its evaluate stage's runs are created late, metrics, tags, genotype text, per-image
table, comparison picture, checkpoint files and model are queued, the runs finished. `catch_up` gives up
after its timeout and keeps all of it on storage as data (no pickle, the files copied), so the trial's
process can end. A later driver, with the server back, replays it: the runs hold everything, the
trial is FINISHED and `best:SWEEP` picks it.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from mlflow import MlflowClient

from orchestrator.tracking import Tracker
from orchestrator.tracking.backlog import BACKLOG_DIR, CALLS_FILE, deliver_backlogs
from orchestrator.tracking.datasets import DIGEST_LENGTH, DatasetRef
from orchestrator.trial import catch_up
from search_space.derived import build_network
from search_space.genotype import Genotype, OpChoice
from tests.servers import MlflowServer

GENOTYPE = Genotype(backbone="B", path=(0,), cells=((OpChoice("conv3x3", 8),) * 5,), nf=8, scale=4, name="tiny")


def test_an_outage_across_the_trials_end_is_kept_on_storage_and_replayed_by_the_next_driver(tmp_path):
    server = MlflowServer(tmp_path / "mlflow")
    server.start()
    storage = str(tmp_path / "runs")
    try:
        trial_side = Tracker(server.url, "outage", sweep_id="sid", retries=1, backoff_s=0.01, max_backoff_s=0.05)
        sweep = trial_side.sweep_run("sw")
        server.kill()  # a real outage: the trial ends while the server is gone

        trial = trial_side.trial_run(sweep, "sw", "t0", params={"lr": 0.1}, tags={"trilevel.seed": 0})
        train_set = DatasetRef("demo/train", str(tmp_path / "shards"), "ab" * 32, "training", rows=6, images=6)
        trial_side.log_datasets(trial, [train_set])
        stage = trial_side.stage_run(trial, "sw", "t0", "evaluate")
        assert trial_side.is_pending(trial) and trial_side.is_pending(stage)
        metrics = {"psnr/demo": 27.5, "psnr_bicubic/demo": 26.9, "ssim/demo": 0.81, "gflops": 0.2, "params_m": 0.01}
        trial_side.log_metrics(stage, metrics)
        trial_side.log_metrics(trial, metrics)
        trial_side.set_tags(trial, {"trilevel.path": "[0, 1]"})
        trial_side.log_text(trial, '{"path": [0, 1]}', "genotype.json")
        trial_side.log_table(trial, {"image": ["chelsea"], "psnr": [np.float32(27.5)]}, "per_image.json")
        trial_side.log_image(trial, np.full((8, 16, 3), 200, dtype=np.uint8), "comparison.png")
        checkpoint = tmp_path / "checkpoint"
        checkpoint.mkdir()
        (checkpoint / "state.pt").write_bytes(b"weights")
        trial_side.log_artifact(stage, str(checkpoint), "checkpoint", snapshot=True)
        torch.manual_seed(0)
        net = build_network(GENOTYPE).eval()
        trial_side.log_model(trial, net, input_example=np.zeros((1, 3, 8, 8), dtype=np.float32))
        trial_side.finish(stage)
        trial_side.finish(trial)

        assert catch_up(trial_side, storage, "sw", "t0", timeout_s=0.5) == {"tracking_not_logged": 14}
        assert trial_side.pending == 0  # handed to storage: the trial's process may end now
        (backlog,) = (tmp_path / "runs" / "sw" / BACKLOG_DIR).iterdir()
        kept = json.loads((backlog / CALLS_FILE).read_text())
        assert [call["op"] for call in kept["calls"]] == [
            "create_run", "log_params", "log_datasets", "create_run", "log_metrics", "log_metrics", "set_tags",
            "log_text", "log_table", "log_artifact", "log_artifact", "log_model", "finish", "finish",
        ]  # fmt: skip
        assert kept["not_replayable"] == []
        files = [path for path in backlog.rglob("*") if path.is_file()]
        assert not [path for path in files if path.read_bytes()[:1] == b"\x80"]  # no pickle (protocol 2+) kept
        checkpoint.joinpath("state.pt").unlink()  # the originals may be gone by the time it is replayed

        server.start()
        driver = Tracker(server.url, "outage", sweep_id="sid", retries=2, backoff_s=0.01)
        assert deliver_backlogs(driver, storage, "sw") == 0
        assert not (tmp_path / "runs" / "sw" / BACKLOG_DIR).exists()

        client = MlflowClient(server.url)
        (trial_run,) = driver.runs_of_sweep("sw", "trial")
        (stage_run,) = driver.runs_of_sweep("sw", "stage")
        assert trial_run.info.status == stage_run.info.status == "FINISHED"
        assert trial_run.data.tags["mlflow.parentRunId"] == sweep
        assert stage_run.data.tags["mlflow.parentRunId"] == trial_run.info.run_id
        assert trial_run.data.tags["trilevel.sweep_id"] == "sid" and trial_run.data.params["lr"] == "0.1"
        assert trial_run.data.metrics["psnr/demo"] == 27.5 and trial_run.data.tags["trilevel.path"] == "[0, 1]"
        assert [d.dataset.digest for d in trial_run.inputs.dataset_inputs] == [train_set.fingerprint[:DIGEST_LENGTH]]
        artifacts = {a.path for a in client.list_artifacts(trial_run.info.run_id)}
        assert {"genotype.json", "per_image.json", "comparison.png"} <= artifacts
        assert [a.path for a in client.list_artifacts(stage_run.info.run_id, "checkpoint")] == ["checkpoint/state.pt"]
        (model,) = client.search_logged_models([trial_run.info.experiment_id])
        assert model.source_run_id == trial_run.info.run_id and str(model.status) in (
            "READY",
            "LoggedModelStatus.READY",
        )

        from orchestrator.upscale.model_source import _best_run

        assert _best_run("best:sw", server.url, "outage")[0] == trial_run.info.run_id
    finally:
        server.stop()
