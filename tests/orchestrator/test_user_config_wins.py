"""A user's YAML file and `--set` win over the preset it extends, at every scale, for every field.

Checked through the plan that `--dry-run` prints (the pre-flight, in process: no cluster needed), so
what is tested is what the user reads before spending compute. Also the small guards of a sweep's
shape: repeated axis values, `~` in paths, trial folders that cannot leave the sweep.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.experiment import PRESET_SCALES, ExperimentError, load_experiment, trials
from orchestrator.preflight import format_plan, preflight
from orchestrator.sweep import absolutize


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    """One SQLite store for the module: the pre-flight checks it, and creating one takes seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.mark.parametrize("scale", PRESET_SCALES)
def test_a_files_fields_win_over_the_presets_scale_block(scale, tmp_path, demo_data, tracking_uri):
    train = f"{demo_data}/train"
    path = tmp_path / "mine.yaml"
    path.write_text(
        f"extends: table8\nname: mine\ndata: {{train: {train}}}\n"
        "stages: {search: {epochs: 50, steps_per_epoch: 3}}\nsearch_space: {num_cells: 4}\n"
    )
    experiment = load_experiment(path, scale, storage=str(tmp_path / "runs"), **{"tracking.uri": tracking_uri})
    assert (experiment.data.train, experiment.stages.search.epochs) == (train, 50)
    assert experiment.search_space.num_cells == 4
    assert experiment.sweep == {"stages.search.lambda_order": [0.0, 0.01, 0.1]}  # the rest is still the preset's
    printed = format_plan(preflight(experiment))
    assert f"data {train} [" in printed and "search: 50 epochs × 3 steps" in printed, printed
    assert "_data/demo" not in printed.split("Stages of every trial:")[1].split("Note")[0]


@pytest.mark.parametrize("scale", PRESET_SCALES)
def test_set_overrides_win_over_the_file_and_the_preset(scale, tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: table8\nstages: {search: {epochs: 50}}\n")
    experiment = load_experiment(path, scale, ["stages.search.epochs=9", "stages.train.lr=0.123"])
    assert (experiment.stages.search.epochs, experiment.stages.train.lr) == (9, 0.123)


def test_a_files_own_scale_block_is_its_last_word(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "extends: table8\nstages: {search: {epochs: 50}}\nscales: {tiny: {stages: {search: {epochs: 5}}}, small: {}}\n"
    )
    assert load_experiment(path, "tiny").stages.search.epochs == 5
    assert load_experiment(path, "small").stages.search.epochs == 50
    with pytest.raises(ExperimentError, match=r"mine.yaml: scale must be one of tiny, small, got 'paper'"):
        load_experiment(path, "paper")


def test_repeated_axis_values_are_refused_naming_the_axis():
    with pytest.raises(
        ExperimentError, match=r"sweep.stages.search.lambda_order: the value 0.1 appears more than once"
    ):
        load_experiment("table8", "tiny", ["sweep={stages.search.lambda_order: [0.1, 0.01, 0.1]}"])
    # distinct values that print alike would share a trial id, so a folder and MLflow runs
    experiment = load_experiment("table8", "tiny", ["sweep={seed: [1, '1']}"])
    with pytest.raises(ExperimentError, match=r"two grid points get the same trial id 'seed=1'"):
        trials(experiment)


def test_a_home_relative_storage_and_tracking_uri_are_expanded(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    experiment = absolutize(
        load_experiment("table8", "tiny", storage="~/runs", **{"tracking.uri": "sqlite:///~/mlflow.db"})
    )
    assert experiment.storage == str(tmp_path / "runs")
    assert experiment.tracking.uri == f"sqlite:///{tmp_path}/mlflow.db"


def test_trial_folders_cannot_leave_the_sweep_folder():
    experiment = load_experiment(
        "fig1", "tiny", ["sweep={stages.train.genotype: [../../x.json, ../y/x.json, trilevel-b-psnr]}"]
    )
    ids = [t.trial_id for t in trials(experiment)]
    assert ids[2] == "genotype=trilevel-b-psnr"  # a safe id is kept as it was: resume still finds it
    assert len(set(ids)) == 3
    for trial_id in ids:
        assert "/" not in trial_id and "\\" not in trial_id and trial_id not in (".", "..")
        sweep = Path("/storage/sweep")
        assert (sweep / trial_id).resolve().parent == sweep
