"""Environment and source tags (orchestrator.tracking.environment): no MLflow needed."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import socket
import subprocess
import tomllib
from pathlib import Path

import pytest

from orchestrator.tracking import code_provenance, run_environment_tags, source_tags
from orchestrator.tracking.environment import COMMIT_ENV_VAR, DIRTY_ENV_VAR, VERSION_ENV_VAR


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


# --- provenance: the code's commit and version, where the code has no .git -------------------------------
ROOT = Path(__file__).resolve().parents[3]
PROVENANCE_VARS = (COMMIT_ENV_VAR, DIRTY_ENV_VAR, VERSION_ENV_VAR)


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def no_provenance_env(monkeypatch):
    for name in PROVENANCE_VARS:
        monkeypatch.delenv(name, raising=False)


def _version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_a_checkout_gives_its_commit_and_its_pyproject_version(no_provenance_env):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (a source archive): nothing to compare with")
    found = code_provenance(ROOT)
    assert found[COMMIT_ENV_VAR] == _git("rev-parse", "HEAD", cwd=ROOT)
    assert found[DIRTY_ENV_VAR] in {"true", "false"} and found[VERSION_ENV_VAR] == _version()


def test_code_without_git_is_unknown_unless_its_provenance_came_with_it(no_provenance_env, tmp_path, monkeypatch):
    """An uploaded working_dir (no .git): unknown alone, the submitter's commit when the job's env carries it."""
    upload = tmp_path / "upload"
    upload.mkdir()
    shutil.copy(ROOT / "pyproject.toml", upload)
    found = code_provenance(upload)
    assert found == {COMMIT_ENV_VAR: "unknown", DIRTY_ENV_VAR: "unknown", VERSION_ENV_VAR: _version()}
    monkeypatch.setenv(COMMIT_ENV_VAR, "a" * 40)
    monkeypatch.setenv(DIRTY_ENV_VAR, "false")
    monkeypatch.setenv(VERSION_ENV_VAR, "9.9.9")
    assert code_provenance(upload) == {COMMIT_ENV_VAR: "a" * 40, DIRTY_ENV_VAR: "false", VERSION_ENV_VAR: "9.9.9"}
    tags = run_environment_tags()  # what every run of that job records
    assert tags["trilevel.git_commit"] == tags["mlflow.source.git.commit"] == "a" * 40
    assert tags["trilevel.git_dirty"] == "false" and tags["trilevel.version.trilevel-nas"] == "9.9.9"


def test_an_installed_package_never_takes_the_commit_of_a_checkout_around_its_venv(no_provenance_env, tmp_path):
    _git("init", "-q", cwd=tmp_path)
    site = tmp_path / ".venv" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    (tmp_path / "f").write_text("x")
    _git("add", "f", cwd=tmp_path)
    _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x", cwd=tmp_path)
    assert code_provenance(site)[COMMIT_ENV_VAR] == "unknown"
    assert code_provenance(site)[VERSION_ENV_VAR] == importlib.metadata.version("trilevel-nas")
