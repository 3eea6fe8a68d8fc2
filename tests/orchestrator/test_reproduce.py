"""`trilevel reproduce` planning: the union of the tables' arms, counted by stage key before anything runs."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from orchestrator.experiment import ExperimentError
from orchestrator.reproduce import plan_reproduce, reproduce_experiments


def _experiments(tmp_path, demo_data, seeds: int, tables=("7", "8", "9", "fig1")):
    data = (
        f"data.train={demo_data}/train",
        f"data.val={{demo-val: {demo_data}/val}}",
        f"data.test={{demo: {demo_data}/test}}",
    )
    fields = {"storage": str(tmp_path / "runs"), "tracking.uri": f"sqlite:///{tmp_path}/mlflow.db"}
    return reproduce_experiments("tiny", seeds, tables, data, **fields)


def test_the_tables_share_their_stages_by_key(tmp_path, demo_data):
    experiments = _experiments(tmp_path, demo_data, seeds=2)
    assert [e.name for e in experiments] == [f"reproduce-tiny-{t}" for t in ("table7", "table8", "table9", "fig1")]
    assert all(e.sweep["seed"] == [0, 1] for e in experiments)
    plan = plan_reproduce(experiments)
    # per seed: table7 2 arms, table8 3, table9 2, fig1 2 = 9; table7's sparsestmax = table8's λ 0.1 =
    # table9's trilevel, so 7 distinct configurations
    assert (plan.arms_requested, plan.arms_distinct) == (18, 14)
    assert plan.stages_requested == {"pretrain": 18, "search": 18, "train": 18}
    # pretrain: (table7, table8, table9 trilevel and, at tiny, fig1's backbone-B supernet too) and the bilevel one;
    # search: table8 x3, softmax, bilevel, fig1 (shared by both of its arms); train: one per configuration
    assert plan.stages_distinct == {"pretrain": 4, "search": 12, "train": 14}
    assert plan.stages_stored == {"pretrain": 0, "search": 0, "train": 0}
    assert "18 /    4 /    0 /    4" in "\n".join(plan.lines())


def test_random_arms_make_their_own_sweeps_that_reuse_the_plain_ones(tmp_path, demo_data):
    data = (f"data.train={demo_data}/train", f"data.val={{demo-val: {demo_data}/val}}")
    fields = {"storage": str(tmp_path / "runs"), "tracking.uri": f"sqlite:///{tmp_path}/mlflow.db"}
    plain = reproduce_experiments("tiny", 1, ("8",), data, **fields)
    random = reproduce_experiments("tiny", 1, ("8",), data, 2, **fields)
    # a sweep refuses a changed experiment under its name: the random one is another sweep
    assert [e.name for e in random] == ["reproduce-tiny-table8-random2"]
    with_random = plan_reproduce(random)
    # table8's 3 arms and 2 random draws beside each: its searched arms' stages are the plain sweep's (same keys)
    assert (with_random.arms_requested, with_random.arms_distinct) == (9, 9)
    assert with_random.stages_distinct["search"] == plan_reproduce(plain).stages_distinct["search"]


def test_bad_tables_and_seeds_are_refused(tmp_path, demo_data):
    with pytest.raises(ExperimentError, match="--tables: unknown 10; choose from 7, 8, 9, fig1"):
        _experiments(tmp_path, demo_data, 1, ("10",))
    with pytest.raises(ExperimentError, match="--seeds must be at least 1"):
        _experiments(tmp_path, demo_data, 0)


def test_the_dry_run_prints_the_counts_and_runs_nothing(tmp_path, demo_data):
    from orchestrator.cli.reproduce import reproduce

    args = ["--tables", "8", "--storage", str(tmp_path / "runs"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
    args += ["--set", f"data.train={demo_data}/train", "--set", f"data.val={{demo-val: {demo_data}/val}}"]
    args += ["--set", f"data.test={{demo: {demo_data}/test}}", "--dry-run"]
    result = CliRunner().invoke(reproduce, args)
    assert result.exit_code == 0, result.output
    assert "arms (trials): 3 requested, 3 distinct configurations" in result.output
    assert "3 /    1 /    0 /    1" in result.output  # one pretrain for table8's three arms
    assert not (tmp_path / "runs" / "reproduce-tiny-table8").exists()


def test_the_summary_and_the_python_api_read_the_sweep_of_this_storage_not_a_namesake(tmp_path, demo_data):
    """On a shared MLflow server another user's `reproduce` at the same scale tracks sweeps of the same names
    (other storage, other sweep ids). The summary written once every table has run, and the run ids of
    `orchestrator.run`'s results, are this storage's sweep: before, both were refused as ambiguous."""
    from orchestrator.api import _trial_run_ids
    from orchestrator.cli.reproduce import _summary
    from orchestrator.sweep_lease import sweep_id
    from orchestrator.tracking import Tracker

    (experiment,) = _experiments(tmp_path, demo_data, 1, ("8",))
    plan = plan_reproduce([experiment])
    name, trials = experiment.name, [trial.trial_id for trial in plan.plans[experiment.name]]
    ours: dict[str, str] = {}
    for storage, psnr in ((experiment.storage, 28.5), (str(tmp_path / "namesake"), 26.25)):
        tracker = Tracker(experiment.tracking.uri, experiment.tracking.experiment, sweep_id=sweep_id(storage, name))
        parent = tracker.sweep_run(name)
        for trial in trials:
            run = tracker.trial_run(parent, name, trial, params={}, tags={})
            tracker.log_metrics(run, {"psnr/demo": psnr, "psnr_bicubic/demo": 25.0, "params_m": 0.1, "gflops": 1.0})
            tracker.finish(run)
            if storage == experiment.storage:
                ours[trial] = run
        assert tracker.pending == 0

    text = _summary(plan, {name: 61.0})
    assert "28.50" in text and "26.25" not in text and "1 min 1 s" in text
    assert (tmp_path / "runs" / "reproduce-tiny.md").read_text() == text
    assert _trial_run_ids(experiment) == ours

    # `--random K`: its summary names K, so a run with another K (another sweep) does not overwrite it
    data = (
        f"data.train={demo_data}/train",
        f"data.val={{demo-val: {demo_data}/val}}",
        f"data.test={{demo: {demo_data}/test}}",
    )
    fields = {"storage": experiment.storage, "tracking.uri": experiment.tracking.uri}
    (random,) = reproduce_experiments("tiny", 1, ("8",), data, 1, **fields)
    plan = plan_reproduce([random])
    tracker = Tracker(random.tracking.uri, random.tracking.experiment, sweep_id=sweep_id(random.storage, random.name))
    parent = tracker.sweep_run(random.name)
    for trial in plan.plans[random.name]:
        run = tracker.trial_run(parent, random.name, trial.trial_id, params={}, tags={})
        tracker.log_metrics(run, {"psnr/demo": 27.0, "psnr_bicubic/demo": 25.0, "params_m": 0.1, "gflops": 1.0})
        tracker.finish(run)
    assert tracker.pending == 0
    text = _summary(plan, {random.name: 1.0})
    assert (tmp_path / "runs" / "reproduce-tiny-random1.md").read_text() == text
    assert "27.00" in (tmp_path / "runs" / "reproduce-tiny-random1.md").read_text()
    assert not (tmp_path / "runs" / "reproduce-tiny-random.md").exists()
