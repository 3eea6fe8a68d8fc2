"""Re-running a sweep that exists: the same experiment continues, a different one is refused with the fix.

The saved experiment is written by the sweep's own writer (what `run_sweep` leaves beside Tune's state),
so these tests exercise exactly the file a re-submitted RayJob finds on the shared volume.
"""

from __future__ import annotations

import pytest

from orchestrator.experiment import ExperimentError, load_experiment
from orchestrator.sweep import EXPERIMENT_FILE, _write_experiment, absolutize, continues_saved_sweep


def _experiment(tmp_path, *overrides: str):
    fields = {"storage": str(tmp_path / "runs"), "tracking.uri": f"sqlite:///{tmp_path}/mlflow.db"}
    return absolutize(load_experiment("table8", "tiny", overrides, name="again", **fields))


def test_the_same_experiment_continues(tmp_path):
    first = _experiment(tmp_path)
    _write_experiment(first, first.storage)
    assert continues_saved_sweep(_experiment(tmp_path), first.storage) is True


def test_a_different_experiment_is_refused_naming_the_fields_and_the_fix(tmp_path):
    first = _experiment(tmp_path)
    _write_experiment(first, first.storage)
    changed = _experiment(tmp_path, "stages.search.epochs=5", "seed=3")
    with pytest.raises(ExperimentError) as err:
        continues_saved_sweep(changed, first.storage)
    message = str(err.value)
    assert "sweep 'again' already exists" in message
    assert "seed: 0 -> 3" in message and "stages.search.epochs: 2 -> 5" in message
    assert f"trilevel resume again --storage {first.storage}" in message and "--name" in message


def test_an_unreadable_saved_experiment_is_refused_with_the_fix(tmp_path):
    first = _experiment(tmp_path)
    _write_experiment(first, first.storage)
    (tmp_path / "runs" / "again" / EXPERIMENT_FILE).write_text("name: [unclosed\n")
    expected = r"experiment.yaml cannot be read .*repair .*again/experiment.yaml, or pick another name"
    with pytest.raises(ExperimentError, match=expected):
        continues_saved_sweep(first, first.storage)
