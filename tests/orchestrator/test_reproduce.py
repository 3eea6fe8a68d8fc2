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
