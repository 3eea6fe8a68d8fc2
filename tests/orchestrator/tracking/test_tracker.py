"""The Tracker against real MLflow: a SQLite store in a temp dir (conftest.py), and a port nothing listens on."""

from __future__ import annotations

import json
import logging
import math
import pickle
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from orchestrator.tracking import (
    KIND_TAG,
    PARENT_TAG,
    STAGE_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
    Tracker,
    TrackingUnavailable,
    source_tags,
    tracked,
)
from tests.servers import free_port

# ------------------------------------------------------------------------------------------------------------------
# Hierarchy and find-or-create


def test_find_or_create_is_idempotent_with_the_hierarchy_tags(tracker, client):
    sweep = tracker.sweep_run("sw", params={"seed": 1})
    assert tracker.sweep_run("sw", params={"seed": 1}) == sweep
    trial = tracker.trial_run(sweep, "sw", "t0", params={"lr": 0.1}, tags={"trilevel.seed": 7})
    assert tracker.trial_run(sweep, "sw", "t0", params={"lr": 0.1}, tags={"trilevel.seed": 7}) == trial
    stages = {stage: tracker.stage_run(trial, "sw", "t0", stage) for stage in ("pretrain", "search")}
    assert tracker.stage_run(trial, "sw", "t0", "search") == stages["search"]
    assert tracker.pending == 0

    assert [r.info.run_id for r in tracker.runs_of_sweep("sw", "sweep")] == [sweep]
    assert [r.info.run_id for r in tracker.runs_of_sweep("sw", "trial")] == [trial]
    assert sorted(r.info.run_id for r in tracker.runs_of_sweep("sw", "stage")) == sorted(stages.values())
    assert len(tracker.runs_of_sweep("sw")) == 4

    s, t, p = client.get_run(sweep), client.get_run(trial), client.get_run(stages["search"])
    assert s.info.run_name == "sw" and s.data.tags[KIND_TAG] == "sweep" and s.data.tags[SWEEP_TAG] == "sw"
    assert PARENT_TAG not in s.data.tags
    assert t.info.run_name == "t0" and t.data.tags[KIND_TAG] == "trial" and t.data.tags[TRIAL_TAG] == "t0"
    assert t.data.tags[PARENT_TAG] == sweep and t.data.tags[SWEEP_TAG] == "sw"
    assert t.data.tags["trilevel.seed"] == "7" and "trilevel.version.torch" in t.data.tags
    assert t.data.params == {"lr": "0.1"} and s.data.params == {"seed": "1"}
    assert p.info.run_name == "t0/search" and p.data.tags[KIND_TAG] == "stage"
    assert p.data.tags[STAGE_TAG] == "search" and p.data.tags[PARENT_TAG] == trial
    assert p.data.tags[SWEEP_TAG] == "sw" and p.data.tags[TRIAL_TAG] == "t0"
    for run in (s, t, p):  # every run says which code made it
        assert run.data.tags["trilevel.git_commit"] and "trilevel.version.torch" in run.data.tags
    assert {s.info.status, t.info.status, p.info.status} == {"RUNNING"}


def test_found_runs_reopen_unless_finished(tracker, client):
    sweep = tracker.sweep_run("sw")
    trial = tracker.trial_run(sweep, "sw", "t0", params={}, tags={})
    done = tracker.stage_run(trial, "sw", "t0", "pretrain")
    tracker.finish(done, "FINISHED")
    tracker.finish(trial, "KILLED")

    assert tracker.trial_run(sweep, "sw", "t0", params={}, tags={}) == trial
    assert client.get_run(trial).info.status == "RUNNING"  # killed work continues
    assert tracker.stage_run(trial, "sw", "t0", "pretrain") == done
    assert tracker.status(done) == "FINISHED"  # a finished stage stays finished...
    tracker.reopen(done)
    assert tracker.status(done) == "RUNNING"  # ...unless reopened explicitly


def test_runs_of_sweep_keeps_sweeps_apart_and_checks_names(tracker):
    a = tracker.sweep_run("a")
    b = tracker.sweep_run("b")
    tracker.trial_run(a, "a", "t0", params={}, tags={})
    tracker.trial_run(b, "b", "t0", params={}, tags={})
    tracker.trial_run(b, "b", "t1", params={}, tags={})
    assert len(tracker.runs_of_sweep("a")) == 2
    assert len(tracker.runs_of_sweep("b", "trial")) == 2
    assert tracker.runs_of_sweep("c") == []
    with pytest.raises(ValueError, match="kind"):
        tracker.runs_of_sweep("a", "stages")
    with pytest.raises(ValueError, match="stage must be one of"):
        tracker.stage_run(a, "a", "t0", "trian")
    with pytest.raises(ValueError, match="status"):
        tracker.finish(a, "DONE")


# ------------------------------------------------------------------------------------------------------------------
# Params, metrics, tags, artifacts


def test_params_flatten_truncate_and_record_conflicts(tracker, client, caplog):
    run = tracker.sweep_run("sw")
    config = {"stages": {"search": {"lr": 0.1}}, "note": "x" * 7000, "bad key!": 1}
    tracker.log_params(run, config)
    tracker.log_params(run, config)  # same values again: skipped, not an error
    with caplog.at_level(logging.WARNING, logger="orchestrator.tracking"):
        tracker.log_params(run, {"stages": {"search": {"lr": 0.2, "wd": 0.0}}})
    params = client.get_run(run).data.params
    assert params["stages.search.lr"] == "0.1"  # MLflow keeps the first value
    assert params["stages.search.wd"] == "0.0"
    assert len(params["note"]) == 6000
    assert params["bad key_"] == "1"  # characters MLflow refuses are replaced
    assert client.get_run(run).data.tags["trilevel.param_conflict.stages.search.lr"] == "0.2"
    assert "stages.search.lr" in caplog.text and tracker.pending == 0


def test_metrics_with_steps_and_non_numeric_values_as_tags(tracker, client):
    run = tracker.sweep_run("sw")
    for step in range(3):
        tracker.log_metrics(
            run,
            {
                "loss": 1.0 / (step + 1),
                "psnr": np.float32(30 + step),
                "acc": torch.tensor(0.5),
                "val": {"ssim": 0.9},
                "phase": "search",
                "skipped": None,
                "vector": [1, 2],
            },
            step=step,
        )
    tracker.log_metrics(run, {"nan": float("nan")}, step=3)
    history = client.get_metric_history(run, "loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(0, 1.0), (1, 0.5), (2, 1 / 3)]
    data = client.get_run(run).data
    assert data.metrics["psnr"] == 32.0 and data.metrics["acc"] == 0.5 and data.metrics["val.ssim"] == 0.9
    assert math.isnan(data.metrics["nan"])
    assert "skipped" not in data.metrics and "vector" not in data.metrics and "phase" not in data.metrics
    assert data.tags["phase"] == "search"


def test_text_dict_table_and_artifacts(tracker, client, tmp_path):
    run = tracker.sweep_run("sw")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "weights.pt").write_bytes(b"w")
    (tmp_path / "report.md").write_text("# report")
    tracker.log_text(run, '{"ops": []}', "genotype.json")
    tracker.log_dict(run, {"lr": 0.1}, "config/resolved.yaml")
    tracker.log_table(run, {"layer": [0, 1], "op": ["conv3x3", "skip"]}, "genotype_table.json")
    tracker.log_artifact(run, str(tmp_path / "report.md"))
    tracker.log_artifact(run, str(tmp_path / "ckpt"), "checkpoint")
    tracker.log_artifact(run, str(tmp_path / "missing.bin"))  # warned, not raised
    top = {f.path for f in client.list_artifacts(run)}
    assert {"genotype.json", "config", "genotype_table.json", "report.md", "checkpoint"} <= top
    assert {f.path for f in client.list_artifacts(run, "checkpoint")} == {"checkpoint/weights.pt"}
    local = client.download_artifacts(run, "genotype.json", str(tmp_path / "dl"))
    assert Path(local).read_text() == '{"ops": []}'
    assert tracker.pending == 0


def test_a_table_logged_again_is_replaced_not_appended(tracker, client, store, unreachable, tmp_path, monkeypatch):
    """A retried evaluation, or a replayed backlog call that had reached the server, leaves one row per image.

    MLflow's own ``log_table`` appends to a table of the same name: each retry would add every image again.
    """
    from orchestrator.tracking.backlog import deliver_backlogs
    from orchestrator.trial import catch_up

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])  # load_table finds runs through mlflow.search_runs
    run = tracker.sweep_run("sw")
    first = {"image_id": ["chelsea", "coffee"], "psnr": [np.float32(27.5), 30.25]}
    tracker.log_table(run, first, "per_image.json")
    tracker.log_table(run, first, "per_image.json")  # the evaluation again, after a crash that followed the upload
    experiment_id = client.get_run(run).info.experiment_id
    table = client.load_table(experiment_id, "per_image.json", run_ids=[run])  # what MLflow's readers see
    assert table.to_dict("list") == {"image_id": ["chelsea", "coffee"], "psnr": [27.5, 30.25]}

    down = Tracker(unreachable, tracker.experiment, retries=1, backoff_s=0.01, max_backoff_s=0.05)
    down.log_table(run, {"image_id": ["chelsea", "coffee"], "psnr": [27.0, 31.0]}, "per_image.json")
    storage = str(tmp_path / "runs")
    assert catch_up(down, storage, "sw", "t0", timeout_s=0.3) == {"tracking_not_logged": 1}
    assert deliver_backlogs(tracker, storage, "sw") == 0  # the kept call, replayed on a run that has the table
    table = client.load_table(experiment_id, "per_image.json", run_ids=[run])
    assert table.to_dict("list") == {"image_id": ["chelsea", "coffee"], "psnr": [27.0, 31.0]}  # the last write, whole
    tables = json.loads(client.get_run(run).data.tags["mlflow.loggedArtifacts"])  # what makes the UI show a table
    assert tables == [{"path": "per_image.json", "type": "table"}]


def test_experiment_is_created_as_model_development(tracker, client):
    """MLflow 3 opens an experiment without a kind on its GenAI view; ours opens on the runs."""
    tracker.sweep_run("sw")
    assert client.get_experiment_by_name(tracker.experiment).tags["mlflow.experimentKind"] == "custom_model_development"
    older = client.create_experiment(f"{tracker.experiment}-old", artifact_location=tracker.artifact_location)
    Tracker(tracker.tracking_uri, f"{tracker.experiment}-old", retries=1).experiment_id()  # found, not created
    assert client.get_experiment(older).tags["mlflow.experimentKind"] == "custom_model_development"
    chosen = client.create_experiment(
        f"{tracker.experiment}-genai", tags={"mlflow.experimentKind": "genai_development"}
    )
    Tracker(tracker.tracking_uri, f"{tracker.experiment}-genai", retries=1).experiment_id()
    assert client.get_experiment(chosen).tags["mlflow.experimentKind"] == "genai_development"  # a user's kind stays


def test_stage_runs_carry_the_source_of_their_trial(tracker, client):
    command = source_tags(["/venv/bin/trilevel", "sweep", "table8"])
    sweep = tracker.sweep_run("sw", tags=command)
    trial = tracker.trial_run(sweep, "sw", "t0", params={}, tags=command)  # the driver's tags, as run_trial passes them
    stage = tracker.stage_run(trial, "sw", "t0", "train")
    for run_id in (sweep, trial, stage):
        assert client.get_run(run_id).data.tags["mlflow.source.name"] == "trilevel sweep table8"
        assert client.get_run(run_id).data.tags["mlflow.source.type"] == "LOCAL"


# ------------------------------------------------------------------------------------------------------------------
# Ending runs


def test_tracked_marks_finished_failed_killed(tracker, client):
    sweep = tracker.sweep_run("sw")
    ok, bad, stop = (tracker.trial_run(sweep, "sw", name, params={}, tags={}) for name in ("ok", "bad", "stop"))
    with tracked(tracker, ok):
        pass
    with pytest.raises(ValueError, match="diverged"), tracked(tracker, bad):
        raise ValueError("diverged")
    with pytest.raises(KeyboardInterrupt), tracked(tracker, stop):
        raise KeyboardInterrupt
    assert client.get_run(ok).info.status == "FINISHED"
    assert client.get_run(bad).info.status == "FAILED"
    assert client.get_run(bad).data.tags["trilevel.error"] == "ValueError: diverged"
    assert client.get_run(stop).info.status == "KILLED"
    assert client.get_run(ok).info.end_time is not None


def test_end_unfinished_marks_every_running_run_of_the_sweep(tracker, client):
    sweep = tracker.sweep_run("sw")
    other = tracker.sweep_run("other")
    trial = tracker.trial_run(sweep, "sw", "t0", params={}, tags={})
    done = tracker.stage_run(trial, "sw", "t0", "pretrain")
    tracker.stage_run(trial, "sw", "t0", "search")
    tracker.finish(done)
    assert tracker.end_unfinished("sw", "KILLED") == 3
    statuses = {r.info.run_id: r.info.status for r in tracker.runs_of_sweep("sw")}
    assert statuses.pop(done) == "FINISHED" and set(statuses.values()) == {"KILLED"}
    assert client.get_run(other).info.status == "RUNNING"
    assert tracker.end_unfinished("sw", "KILLED") == 0


def test_sweeps_of_one_name_with_different_ids_never_share_runs(tracker, client, store):
    """Two storages, one sweep name: each sweep id finds and ends only its own runs (issue 19, item 1)."""
    mine = Tracker(store["uri"], tracker.experiment, sweep_id="id-a", artifact_location=tracker.artifact_location)
    theirs = Tracker(store["uri"], tracker.experiment, sweep_id="id-b", artifact_location=tracker.artifact_location)
    a, b = mine.sweep_run("sw"), theirs.sweep_run("sw")
    assert a != b and mine.sweep_run("sw") == a
    trial = mine.trial_run(a, "sw", "t0", params={}, tags={})
    stage = mine.stage_run(trial, "sw", "t0", "search")
    assert client.get_run(stage).data.tags["trilevel.sweep_id"] == "id-a"
    assert {r.info.run_id for r in mine.runs_of_sweep("sw")} == {a, trial, stage}
    assert mine.end_unfinished("sw", "KILLED") == 3
    assert client.get_run(b).info.status == "RUNNING"
    assert [r.info.run_id for r in theirs.runs_of_sweep("sw")] == [b]


# ------------------------------------------------------------------------------------------------------------------
# Outages


def test_unreachable_server_queues_logging_and_warns_once(unreachable, caplog):
    tracker = Tracker(unreachable, retries=1, backoff_s=0.01, max_backoff_s=0.05)
    with caplog.at_level(logging.WARNING, logger="orchestrator.tracking"):
        tracker.log_metrics("0" * 32, {"loss": 1.0}, step=0)
        assert tracker.pending == 1
        tracker.log_metrics("0" * 32, {"loss": 0.5}, step=1)
        tracker.set_tags("0" * 32, {"phase": "search"})
        tracker.finish("0" * 32, "FINISHED")
    assert tracker.pending == 4
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1 and unreachable in warnings[0].getMessage()
    assert "log_metrics" in warnings[0].getMessage()
    failed = tracker.flush(timeout_s=0.5)
    assert len(failed) == 4 and failed[0].startswith("log_metrics") and tracker.pending == 4
    with pytest.raises(TrackingUnavailable, match=re.escape(unreachable)):
        tracker.sweep_run("sw")  # nothing can be tracked without a run id


def test_queue_is_bounded(unreachable, caplog):
    tracker = Tracker(unreachable, retries=1, backoff_s=0.0, max_backoff_s=0.0, max_pending=2)
    with caplog.at_level(logging.WARNING, logger="orchestrator.tracking"):
        for step in range(5):
            tracker.log_metrics("0" * 32, {"loss": float(step)}, step=step)
    assert tracker.pending == 2 and tracker.dropped == 3
    assert tracker.flush(timeout_s=0.2) == [
        f"log_metrics run 00000000 step {step} [loss]" for step in (3, 4)
    ]  # oldest dropped first
    assert "queue full" in caplog.text


def test_queued_calls_are_delivered_in_order_once_the_store_is_back(store, tracker, client, tmp_path):
    """A real outage: the store's directory is blocked by a file, then the database appears."""
    run = tracker.sweep_run("sw")
    blocked = tmp_path / "blocked"
    blocked.write_text("not a directory")
    down = Tracker(f"sqlite:///{blocked / 'mlflow.db'}", tracker.experiment, retries=1, backoff_s=0.01)
    down.log_metrics(run, {"loss": 2.0}, step=0)
    down.log_params(run, {"late": {"param": 1}})
    down.set_tags(run, {"phase": "search"})
    down.set_tags(run, {"phase": "train"})  # order matters: the last tag value must win
    down.finish(run, "FINISHED")
    assert down.pending == 5
    before = int(time.time() * 1000)

    blocked.unlink()
    blocked.mkdir()
    shutil.copy(store["db"], blocked / "mlflow.db")  # the same runs, now reachable under the new URI
    assert down.flush(timeout_s=30) == [] and down.pending == 0
    back = MlflowClient(tracking_uri=f"sqlite:///{blocked / 'mlflow.db'}").get_run(run)
    assert back.data.metrics["loss"] == 2.0 and back.data.params["late.param"] == "1"
    assert back.data.tags["phase"] == "train" and back.info.status == "FINISHED"
    assert back.info.end_time <= before  # end time taken at the call, not at delivery


def test_trial_and_stage_runs_created_in_an_outage_are_deferred_then_resolved(store, tracker, client, tmp_path):
    """Training crosses a stage boundary while the store is down: runs get placeholders, created on delivery."""
    sweep = tracker.sweep_run("sw")
    blocked = tmp_path / "blocked"
    blocked.write_text("not a directory")
    down = Tracker(f"sqlite:///{blocked / 'mlflow.db'}", tracker.experiment, retries=1, backoff_s=0.01)
    trial = down.trial_run(sweep, "sw", "t0", params={"seed": 3}, tags={"trilevel.seed": "3"})
    stage = down.stage_run(trial, "sw", "t0", "search")
    assert down.is_pending(trial) and down.is_pending(stage) and trial != stage
    with pytest.raises(TrackingUnavailable, match="not created yet"):
        down.status(stage)
    for epoch in range(3):
        down.log_metrics(stage, {"epoch": float(epoch)}, step=epoch)
    down.finish(stage, "FINISHED")
    down.finish(trial, "FINISHED")
    with pytest.raises(TrackingUnavailable, match=f"MLflow at {re.escape(down.tracking_uri)}: .* failed after 1"):
        down.sweep_run("sw2")  # the driver's own run is never deferred: it needs the answer
    described = down.flush(timeout_s=0.2)
    assert described[0].startswith("create run 't0'") and described[2].startswith("create run 't0/search'")

    blocked.unlink()
    blocked.mkdir()
    shutil.copy(store["db"], blocked / "mlflow.db")
    assert down.flush(timeout_s=30) == []
    assert not down.is_pending(trial) and down.status(down.resolve(stage)) == "FINISHED"
    back = MlflowClient(tracking_uri=f"sqlite:///{blocked / 'mlflow.db'}")
    trial_run, stage_run = back.get_run(down.resolve(trial)), back.get_run(down.resolve(stage))
    assert trial_run.data.tags[PARENT_TAG] == sweep and trial_run.data.params["seed"] == "3"
    assert stage_run.data.tags[PARENT_TAG] == trial_run.info.run_id and stage_run.data.tags[STAGE_TAG] == "search"
    assert [m.step for m in back.get_metric_history(stage_run.info.run_id, "epoch")] == [0, 1, 2]
    # once created, a later lookup (a retried trial) finds the same runs instead of creating more
    assert down.stage_run(down.resolve(trial), "sw", "t0", "search") == stage_run.info.run_id


def test_queued_artifact_snapshot_survives_its_source_being_removed(store, tracker, client, tmp_path):
    run = tracker.sweep_run("sw")
    blocked = tmp_path / "blocked"
    blocked.write_text("not a directory")
    down = Tracker(f"sqlite:///{blocked / 'mlflow.db'}", tracker.experiment, retries=1, backoff_s=0.01)
    source = tmp_path / "checkpoint"
    source.mkdir()
    (source / "state.pt").write_bytes(b"weights")
    down.log_artifact(run, str(source), "checkpoint", snapshot=True)
    down.log_artifact(run, str(source), "gone")  # no snapshot: read at delivery, when it will be gone
    shutil.rmtree(source)  # a temporary local copy of a remote checkpoint, removed while the call waits
    blocked.unlink()
    blocked.mkdir()
    shutil.copy(store["db"], blocked / "mlflow.db")
    assert down.flush(timeout_s=30) == []  # the unreadable one is dropped as permanent, not retried forever
    assert [a.path for a in client.list_artifacts(run, "checkpoint")] == ["checkpoint/state.pt"]
    assert client.list_artifacts(run, "gone") == []


def test_what_an_outage_outlasts_is_kept_in_a_replayable_backlog(unreachable, tmp_path, caplog):
    from orchestrator.trial import BACKLOG_DIR, catch_up

    tracker = Tracker(unreachable, retries=1, backoff_s=0.01, max_backoff_s=0.05)
    tracker.log_metrics("0" * 32, {"loss": 1.0}, step=4)
    tracker.finish("0" * 32, "FINISHED")
    storage = str(tmp_path / "runs")
    with caplog.at_level(logging.WARNING, logger="orchestrator.trial"):
        assert catch_up(tracker, storage, "sw", "t0", timeout_s=0.3) == {"tracking_not_logged": 2}
    (backlog,) = (tmp_path / "runs" / "sw" / BACKLOG_DIR).iterdir()
    kept = json.loads((backlog / "calls.json").read_text())
    assert kept["tracking_uri"] == unreachable and kept["who"] == "t0"
    (metrics, finish) = kept["calls"]
    assert metrics["op"] == "log_metrics" and metrics["run"] == "0" * 32 and metrics["metrics"][0][::3] == ["loss", 4]
    assert finish["op"] == "finish" and finish["status"] == "FINISHED" and finish["end_time"] > 0
    assert str(backlog) in caplog.text and "trilevel resume sw" in caplog.text
    assert tracker.pending == 0  # kept on storage, no longer in memory
    assert catch_up(tracker, storage, "sw", "t0", timeout_s=0.3) == {"tracking_not_logged": 0}
    assert len(list((tmp_path / "runs" / "sw" / BACKLOG_DIR).iterdir())) == 1


def test_sqlite_artifacts_default_beside_the_database(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "db").mkdir()
    tracker = Tracker(f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}", "beside")
    run = tracker.sweep_run("sw")
    tracker.log_text(run, "hello", "note.txt")
    assert list((tmp_path / "db" / "mlartifacts").rglob("note.txt"))
    assert not (tmp_path / "mlruns").exists()


def test_rejected_calls_are_dropped_not_queued(tracker, caplog):
    with caplog.at_level(logging.WARNING, logger="orchestrator.tracking"):
        tracker.log_metrics("f" * 32, {"loss": 1.0})  # no such run: retrying cannot help
    assert tracker.pending == 0 and "rejected" in caplog.text


def test_http_tracker_owns_retries_unless_configured(monkeypatch):
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.setenv(name, "placeholder")  # so monkeypatch restores the original state afterwards
        monkeypatch.delenv(name)
    Tracker(f"http://127.0.0.1:{free_port()}")
    import os

    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    Tracker(f"http://127.0.0.1:{free_port()}")
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"


def test_tracker_pickles_as_settings(tracker):
    tracker.sweep_run("sw")
    copy = pickle.loads(pickle.dumps(tracker))
    assert (copy.tracking_uri, copy.experiment, copy.retries, copy.pending) == (
        tracker.tracking_uri,
        tracker.experiment,
        tracker.retries,
        0,
    )
    assert [r.info.run_name for r in copy.runs_of_sweep("sw")] == ["sw"]
