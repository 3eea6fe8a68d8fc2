"""The durable backlog: tracking calls an outage outlasted, kept on storage as data and replayed later.

Why: a trial process ends when its trial does. If MLflow is down then, the calls still queued in its
memory (the test metrics, the per-image table, the comparison picture, the model) would die with it,
and ``best:SWEEP`` would never see the trial. So before a trial is marked done, what its tracker could
not deliver is written here (:func:`keep_backlog`) and the next driver of the sweep (``trilevel
resume``, or the re-submitted job) delivers it (:func:`deliver_backlogs`).

Layout: ``<storage>/<sweep>/tracking-backlog/<who>-<token>/calls.json`` (written last, so a half-written
backlog is never replayed) and ``files/<n>/…``, the copies of what the calls upload (artifacts,
pictures as PNG, the saved model directory). ``calls.json`` holds each call as JSON: an operation
and its arguments (``log_metrics`` with key, value, timestamp, step; ``create_run`` with the identity
tags that find-or-create it; ``finish`` with its status and end time; …). Nothing is pickled, and
replaying executes nothing read from the file but these operations. Runs not yet created when the
outage began are placeholders (``pending-…``): their ``create_run`` comes first and maps them.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import shutil
import tempfile
import time
import uuid
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs

from orchestrator.tracking.errors import is_permanent
from orchestrator.tracking.limits import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH, chunks
from orchestrator.tracking.outbox import Call, Permanent
from orchestrator.tracking.tables import log_whole_table
from orchestrator.tracking.tags import PARENT_TAG
from workers.storage import join_storage, resolve_uri, write_bytes

if TYPE_CHECKING:
    from orchestrator.tracking.tracker import Tracker

__all__ = ["BACKLOG_DIR", "CALLS_FILE", "deliver_backlogs", "keep_backlog"]

BACKLOG_DIR = "tracking-backlog"
CALLS_FILE = "calls.json"
_log = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and arrays (a per-image table's values); anything else is not data."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON data: {type(value).__name__}")


def _save_image(image: Any, path: str) -> None:
    import numpy as np
    from PIL import Image

    if not isinstance(image, Image.Image):
        array = np.asarray(image)
        if array.dtype.kind == "f":  # as MLflow's log_image reads floats: 0..1
            array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
        image = Image.fromarray(array)
    image.save(path)


def _as_data(record: dict[str, Any], files: str, index: int, resolve: dict[str, str]) -> dict[str, Any]:
    """`record` as JSON data, copying what it uploads under ``files/<index>``; placeholders resolved if known."""
    data = dict(record)
    if "run" in data:
        data["run"] = resolve.get(data["run"], data["run"])
    if data["op"] == "create_run":
        identity = dict(data["identity"])
        if PARENT_TAG in identity:
            identity[PARENT_TAG] = resolve.get(identity[PARENT_TAG], identity[PARENT_TAG])
        data["identity"] = identity
    folder = os.path.join(files, str(index))
    relative = posixpath.join("files", str(index))
    if data["op"] == "log_image":
        os.makedirs(folder)
        name = os.path.basename(data["artifact_file"])
        _save_image(data.pop("image"), os.path.join(folder, name))
        data.update(op="log_artifact", file=posixpath.join(relative, name))
        data["artifact_path"] = posixpath.dirname(data.pop("artifact_file")) or None
    elif data["op"] == "log_artifact":
        source = data.pop("path")
        name = os.path.basename(source.rstrip(os.sep)) or "artifact"
        os.makedirs(folder)
        (shutil.copytree if os.path.isdir(source) else shutil.copy2)(source, os.path.join(folder, name))
        data["file"] = posixpath.join(relative, name)
    elif data["op"] == "log_model":
        saved = data.pop("saved")
        shutil.copytree(saved.local, os.path.join(folder, "model"))
        data.update(
            dir=relative,
            name=saved.name,
            step=saved.step,
            registered_model_name=saved.registered_model_name,
            state=dict(saved.state),
            score=saved.score.to_dict() if getattr(saved, "score", None) is not None else None,
        )
    return json.loads(json.dumps(data, default=_plain))  # proves it is data now, whatever it held


def keep_backlog(tracker: Tracker, storage: str, sweep: str, who: str) -> tuple[str, int]:
    """Move the tracker's queued calls to a new backlog folder on storage; (its path, calls kept).

    Calls without a data form, or whose data cannot be written (a file gone meanwhile), are counted
    and named in the file's ``not_replayable``. Their temporary files are removed once kept.
    """
    taken: list[Call] = tracker._outbox.take_queued()
    name = f"{who}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    target = join_storage(storage, sweep, BACKLOG_DIR, name)
    staging = tempfile.mkdtemp(prefix="trilevel-backlog-")
    calls, lost = [], []
    try:
        files = os.path.join(staging, "files")
        os.makedirs(files)
        for index, call in enumerate(taken):
            try:
                if call.record is None:
                    raise TypeError("no data form")
                calls.append(_as_data(call.record, files, index, tracker._created))
            except (OSError, TypeError, ValueError) as err:
                lost.append(f"{call.description} ({type(err).__name__}: {err})")
            finally:
                if call.cleanup is not None:
                    call.cleanup()
        report = {
            "tracking_uri": tracker.tracking_uri,
            "experiment": tracker.experiment,
            "who": who,
            "written": time.strftime("%Y-%m-%d %H:%M:%S"),
            "calls": calls,
            "not_replayable": lost,
            "dropped_when_queue_was_full": tracker.dropped,
        }
        fs, where = resolve_uri(target)
        fs.create_dir(where, recursive=True)
        pafs.copy_files(files, posixpath.join(where, "files"), pafs.LocalFileSystem(), fs)
        write_bytes(fs, posixpath.join(where, CALLS_FILE), json.dumps(report, indent=1).encode())
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, len(calls)


def _replay(tracker: Tracker, call: dict[str, Any], folder: str) -> None:
    """Deliver one call of a backlog (synchronously; raises what MLflow raises)."""
    from mlflow.entities import Metric, Param, RunTag

    from orchestrator.tracking.champion import Score
    from orchestrator.tracking.datasets import DatasetRef, dataset_inputs
    from orchestrator.tracking.models import SavedModel

    client, op = tracker.client, call["op"]
    if op == "create_run":
        run_id, _ = tracker._find_or_create(call["identity"], call["run_name"], call["tags"])
        tracker._created[call["placeholder"]] = run_id
        return
    run = tracker.resolve(call["run"])
    if op == "log_params":
        logged = client.get_run(run).data.params
        new = [Param(k, v) for k, v in call["params"].items() if k not in logged]
        for chunk in chunks(new, MAX_PARAMS_TAGS_PER_BATCH):
            client.log_batch(run, params=chunk, synchronous=True)
    elif op == "log_metrics":
        metrics = [Metric(key, float(value), int(ts), int(step)) for key, value, ts, step in call["metrics"]]
        for chunk in chunks(metrics, MAX_METRICS_PER_BATCH):
            client.log_batch(run, metrics=chunk, synchronous=True)
    elif op == "set_tags":
        tags = [RunTag(k, v) for k, v in call["tags"].items()]
        for chunk in chunks(tags, MAX_PARAMS_TAGS_PER_BATCH):
            client.log_batch(run, tags=chunk, synchronous=True)
    elif op == "log_text":
        client.log_text(run, call["text"], call["artifact_file"])
    elif op == "log_dict":
        client.log_dict(run, call["data"], call["artifact_file"])
    elif op == "log_table":
        log_whole_table(client, run, call["data"], call["artifact_file"])
    elif op == "log_artifact":
        path = os.path.join(folder, call["file"])
        (client.log_artifacts if os.path.isdir(path) else client.log_artifact)(run, path, call["artifact_path"])
    elif op == "log_model":
        score = Score.from_dict(call["score"]) if call.get("score") else None
        saved = SavedModel(
            os.path.join(folder, call["dir"]),
            call["name"],
            call["step"],
            call["registered_model_name"],
            call["state"],
            score=score,
        )
        try:
            saved.upload(client, run)
        finally:
            call["state"] = saved.state  # a retried replay continues the upload where this one stopped
    elif op == "log_datasets":
        refs = tuple(DatasetRef(**{**d, "stages": tuple(d.get("stages", ()))}) for d in call["datasets"])
        if inputs := dataset_inputs(refs):
            client.log_inputs(run, datasets=inputs)
    elif op == "finish":
        client.set_terminated(run, status=call["status"], end_time=call["end_time"])
    else:
        raise Permanent(f"unknown operation {op!r}")


def _folders(storage: str, sweep: str) -> list[str]:
    fs, root = resolve_uri(join_storage(storage, sweep, BACKLOG_DIR))
    try:
        entries = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except OSError:
        return []
    return sorted(e.path for e in entries if e.type == pafs.FileType.Directory)


def deliver_backlogs(tracker: Tracker, storage: str, sweep: str) -> int:
    """Replay every backlog of the sweep in order, removing each once delivered; the number of calls left.

    A call MLflow rejects for good (4xx) is dropped with a warning; one that fails otherwise stops its
    backlog there, the rest kept (with what was delivered meanwhile no longer in it) for the next try.
    """
    left = 0
    for path in _folders(storage, sweep):
        fs = resolve_uri(join_storage(storage, sweep))[0]
        local = path if isinstance(fs, pafs.LocalFileSystem) else tempfile.mkdtemp(prefix="trilevel-backlog-")
        try:
            if local != path:
                pafs.copy_files(path, local, fs, pafs.LocalFileSystem())
            calls_path = os.path.join(local, CALLS_FILE)
            if not os.path.isfile(calls_path):
                continue  # still being written (or its writer died before the end): not ours to judge
            with open(calls_path) as stream:
                report = json.load(stream)
            calls = report["calls"]
            done = 0
            for call in calls:
                try:
                    _replay(tracker, call, local)
                except Exception as err:
                    if not (isinstance(err, Permanent) or is_permanent(err)):
                        _log.warning(
                            "MLflow at %s: backlog %s stopped at %s: %s", tracker.tracking_uri, path, call["op"], err
                        )
                        break
                    _log.warning("MLflow rejected a backlog call (%s), dropped: %s", call["op"], err)
                done += 1
            remaining = calls[done:]
            if remaining:
                for call in remaining:  # placeholders created meanwhile are real runs now
                    if "run" in call:
                        call["run"] = tracker._created.get(call["run"], call["run"])
                report["calls"] = remaining
                write_bytes(fs, posixpath.join(path, CALLS_FILE), json.dumps(report, indent=1).encode())
                left += len(remaining)
            else:
                fs.delete_dir(path)
                _log.info("delivered the %d tracking call(s) of backlog %s", len(calls), path)
        finally:
            if local != path:
                shutil.rmtree(local, ignore_errors=True)
    if not _folders(storage, sweep):
        fs, root = resolve_uri(join_storage(storage, sweep, BACKLOG_DIR))
        try:
            if not fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
                fs.delete_dir(root)
        except OSError:
            pass
    return left
