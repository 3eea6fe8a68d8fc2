"""One tiny sweep through the Python API, as the README shows it: Tune sees every epoch, ASHA stops, Optuna resumes.

The README's example is executed as written (in a temporary directory, on the session's Ray): Optuna
runs two warm-start points of the pretraining learning rate, a sane one and then an absurd one, ASHA
stops the second after its first epoch, and the sweep is then opened again from its storage and run
again (a resume of an Optuna sweep: its searcher state is restored and nothing is trained twice).
Real Ray Tune, real Optuna, real MLflow on SQLite; nothing mocked.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

# The module's tests in one test process, one after the other: handed out one by one (as xdist does single tests),
# the module's fixture ran the README example twice in `make test` (two ~27 s setups).
pytestmark = pytest.mark.xdist_group("tune-api")

README = Path(__file__).resolve().parents[2] / "README.md"
SANE, ABSURD = "lr=0.001", "lr=1.0"


def _readme_example() -> str:
    text = README.read_text()
    section = text[text.index("## Tune: schedulers, search algorithms and a Python API") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def quickstart(ray_session, tmp_path_factory):
    """The README example's namespace after it ran, then the same sweep run again (a resume)."""
    pytest.importorskip("optuna")
    root = tmp_path_factory.mktemp("quickstart")
    before = os.getcwd()
    os.chdir(root)
    try:
        namespace: dict = {}
        exec(compile(_readme_example(), str(README), "exec"), namespace)
        result = namespace["result"]
        checkpoint = Path(result.trials.set_index("trial_id").checkpoint[SANE])
        trained_at = checkpoint.stat().st_mtime_ns
        namespace["resumed"] = namespace["trilevel"].run(namespace["experiment"])
        namespace["trained_at"] = (trained_at, checkpoint.stat().st_mtime_ns)
    finally:
        os.chdir(before)
    return namespace


def test_tune_holds_every_epoch_of_every_stage(quickstart):
    curves = quickstart["curves"]
    assert list(curves.stage) == ["pretrain", "search", "train", "evaluate"]
    assert list(curves.epochs_done) == [1, 2, 3, 3] and curves.val_psnr.notna().all()
    search = curves[curves.stage == "search"].iloc[0]
    assert search.radius == pytest.approx(1.0) and search.derived_gflops > 0
    grid = quickstart["grid"]
    assert len(grid) == 2 and not grid.errors
    assert sum(len(result.metrics_dataframe) for result in grid) == 4 + 1  # the stopped arm: one epoch


def test_asha_stops_the_hopeless_arm_after_its_grace_period(quickstart):
    trials = quickstart["result"].trials.set_index("trial_id")
    assert list(trials.index) == [SANE, ABSURD]  # Optuna ran its warm-start points in order
    assert trials.status[SANE] == "TERMINATED" and trials.status[ABSURD] == "STOPPED"
    assert trials.epochs_done[ABSURD] == 1 and trials.objective[ABSURD] < trials.objective[SANE]


def test_the_dataframe_has_what_a_trial_left(quickstart):
    trials = quickstart["result"].trials.set_index("trial_id")
    sane = trials.loc[SANE]
    assert sane["axis.stages.pretrain.lr"] == 0.001 and sane.seed == 0
    assert re.fullmatch(r"\[[01](, [01])*\]", sane.path) and sane.params_m > 0 and sane.gflops > 0
    assert sane["psnr/demo"] > 0 and 0 < sane["ssim/demo"] <= 1 and sane["psnr_bicubic/demo"] > 0
    assert Path(sane.checkpoint).is_dir() and Path(sane.search_checkpoint).is_dir()
    assert len(sane.run_id) == 32 and len(trials.run_id[ABSURD]) == 32
    best = quickstart["result"].best()
    assert best.trial_id == SANE


def test_a_finished_sweep_opens_from_its_storage_and_resumes_without_training_again(quickstart):
    opened, resumed = quickstart["again"], quickstart["resumed"]
    first = quickstart["result"].trials
    for other in (opened, resumed):
        assert sorted(zip(other.trials.trial_id, other.trials.status, strict=True)) == sorted(
            zip(first.trial_id, first.status, strict=True)
        )
        assert len(other.grid) == 2
    before, after = quickstart["trained_at"]
    assert before == after  # nothing was trained again
