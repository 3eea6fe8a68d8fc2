"""Data sets logged as MLflow datasets (issue 20): a run's Datasets, with the shard manifest's fingerprint as digest."""

from __future__ import annotations

import json

import pytest

from orchestrator.plan import data_facts
from orchestrator.tracking.datasets import DIGEST_LENGTH, DatasetRef, dataset_inputs, experiment_datasets
from workers.shards.format import read_manifest


def test_training_and_validation_sets_are_the_runs_datasets(tracker, client, demo_data):
    train = data_facts(f"{demo_data}/train", "data.train")
    sets = {"demo-val": f"{demo_data}/val"}, {"demo": f"{demo_data}/test"}
    refs = experiment_datasets({"pretrain": train, "search": train, "train": train}, *sets)
    run = tracker.sweep_run("sw")
    tracker.log_datasets(run, refs)
    tracker.log_datasets(run, refs)  # a resumed trial logs them again: MLflow keeps one input each
    assert tracker.pending == 0

    inputs = {d.dataset.name: d for d in client.get_run(run).inputs.dataset_inputs}
    assert len(inputs) == 3 and "demo-val" in inputs and "demo" in inputs  # val and test sets keep their names
    for ref in refs:
        logged = inputs[ref.name]
        fingerprint = read_manifest(ref.path).data["fingerprint"]
        assert logged.dataset.digest == fingerprint[:DIGEST_LENGTH]  # the manifest's identity, not a content hash
        assert json.loads(logged.dataset.profile)["fingerprint"] == fingerprint
        assert json.loads(logged.dataset.source) == {"uri": ref.path}
        tags = {tag.key: tag.value for tag in logged.tags}
        assert tags["mlflow.data.context"] == ref.context
    (training,) = (ref for ref in refs if ref.context == "training")
    assert {tag.key: tag.value for tag in inputs[training.name].tags}["trilevel.stages"] == "pretrain,search,train"
    assert [ref.context for ref in refs] == ["training", "validation", "testing"]
    schema = json.loads(inputs[training.name].dataset.schema)["mlflow_colspec"]
    assert {"name": "hr", "type": "binary", "required": True} in schema


def test_a_manifest_without_fingerprint_is_named():
    with pytest.raises(ValueError, match="data set /data/old: its manifest has no fingerprint"):
        dataset_inputs([DatasetRef("old", "/data/old", "", "training")])
