"""Environment and source tags (orchestrator.tracking.environment): no MLflow needed."""

from __future__ import annotations

import importlib.metadata
import re
import socket

from orchestrator.tracking import run_environment_tags, source_tags


def test_source_tags_name_the_command():
    tags = source_tags(["/venv/bin/trilevel", "sweep", "experiments/mine.yaml", "--set", "seed=1"])
    assert tags == {
        "mlflow.source.name": "trilevel sweep mine.yaml --set seed=1",  # the UI shows what follows the last "/"
        "mlflow.source.type": "LOCAL",
        "trilevel.command": "trilevel sweep experiments/mine.yaml --set seed=1",
    }
    module = source_tags(["/src/orchestrator/__main__.py", "demo"])
    assert module["mlflow.source.name"] == "trilevel demo" and module["trilevel.command"] == "trilevel demo"
    assert source_tags(["/usr/bin/pytest", "-k", "x y"])["trilevel.command"] == "pytest -k 'x y'"
    assert set(source_tags()) <= set(run_environment_tags())


def test_environment_tags_name_versions_and_commit():
    tags = run_environment_tags()
    for package in ("torch", "ray", "mlflow", "numpy"):
        assert tags[f"trilevel.version.{package}"] == importlib.metadata.version(package)
    assert tags["trilevel.version.python"].count(".") == 2
    assert tags["trilevel.version.trilevel-nas"] != "unknown"
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", tags["trilevel.git_commit"])
    assert tags["trilevel.hostname"] == socket.gethostname() and tags["trilevel.platform"]
