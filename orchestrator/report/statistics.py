"""Paired statistics over seeds: does a direction the paper claims hold in our runs?

Why paired and over seeds: two arms of one seed share their initial weights, patches and Gumbel
draws (the seed reaches every stage), so the per-seed difference removes what the seeds have in
common and the seeds are the replicates. For a claim such as "sparsestmax ≤ softmax in params" the
report gives every seed's difference, how many seeds agree with the claim, a 95 % t-interval of the
mean difference (Student's t with n − 1 degrees of freedom over the seeds) and a verdict:

* **holds**: the interval excludes zero on the claimed side;
* **does not hold**: it excludes zero on the other side;
* **undecided at n = …**: it contains zero (or there are fewer than 2 seeds: no interval).

With few seeds the interval is wide and a sign test is no help either: an exact one-sided sign test
cannot go below p = 0.5ⁿ (0.125 at n = 3, two-sided 0.25), whatever the data (:func:`sign_test_floor`).
Pure functions on plain numbers: no MLflow, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "HOLDS",
    "NOT_HOLDS",
    "Comparison",
    "mean_std",
    "paired_comparison",
    "sign_test_floor",
    "t_interval",
]

HOLDS = "holds"
NOT_HOLDS = "does not hold"
Direction = Literal["less", "greater"]  # the claim: arm a's value is less (greater) than arm b's


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n − 1); the std is None for a single value."""
    if not values:
        raise ValueError("mean_std: no values")
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """Two-sided Student-t interval of the mean of `values` (n − 1 degrees of freedom); None for n < 2.

    Zero spread gives the zero-width interval at the mean (every seed agreed exactly).
    """
    from scipy.stats import t

    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = len(values)
    if n < 2:
        return None
    mean, std = mean_std(values)
    assert std is not None
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return mean - half, mean + half


def sign_test_floor(n: int, two_sided: bool = True) -> float:
    """The smallest p-value an exact sign test can give with `n` paired seeds: every seed agreeing.

    2·0.5ⁿ two-sided (0.25 at n = 3), 0.5ⁿ one-sided: with 3 seeds no sign test reaches 0.05.
    """
    if n < 1:
        raise ValueError(f"sign_test_floor: n must be >= 1, got {n}")
    return min(1.0, (2.0 if two_sided else 1.0) * 0.5**n)


@dataclass(frozen=True)
class Comparison:
    """A claimed direction between two arms, checked on the seeds both have."""

    claim: str  # e.g. "sparsestmax ≤ softmax in params (M)"
    direction: Direction  # the claim says a − b is < 0 ("less") or > 0 ("greater")
    seeds: tuple[int, ...]  # the seeds both arms have, in order
    differences: tuple[float, ...]  # a − b per seed
    agree: int  # seeds whose difference has the claimed sign (a tie agrees with neither)
    mean: float | None
    interval: tuple[float, float] | None  # 95 % t-interval of the mean difference; None for n < 2
    verdict: str  # HOLDS, NOT_HOLDS or "undecided at n = …"

    @property
    def n(self) -> int:
        return len(self.differences)


def paired_comparison(
    claim: str,
    a: dict[int, float],
    b: dict[int, float],
    direction: Direction,
    confidence: float = 0.95,
) -> Comparison:
    """Arm a vs arm b, paired by seed (seed → value); the claim is a − b < 0 (`less`) or > 0 (`greater`).

    "≤" claims (sparsestmax ≤ softmax in params) are tested as "less": equal values on every seed do
    not show the claim, they leave it undecided. Seeds only one arm has are left out.
    """
    if direction not in ("less", "greater"):
        raise ValueError(f"direction must be 'less' or 'greater', got {direction!r}")
    seeds = tuple(sorted(set(a) & set(b)))
    differences = tuple(a[s] - b[s] for s in seeds)
    sign = -1.0 if direction == "less" else 1.0
    agree = sum(1 for d in differences if d * sign > 0)
    mean = mean_std(differences)[0] if differences else None
    interval = t_interval(differences, confidence)
    verdict = f"undecided at n = {len(differences)}"
    if interval is not None:
        low, high = interval
        claimed_side = high < 0 if direction == "less" else low > 0
        other_side = low > 0 if direction == "less" else high < 0
        if claimed_side:
            verdict = HOLDS
        elif other_side:
            verdict = NOT_HOLDS
        elif low == high:  # every seed the same difference, exactly zero: no direction at all
            verdict = f"undecided at n = {len(differences)} (no difference)"
    return Comparison(claim, direction, seeds, differences, agree, mean, interval, verdict)
