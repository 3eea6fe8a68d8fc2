"""A sweep run at several seeds (`--seeds N`) read as arms: each arm's n, mean ± std, and the paper's directions.

An arm is a grid point without its seed (``combiner=softmax``); its trials at seeds 0..N-1 are
replicates. :func:`arm_table` gives per arm n, mean ± std of test PSNR/SSIM, params and GFLOPs and how
many seeds derived each path; :func:`directions` checks, seed by seed, the directions the paper's
tables claim for what the sweep varies (:mod:`orchestrator.report.statistics`):

* λ_order ↑ → fewer params (Table 8), each larger λ against the next smaller one;
* sparsestmax ≤ softmax in params (Table 7);
* trilevel ≤ bilevel in params (Table 9);
* from search ≥ from scratch in PSNR (Fig. 1), on the first test set.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from orchestrator.experiment import SEED_AXIS
from orchestrator.report.rows import TrialRow, axis_order, baselines, number_or_none, validation_sets
from orchestrator.report.statistics import Comparison, mean_std, paired_comparison
from orchestrator.report.table import MISSING, format_path

__all__ = ["Arm", "arm_table", "comparison_table", "directions", "group_arms", "has_seeds", "mean_pm"]


@dataclass(frozen=True)
class Arm:
    """One grid point over its seeds: the trials that finished with test numbers, by seed."""

    name: str  # how the report names it (a label, ``λ=0.1``, or the axis values)
    axes: dict[str, str]  # axis → value, the seed left out
    by_seed: dict[int, TrialRow]

    @property
    def n(self) -> int:
        return len(self.by_seed)

    def values(self, pick: Callable[[TrialRow], float | None]) -> dict[int, float]:
        """Seed → the picked number, for the seeds that have it."""
        picked = {seed: pick(row) for seed, row in self.by_seed.items()}
        return {seed: value for seed, value in picked.items() if value is not None}


def has_seeds(rows: Sequence[TrialRow]) -> bool:
    """Whether the sweep was run at several seeds (a `seed` axis)."""
    return any(SEED_AXIS in row.axes for row in rows)


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
    order = [axis for axis in axis_order(rows) if axis != SEED_AXIS]
    arms: dict[tuple[str, ...], dict[int, TrialRow]] = {}
    for row in rows:  # rows come in grid order: arms keep it
        key = tuple(row.axes.get(axis, "") for axis in order)
        by_seed = arms.setdefault(key, {})
        if row.evaluated and row.status == "FINISHED":
            by_seed[int(float(row.axes.get(SEED_AXIS, "0")))] = row
    return [
        Arm(_arm_name(dict(zip(order, key, strict=True)), labels), dict(zip(order, key, strict=True)), by_seed)
        for key, by_seed in arms.items()
    ]


def mean_pm(values: Sequence[float], digits: int = 2) -> str:
    """``28.91 ± 0.12`` (sample std over seeds), the mean alone for one value, ``–`` for none."""
    if not values:
        return MISSING
    mean, std = mean_std(list(values))
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _paths(arm: Arm) -> str:
    counts = Counter(format_path(row) for row in arm.by_seed.values())
    return ", ".join(f"{path} ×{count}" for path, count in sorted(counts.items(), key=lambda item: -item[1]))


def arm_table(arms: Sequence[Arm], rows: Sequence[TrialRow]) -> list[dict[str, str]]:
    """Per arm: n, the paths its seeds derived (×how many), mean ± std of params, GFLOPs, test PSNR/SSIM, Δ."""
    sets = validation_sets(rows)
    base = baselines(rows)
    out = []
    for arm in arms:
        trials = list(arm.by_seed.values())
        cells = {"Arm": arm.name, "n": str(arm.n), "Paths (seeds)": _paths(arm) or MISSING}
        cells["Params (M)"] = mean_pm([r.params_m for r in trials if r.params_m is not None])
        cells["GFLOPs"] = mean_pm([r.gflops for r in trials if r.gflops is not None])
        for s in sets:
            cells[f"PSNR {s}"] = mean_pm([r.psnr[s] for r in trials if s in r.psnr])
            cells[f"SSIM {s}"] = mean_pm([r.ssim[s] for r in trials if s in r.ssim], digits=4)
            if s in base.bicubic:
                deltas = [d for r in trials if (d := r.delta(s)) is not None]
                cells[f"Δ vs bicubic {s}"] = mean_pm(deltas) if deltas else MISSING
        out.append(cells)
    return out


def _by_value(arms: Sequence[Arm], suffix: str) -> dict[str, Arm] | None:
    """Arms of a sweep over one axis ending in `suffix`, by that axis value; None for any other sweep."""
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
    sets = validation_sets(rows)
    if (src := _by_value(arms, "from_search")) is not None and {"True", "False"} <= set(src) and sets:
        first = sets[0]
        a, b = src["True"], src["False"]

        def psnr(row: TrialRow) -> float | None:
            return row.psnr.get(first)

        out.append(paired_comparison(f"{a.name} ≥ {b.name} in PSNR {first}", a.values(psnr), b.values(psnr), "greater"))
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
