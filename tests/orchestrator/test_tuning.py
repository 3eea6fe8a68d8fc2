"""The `tune:` block: validated with errors naming field and value, and turned into Tune's own objects.

No Ray is started: the scheduler, search algorithm and param space are the real Tune classes, built
from the experiment; the per-epoch Tune results are made from a stage's report dicts.
"""

from __future__ import annotations

import math
import sys

import pytest
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

from orchestrator.experiment import ExperimentError, load_experiment, trial_for, trials
from orchestrator.tune_reports import OVER_BUDGET_DB, EpochResults, objective
from orchestrator.tuning import param_space, scheduler, search_algorithm, total_epochs, tune_callbacks

LR = "stages.search.lambda_order"
SPACE = f"tune.search.space={{{LR}: {{kind: loguniform, low: 0.001, high: 0.1}}}}"


def _load(*overrides: str):
    return load_experiment("table8", "tiny", overrides)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tune.scheduler.kind=hyperband", "tune.scheduler.kind: Input should be 'fifo', 'asha' or 'median'"),
        ("tune.search.kind=bayesopt", "tune.search.kind: Input should be 'random' or 'optuna' (got 'bayesopt')"),
        ("tune.scheduler.grace_period=0", "tune.scheduler.grace_period: Input should be greater than or equal to 1"),
        ("tune.callbacks=[not_dotted]", "tune.callbacks: a callback is a dotted path"),
        ("tune.num_samples=3", "tune.num_samples: 3 samples of a sweep with no searched axis would repeat"),
        (
            "tune.search.space={stages.search.nope: {kind: uniform, low: 0, high: 1}}",
            "tune.search.space.stages.search.nope: no field 'stages.search.nope'",
        ),
        (
            "tune.search.space={stages.search.lambda_order: {kind: loguniform, low: 0, high: 1}}",
            "loguniform needs low > 0, got 0.0",
        ),
    ],
)
def test_a_bad_tune_block_names_the_field_and_value(override, message):
    with pytest.raises(ExperimentError) as err:
        _load(override)
    assert message in str(err.value)


def test_optuna_takes_no_grid_axes_and_needs_a_space():
    with pytest.raises(ExperimentError, match=r"optuna suggests values and cannot take grid axes \(sweep.stages"):
        _load("tune.search.kind=optuna")
    with pytest.raises(ExperimentError, match=r"optuna needs at least one axis in tune\.search\.space"):
        _load("tune.search.kind=optuna", "sweep={}")


def test_a_suggested_value_makes_a_trial_like_a_grid_value():
    experiment = _load()
    grid = trials(experiment)[1]
    suggested = trial_for(experiment, {LR: grid.axes[LR]})
    assert suggested == grid
    other = trial_for(experiment, {LR: 0.0316})
    assert other.trial_id == "lambda_order=0.0316" and other.experiment.stages.search.lambda_order == 0.0316


def test_asha_acts_on_epochs_over_the_whole_pipeline_and_never_cuts_the_evaluation():
    experiment = _load("tune.scheduler.kind=asha", "tune.scheduler.grace_period=2")
    asha = scheduler(experiment)
    assert isinstance(asha, ASHAScheduler)
    assert asha._time_attr == "epochs_done" and asha.metric == "objective" and asha._stop_last_trials is False
    assert asha._max_t == total_epochs(experiment) == 1 + 2 + 4  # tiny table8: pretrain, search, train epochs
    assert isinstance(scheduler(_load("tune.scheduler.kind=median")), MedianStoppingRule)
    assert isinstance(scheduler(_load()), FIFOScheduler)


def test_param_space_holds_grid_axes_and_distributions():
    from ray.tune.search.sample import Float

    space = param_space(_load("sweep={stages.search.epochs: [1, 2]}", SPACE))["axes"]
    assert space["stages.search.epochs"] == {"grid_search": [1, 2]}
    assert isinstance(space[LR], Float) and space[LR].lower == 0.001


def test_search_algorithms_and_a_missing_optuna(monkeypatch):
    generator = search_algorithm(_load("resources.max_concurrent_trials=2"))
    assert isinstance(generator, BasicVariantGenerator) and generator.max_concurrent == 2
    assert search_algorithm(_load("resources.max_concurrent_trials=null")).max_concurrent == 0  # unset: as many as fit
    optuna = _load("sweep={}", "tune.search.kind=optuna", SPACE, "resources.max_concurrent_trials=2")
    limited = search_algorithm(optuna)
    assert isinstance(limited, ConcurrencyLimiter) and limited.max_concurrent == 2
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if the `tune` extra were not installed
    with pytest.raises(ExperimentError, match=r"optuna needs the optuna package: pip install 'trilevel-nas\[tune\]'"):
        search_algorithm(optuna)


def test_a_resume_keeps_the_new_limit_of_the_search_through_its_restored_state():
    """A search algorithm's saved state holds the limit it started with; a resume's `--set` limit must stay."""
    pytest.importorskip("optuna")
    optuna = _load("sweep={}", "tune.search.kind=optuna", SPACE, "resources.max_concurrent_trials=1")
    for search in (search_algorithm(_load("resources.max_concurrent_trials=1")), search_algorithm(optuna)):
        saved = search.get_state()
        search.max_concurrent = 3  # what _apply_run_settings sets (a generator: built again with it)
        search.set_state(saved)
        assert search.max_concurrent == 3, type(search)


def test_every_scheduler_holds_the_concurrency_limit():
    for kind in ("fifo", "asha", "median"):
        assert scheduler(_load(f"tune.scheduler.kind={kind}", "resources.max_concurrent_trials=3")).limit == 3
        assert scheduler(_load(f"tune.scheduler.kind={kind}", "resources.max_concurrent_trials=null")).limit is None
    with pytest.raises(
        ExperimentError, match=r"resources\.max_concurrent_trials: Input should be greater than or equal to 1"
    ):
        _load("resources.max_concurrent_trials=0")


def test_user_callbacks_are_imported_or_named_in_the_error():
    (callback,) = tune_callbacks(_load("tune.callbacks=[ray.tune.logger.CSVLoggerCallback]"))
    assert type(callback).__name__ == "CSVLoggerCallback"
    with pytest.raises(ExperimentError, match=r"tune.callbacks.0: cannot import nowhere.Callback"):
        tune_callbacks(_load("tune.callbacks=[nowhere.Callback]"))
    not_a_callback = r"tune\.callbacks\.0: collections\.OrderedDict is not a ray\.tune\.Callback"
    with pytest.raises(ExperimentError, match=not_a_callback):
        tune_callbacks(_load("tune.callbacks=[collections.OrderedDict]"))


def test_every_epoch_becomes_a_tune_result_with_the_scheduler_and_search_metrics():
    results = EpochResults({"pretrain": 0, "search": 1, "train": 3, "total": 7}, gflops_budget=1.0, trial_id="t")
    pretrain = results({"stage": "pretrain", "epoch": 0, "loss": 0.5, "val_psnr": 20.0}, "/ck/pretrain-1")
    assert pretrain["epochs_done"] == 1 and pretrain["objective"] == 20.0
    assert pretrain["checkpoint_path"] == "/ck/pretrain-1" and pretrain["trial"] == "t"
    search = results(
        {"stage": "search", "epoch": 1, "loss_w": 0.4, "derived_gflops": 1.5, "genotype": "{...}", "radius": 1.0},
        None,
    )
    assert search["epochs_done"] == 3 and search["loss"] == 0.4 and "genotype" not in search
    assert search["val_psnr"] == 20.0  # carried over: every result has the scheduler's metric
    assert search["objective"] == pytest.approx(20.0 - OVER_BUDGET_DB * 0.5)
    evaluated = {"psnr/demo": 25.0, "ssim/demo": 0.8, "val_psnr_selected": 21.0, "gflops": 0.5, "epochs_done": 7}
    final = results.final(evaluated)
    assert final["val_psnr"] == 21.0 and final["objective"] == 21.0  # validation chooses, within the budget
    assert final["psnr/demo"] == 25.0  # the test numbers are reported, never scored
    assert objective(None, 1.0, 1.0) is None and objective(30.0, 4.0, None) == 30.0
    fresh = EpochResults({"pretrain": 0, "search": 1, "train": 3, "total": 7}, gflops_budget=None, trial_id="t")
    diverged = fresh({"stage": "train", "epoch": 0, "loss": float("nan"), "val_psnr": float("nan")}, None)
    assert math.isnan(diverged["val_psnr"]) and diverged["objective"] == 0.0  # schedulers can stop it
