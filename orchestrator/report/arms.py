"""A sweep run at several seeds (`--seeds N`) read as arms: each arm's n, mean ± std, and the paper's directions.

An arm is a grid point without its seed (``combiner=softmax``); its trials at seeds 0..N-1 are
replicates. :func:`arm_table` gives per arm n, mean ± std of test PSNR/SSIM, params and GFLOPs and how
many seeds derived each path; :func:`directions` checks, seed by seed, the directions the paper's
tables claim for what the sweep varies (:mod:`orchestrator.report.statistics`):

* λ_order ↑ → fewer params (Table 8), each larger λ against the next smaller one;
* sparsestmax ≤ softmax in params (Table 7);
* trilevel ≤ bilevel in params (Table 9);
* from search ≥ from scratch in PSNR (Fig. 1), on the first test set;
* and for a sweep with the random baseline (`--random K`): each searched arm ≥ its "random,
  FLOPs-matched" twin in PSNR, the K draws of a seed averaged into that seed's value.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from orchestrator.experiment import RANDOM_AXIS, SEED_AXIS
from orchestrator.report.rows import TrialRow, axis_order, baselines, number_or_none, scored_test_sets
from orchestrator.report.statistics import Comparison, mean_std, paired_comparison
from orchestrator.report.table import MISSING, format_path

__all__ = ["RANDOM_NAME", "Arm", "arm_table", "comparison_table", "directions", "group_arms", "has_seeds", "mean_pm"]

RANDOM_NAME = "random, FLOPs-matched"
_SEARCHED = ("None", "none", "")  # the random axis' value of the searched network


@dataclass(frozen=True)
class Arm:
    """One grid point over its seeds: the trials that finished with test numbers, by seed.

    A random arm holds the K random draws of each seed (their mean is the seed's value).
    """

    name: str  # how the report names it (a label, ``λ=0.1``, or the axis values)
    axes: dict[str, str]  # axis → value, the seed and the random draw left out
    by_seed: dict[int, list[TrialRow]]
    random: bool = False

    @property
    def n(self) -> int:
        return len(self.by_seed)

    @property
    def trials(self) -> list[TrialRow]:
        return [row for rows in self.by_seed.values() for row in rows]

    def values(self, pick: Callable[[TrialRow], float | None]) -> dict[int, float]:
        """Seed → the picked number (the mean over a random arm's draws), for the seeds that have it."""
        out = {}
        for seed, rows in self.by_seed.items():
            picked = [value for row in rows if (value := pick(row)) is not None]
            if picked:
                out[seed] = math.fsum(picked) / len(picked)
        return out


def has_seeds(rows: Sequence[TrialRow]) -> bool:
    """Whether the trials are replicates of arms: a `seed` axis (`--seeds`) or random draws (`--random`)."""
    return any(SEED_AXIS in row.axes or RANDOM_AXIS in row.axes for row in rows)


def _is_random(row: TrialRow) -> bool:
    return row.axes.get(RANDOM_AXIS, "None") not in _SEARCHED


def _arm_name(axes: Mapping[str, str], labels: Mapping[str, str]) -> str:
    if not axes:
        return "default"
    if len(axes) == 1:
        ((axis, value),) = axes.items()
        if axis.endswith("lambda_order") and number_or_none(value) is not None:
            return f"λ={float(value):g}"
        return labels.get(value, value)
    return ",".join(f"{axis.rsplit('.', 1)[-1]}={labels.get(value, value)}" for axis, value in axes.items())


def group_arms(rows: Sequence[TrialRow], labels: Mapping[str, str] | None = None) -> list[Arm]:
    """The finished, evaluated trials grouped by their axis values without the seed, in grid order."""
    labels = labels or {}
    order = [axis for axis in axis_order(rows) if axis not in (SEED_AXIS, RANDOM_AXIS)]
    arms: dict[tuple[tuple[str, ...], bool], dict[int, list[TrialRow]]] = {}
    for row in rows:  # rows come in grid order: arms keep it
        key = (tuple(row.axes.get(axis, "") for axis in order), _is_random(row))
        by_seed = arms.setdefault(key, {})
        if row.evaluated and row.status == "FINISHED":
            by_seed.setdefault(int(float(row.axes.get(SEED_AXIS, "0"))), []).append(row)
    out = []
    for (values, random), by_seed in arms.items():
        axes = dict(zip(order, values, strict=True))
        name = _arm_name(axes, labels)
        if random:
            name = RANDOM_NAME if not axes else f"{name}, {RANDOM_NAME}"
        out.append(Arm(name, axes, by_seed, random))
    return out


def mean_pm(values: Sequence[float], digits: int = 2) -> str:
    """``28.91 ± 0.12`` (sample std over seeds), the mean alone for one value, ``–`` for none."""
    if not values:
        return MISSING
    mean, std = mean_std(list(values))
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _paths(arm: Arm) -> str:
    counts = Counter(format_path(row) for row in arm.trials)
    return ", ".join(f"{path} ×{count}" for path, count in sorted(counts.items(), key=lambda item: -item[1]))


def _seeds_by_draws(arm: Arm) -> str:
    """A random arm's n: ``3 × 2 draws``; ``3 × 1–2 draws (5 in all)`` when a draw failed (its seed's mean has one)."""
    draws = sorted({len(rows) for rows in arm.by_seed.values()}) or [0]
    if len(draws) == 1:
        return f"{arm.n} × {draws[0]} draws"
    return f"{arm.n} × {draws[0]}–{draws[-1]} draws ({len(arm.trials)} in all)"


def arm_table(arms: Sequence[Arm], rows: Sequence[TrialRow]) -> list[dict[str, str]]:
    """Per arm: n, the paths its seeds derived (×how many), mean ± std over seeds of params, GFLOPs, test PSNR/SSIM, Δ.

    A random arm's seed value is the mean of its draws; the std is over seeds.
    """
    sets = scored_test_sets(rows)
    base = baselines(rows)
    out = []
    for arm in arms:
        n = _seeds_by_draws(arm) if arm.random else str(arm.n)
        cells = {"Arm": arm.name, "n": n, "Paths (seeds)": _paths(arm) or MISSING}

        def over_seeds(pick: Callable[[TrialRow], float | None], digits: int = 2, arm: Arm = arm) -> str:
            return mean_pm(list(arm.values(pick).values()), digits)  # a random arm: its draws' mean per seed

        cells["Params (M)"] = over_seeds(lambda r: r.params_m)
        cells["GFLOPs"] = over_seeds(lambda r: r.gflops)
        for s in sets:
            cells[f"PSNR {s}"] = over_seeds(lambda r, s=s: r.psnr.get(s))
            cells[f"SSIM {s}"] = over_seeds(lambda r, s=s: r.ssim.get(s), digits=4)
            if s in base.bicubic:
                cells[f"Δ vs bicubic {s}"] = over_seeds(lambda r, s=s: r.delta(s))
        out.append(cells)
    return out


def _by_value(arms: Sequence[Arm], suffix: str) -> dict[str, Arm] | None:
    """Searched arms of a sweep over one axis ending in `suffix`, by that axis value; None for any other sweep."""
    arms = [arm for arm in arms if not arm.random]
    if not arms or any(len(arm.axes) != 1 for arm in arms):
        return None
    (axis,) = arms[0].axes
    if not axis.endswith(suffix):
        return None
    return {arm.axes[axis]: arm for arm in arms}


def directions(arms: Sequence[Arm], rows: Sequence[TrialRow]) -> list[Comparison]:
    """The paper's claimed directions for what this sweep varies, each checked seed by seed."""

    def params(row: TrialRow) -> float | None:
        return row.params_m

    out: list[Comparison] = []
    if (lam := _by_value(arms, "lambda_order")) is not None:
        ordered = sorted(lam, key=lambda v: number_or_none(v) if number_or_none(v) is not None else math.inf)
        for low, high in itertools.pairwise(ordered):
            claim = f"{lam[high].name} < {lam[low].name} in params (M)"
            out.append(paired_comparison(claim, lam[high].values(params), lam[low].values(params), "less"))
    if (comb := _by_value(arms, "combiner")) is not None and {"softmax", "sparsestmax"} <= set(comb):
        a, b = comb["sparsestmax"], comb["softmax"]
        out.append(paired_comparison(f"{a.name} ≤ {b.name} in params (M)", a.values(params), b.values(params), "less"))
    if (lev := _by_value(arms, "levels")) is not None and {"trilevel", "bilevel"} <= set(lev):
        a, b = lev["trilevel"], lev["bilevel"]
        out.append(paired_comparison(f"{a.name} ≤ {b.name} in params (M)", a.values(params), b.values(params), "less"))
    sets = scored_test_sets(rows)
    if (src := _by_value(arms, "from_search")) is not None and {"True", "False"} <= set(src) and sets:
        first = sets[0]
        a, b = src["True"], src["False"]

        def psnr(row: TrialRow) -> float | None:
            return row.psnr.get(first)

        out.append(paired_comparison(f"{a.name} ≥ {b.name} in PSNR {first}", a.values(psnr), b.values(psnr), "greater"))
    searched = {tuple(arm.axes.items()): arm for arm in arms if not arm.random}
    for random in (arm for arm in arms if arm.random):
        twin = searched.get(tuple(random.axes.items()))
        if twin is None or not sets:
            continue
        first = sets[0]

        def test_psnr(row: TrialRow, first: str = first) -> float | None:
            return row.psnr.get(first)

        claim = f"{twin.name} ≥ {random.name} in PSNR {first}"
        out.append(paired_comparison(claim, twin.values(test_psnr), random.values(test_psnr), "greater"))
    return out


def comparison_table(comparisons: Sequence[Comparison]) -> list[dict[str, str]]:
    """One row per claimed direction: the per-seed differences, how many seeds agree, the interval, the verdict."""
    out = []
    for c in comparisons:
        diffs = ", ".join(f"s{seed}: {d:+.3f}" for seed, d in zip(c.seeds, c.differences, strict=True))
        interval = MISSING if c.interval is None else f"[{c.interval[0]:+.3f}, {c.interval[1]:+.3f}]"
        out.append(
            {
                "Claim": c.claim,
                "n": str(c.n),
                "Per-seed difference (a − b)": diffs or MISSING,
                "Seeds agreeing": f"{c.agree}/{c.n}",
                "Mean difference": MISSING if c.mean is None else f"{c.mean:+.3f}",
                "95% t-interval": interval,
                "Verdict": c.verdict,
            }
        )
    return out
