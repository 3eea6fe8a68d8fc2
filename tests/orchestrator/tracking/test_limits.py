"""Shaping values to MLflow's limits (orchestrator.tracking.limits): no MLflow needed."""

from __future__ import annotations

from orchestrator.tracking import flatten


def test_flatten_joins_keys_with_dots():
    nested = {"stages": {"search": {"lr": 0.1, "epochs": 3}}, "axes": [1, 2], "none": None, "empty": {}}
    assert flatten(nested) == {
        "stages.search.lr": "0.1",
        "stages.search.epochs": "3",
        "axes": "[1, 2]",
        "none": "None",
        "empty": "{}",
    }
    assert flatten({"a": {"b": True}}, "cfg") == {"cfg.a.b": "True"}
