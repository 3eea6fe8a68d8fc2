"""The paired statistics of the reports, on inputs whose answers are known by hand or from tables."""

from __future__ import annotations

import math

import pytest

from orchestrator.report.statistics import HOLDS, NOT_HOLDS, mean_std, paired_comparison, sign_test_floor, t_interval

T_975_DF2 = 4.302652729911275  # Student's t, 97.5th percentile, 2 degrees of freedom (printed tables: 4.303)
T_975_DF4 = 2.7764451051977987  # 4 degrees of freedom (tables: 2.776)


def test_mean_and_sample_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([5.0]) == (5.0, None)
    assert mean_std([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])[1] == pytest.approx(math.sqrt(32 / 7))
    with pytest.raises(ValueError, match="no values"):
        mean_std([])


def test_t_interval_matches_the_printed_t_tables():
    low, high = t_interval([1.0, 2.0, 3.0])
    half = T_975_DF2 * 1.0 / math.sqrt(3)
    assert (low, high) == pytest.approx((2 - half, 2 + half))
    low, high = t_interval([0.1, 0.2, 0.3, 0.4, 0.5])  # mean 0.3, std sqrt(0.025)
    half = T_975_DF4 * math.sqrt(0.025) / math.sqrt(5)
    assert (low, high) == pytest.approx((0.3 - half, 0.3 + half))
    assert t_interval([4.0]) is None and t_interval([2.0, 2.0]) == (2.0, 2.0)


def test_sign_test_cannot_go_below_a_quarter_with_three_seeds():
    assert sign_test_floor(3) == 0.25 and sign_test_floor(3, two_sided=False) == 0.125
    assert sign_test_floor(5) == 0.0625 and sign_test_floor(1) == 1.0


def test_a_direction_holds_only_when_the_interval_excludes_zero_on_its_side():
    # λ ↑ → fewer params: params(λ=0.1) − params(λ=0) < 0 on every seed, tightly
    fewer = paired_comparison("λ=0.1 < λ=0 in params", {0: 0.30, 1: 0.31, 2: 0.29}, {0: 0.40, 1: 0.40, 2: 0.41}, "less")
    assert fewer.differences == pytest.approx((-0.10, -0.09, -0.12)) and fewer.agree == 3 and fewer.n == 3
    assert fewer.interval[1] < 0 and fewer.verdict == HOLDS
    # the opposite direction, as clearly: does not hold
    more = paired_comparison("x", {0: 1.0, 1: 1.1, 2: 1.2}, {0: 0.0, 1: 0.0, 2: 0.1}, "less")
    assert more.agree == 0 and more.interval[0] > 0 and more.verdict == NOT_HOLDS
    # every seed agrees, but the spread is large: with 3 seeds the interval still contains zero
    noisy = paired_comparison("y", {0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.0, 1: 0.0, 2: 0.0}, "greater")
    assert noisy.agree == 3 and noisy.interval == pytest.approx(
        (2 - T_975_DF2 / math.sqrt(3), 2 + T_975_DF2 / math.sqrt(3))
    )
    assert noisy.verdict == "undecided at n = 3"


def test_ties_seeds_missing_in_one_arm_and_a_single_seed():
    same = paired_comparison("z", {0: 0.5, 1: 0.5}, {0: 0.5, 1: 0.5}, "less")
    assert same.agree == 0 and same.interval == (0.0, 0.0) and same.verdict == "undecided at n = 2 (no difference)"
    partial = paired_comparison("w", {0: 1.0, 1: 2.0, 2: 9.0}, {0: 2.0, 1: 3.0}, "less")
    assert partial.seeds == (0, 1) and partial.differences == (-1.0, -1.0) and partial.verdict == HOLDS
    one = paired_comparison("v", {0: 1.0}, {0: 2.0}, "less")
    assert one.interval is None and one.agree == 1 and one.verdict == "undecided at n = 1"
    with pytest.raises(ValueError, match="direction must be"):
        paired_comparison("u", {}, {}, "smaller")
