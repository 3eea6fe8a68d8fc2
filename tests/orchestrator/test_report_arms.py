"""A sweep run at several seeds, read as arms: n, mean ± std, paths per seed, the paper's directions, error bars.

Pure: the rows are built here as MLflow would give them back (`TrialRow`), no store is needed.
"""

from __future__ import annotations

import pytest

from orchestrator.report.arms import arm_table, comparison_table, directions, group_arms
from orchestrator.report.build import seeds_section
from orchestrator.report.pareto import pareto_figure
from orchestrator.report.rows import TrialRow

LAMBDA = "stages.search.lambda_order"
# λ → per seed (path, params (M), GFLOPs, PSNR demo): λ=0.1 prunes a cell on seeds 0 and 1, not on 2
SEEDS = {
    "0.0": [([0, 0, 1, 1], 0.40, 12.0, 28.9), ([0, 0, 1, 1], 0.40, 12.0, 29.0), ([0, 0, 1, 1], 0.40, 12.0, 28.8)],
    "0.1": [([0, 1, 1], 0.30, 9.0, 28.7), ([0, 1, 1], 0.30, 9.0, 28.8), ([0, 0, 1, 1], 0.40, 12.0, 28.8)],
}


def _rows() -> list[TrialRow]:
    rows = []
    for value, seeds in SEEDS.items():
        for seed, (path, params_m, gflops, psnr) in enumerate(seeds):
            rows.append(
                TrialRow(
                    trial=f"lambda_order={value},seed={seed}",
                    axes={LAMBDA: value, "seed": str(seed)},
                    path=path,
                    params_m=params_m,
                    gflops=gflops,
                    psnr={"demo": psnr},
                    ssim={"demo": 0.7},
                    latency_s=None,
                    status="FINISHED",
                    run_id=f"r{value}{seed}",
                    psnr_bicubic={"demo": 28.0},
                )
            )
    return rows


def test_arms_give_n_mean_std_and_how_many_seeds_derived_each_path():
    rows = _rows()
    arms = group_arms(rows)
    assert [(arm.name, arm.n) for arm in arms] == [("λ=0", 3), ("λ=0.1", 3)]
    table = arm_table(arms, rows)
    assert table[0]["Paths (seeds)"] == "[0,0,1,1] ×3" and table[0]["Params (M)"] == "0.40 ± 0.00"
    assert table[1]["Paths (seeds)"] == "[0,1,1] ×2, [0,0,1,1] ×1"
    assert table[1]["Params (M)"] == "0.33 ± 0.06"  # mean 0.333, sample std 0.0577
    assert table[0]["PSNR demo"] == "28.90 ± 0.10" and table[0]["Δ vs bicubic demo"] == "0.90 ± 0.10"


def test_lambda_direction_paired_by_seed_is_undecided_when_one_seed_disagrees():
    rows = _rows()
    (claim,) = directions(group_arms(rows), rows)
    assert claim.claim == "λ=0.1 < λ=0 in params (M)"
    assert claim.differences == pytest.approx((-0.1, -0.1, 0.0)) and claim.agree == 2
    assert claim.verdict == "undecided at n = 3"  # the interval [-0.21, +0.08] contains zero
    (cells,) = comparison_table([claim])
    assert cells["Seeds agreeing"] == "2/3" and cells["Per-seed difference (a − b)"].startswith("s0: -0.100")
    section = seeds_section(rows, None)
    assert "## Arms over seeds" in section and "undecided at n = 3" in section
    assert "cannot go below p = 0.25 (two-sided) with 3 seeds" in section


def test_without_seeds_there_is_no_seed_section_and_the_plot_has_error_bars_with_them():
    rows = _rows()
    single = [r for r in rows if r.axes["seed"] == "0"]
    assert seeds_section([TrialRow(**{**r.__dict__, "axes": {LAMBDA: r.axes[LAMBDA]}}) for r in single], None) == ""
    ax = pareto_figure(rows).axes[0]
    assert len(ax.containers) == 2  # one error bar per arm, not one point per trial
    assert sorted(t.get_text() for t in ax.texts) == ["λ=0 (n=3)", "λ=0.1 (n=3)"]


def test_the_random_baseline_is_a_row_per_arm_and_a_paired_claim():
    from orchestrator.experiment import RANDOM_AXIS

    rows = [r for r in _rows() if r.axes[LAMBDA] == "0.0"]
    searched = [TrialRow(**{**r.__dict__, "axes": {**r.axes, RANDOM_AXIS: "None"}}) for r in rows]
    randoms = []
    for r in rows:  # two draws per seed, 0.3 and 0.5 dB below the searched network: the seed's mean is 0.4 below
        for draw, drop in ((0, 0.3), (1, 0.5)):
            axes = {**r.axes, RANDOM_AXIS: str(draw)}
            randoms.append(TrialRow(**{**r.__dict__, "axes": axes, "psnr": {"demo": r.psnr["demo"] - drop}}))
    arms = group_arms(searched + randoms)
    assert [(a.name, a.n, a.random) for a in arms] == [("λ=0", 3, False), ("λ=0, random, FLOPs-matched", 3, True)]
    table = arm_table(arms, searched + randoms)
    assert table[1]["n"] == "3 × 2 draws" and table[1]["PSNR demo"] == "28.50 ± 0.10"
    (claim,) = directions(arms, searched + randoms)
    assert claim.claim == "λ=0 ≥ λ=0, random, FLOPs-matched in PSNR demo"  # as "from search ≥ from scratch"
    assert claim.differences == pytest.approx((0.4, 0.4, 0.4)) and claim.verdict == "holds"
    # seed 1's second draw failed: its seed value is one draw's, and n says so (5 // 3 read "3 × 1 draws")
    failed = randoms[3]
    assert (failed.axes["seed"], failed.axes[RANDOM_AXIS]) == ("1", "1")
    randoms[3] = TrialRow(**{**failed.__dict__, "status": "FAILED", "psnr": {}})
    arms = group_arms(searched + randoms)
    assert arm_table(arms, searched + randoms)[1]["n"] == "3 × 1–2 draws (5 in all)"
    (claim,) = directions(arms, searched + randoms)
    assert claim.differences == pytest.approx((0.4, 0.3, 0.4))
