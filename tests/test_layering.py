"""search_space imports and runs without Ray or MLflow, through every route, not only our own imports.

The layer contracts in pyproject.toml (``lint-imports``, run by ``make test``) check our import graph:
imports point down (orchestrator → workers → search_space), search_space names neither ``ray`` nor
``mlflow``, workers never ``mlflow``. They cannot see inside third-party packages, so this test
imports every search_space module in a process where ``ray`` and ``mlflow`` cannot be imported at
all: a dependency that pulled either in would fail here.
"""

from __future__ import annotations

import subprocess
import sys

BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked}:
            raise ImportError("blocked by test: " + name)
sys.meta_path.insert(0, Block())
import importlib, pkgutil
root = importlib.import_module("{package}")
for info in pkgutil.walk_packages(getattr(root, "__path__", []), prefix="{package}."):
    importlib.import_module(info.name)
"""


def _import_without(package: str, blocked: set[str]) -> subprocess.CompletedProcess:
    code = BLOCK.format(blocked=blocked, package=package)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_search_space_imports_without_ray_and_mlflow():
    """Every module of search_space, not just its __init__."""
    result = _import_without("search_space", {"ray", "mlflow"})
    assert result.returncode == 0, result.stderr


def test_the_block_really_blocks():
    result = _import_without("ray", {"ray"})
    assert result.returncode != 0 and "blocked by test" in result.stderr
