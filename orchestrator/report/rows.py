"""A sweep's trials as :class:`TrialRow`, read back from their MLflow runs, and what they measured.

Each trial's run holds its axis values and derived path as tags and its final metrics
(``params_m``, ``gflops``, ``psnr/<set>``); :func:`collect` turns the sweep's trial runs into one
row per trial, in grid order. **Baselines on every row:** each trial's evaluation also scored
bicubic ×scale (and the teacher it distilled from, if any) on the same images
(``psnr_bicubic/<set>``, ``psnr_teacher/<set>``), so :func:`baselines` has the references every
network is read against, and :func:`best_row` picks the finished trial to use (``best:<sweep>``).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from orchestrator.report.runs import no_runs_error, search_all, sweep_experiment, sweep_filter
from orchestrator.tracking import AXIS_TAG_PREFIX, PATH_TAG, SWEEP_ID_TAG, TRIAL_TAG

if TYPE_CHECKING:
    import mlflow.entities

__all__ = [
    "Baselines",
    "TrialRow",
    "axis_order",
    "baselines",
    "best_row",
    "collect",
    "natural_key",
    "number_or_none",
    "scored_test_sets",
    "sort_rows",
]

_log = logging.getLogger(__name__)

LEVELS_PARAM = "search_space.levels"  # a bilevel search keeps `search_space.fixed_path`: the paper marks it "*"
_BASELINE_TOLERANCE_DB = 0.005  # trials scored on the same images agree on bicubic to float rounding


@dataclass(frozen=True)
class TrialRow:
    """One trial of a sweep as tracked in MLflow; metrics are ``None`` (or absent) until it has them."""

    trial: str
    axes: dict[str, str]
    path: list[int] | None
    params_m: float | None
    gflops: float | None
    psnr: dict[str, float]
    ssim: dict[str, float]
    latency_s: float | None
    status: str
    run_id: str
    path_fixed: bool = False
    start_time: int | None = None  # ms since the epoch
    psnr_bicubic: dict[str, float] = field(default_factory=dict)  # bicubic ×scale on the same images
    ssim_bicubic: dict[str, float] = field(default_factory=dict)
    psnr_teacher: dict[str, float] = field(default_factory=dict)  # the teacher it distilled from, if any
    val_selected: float | None = None  # validation PSNR of the chosen checkpoint: what picks the best trial

    @property
    def evaluated(self) -> bool:
        """Whether the trial has its final PSNR (the contract: unfinished trials have no ``psnr/*``)."""
        return bool(self.psnr)

    def delta(self, set_name: str) -> float | None:
        """PSNR gain over bicubic on `set_name` (dB; negative: worse than plain upscaling), None if unknown."""
        ours, bicubic = self.psnr.get(set_name), self.psnr_bicubic.get(set_name)
        return None if ours is None or bicubic is None else ours - bicubic


@dataclass(frozen=True)
class Baselines:
    """PSNR per test set of the references every network is read against."""

    bicubic: dict[str, float] = field(default_factory=dict)
    teacher: dict[str, float] = field(default_factory=dict)


def natural_key(text: str) -> tuple:
    """Sort key: digit runs compare as numbers ("Set5" before "Set14")."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", text))


def number_or_none(value: str) -> float | None:
    """`value` as a number, None when it is not one (or NaN)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _value_key(value: str) -> tuple:
    """Axis values in their natural order: numbers numerically (before words), words naturally."""
    number = number_or_none(value)
    return (0, number, ()) if number is not None else (1, 0.0, natural_key(value))


def _parse_path(tag: str | None) -> list[int] | None:
    if not tag:
        return None
    try:
        path = json.loads(tag)
    except ValueError:
        return None
    if isinstance(path, list) and all(isinstance(p, int) for p in path):
        return path
    return None


def _metric(metrics: Mapping[str, float], key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None or math.isnan(value) else float(value)


def _per_set(metrics: Mapping[str, float], prefix: str) -> dict[str, float]:
    found = {key[len(prefix) :]: value for key, value in metrics.items() if key.startswith(prefix)}
    return {name: float(found[name]) for name in sorted(found, key=natural_key) if not math.isnan(found[name])}


def _row(run: mlflow.entities.Run) -> TrialRow:
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    axes = {key[len(AXIS_TAG_PREFIX) :]: value for key, value in tags.items() if key.startswith(AXIS_TAG_PREFIX)}
    raw_path = tags.get(PATH_TAG)
    return TrialRow(
        trial=tags.get(TRIAL_TAG, run.info.run_name or run.info.run_id),
        axes=axes,
        path=_parse_path(raw_path),
        params_m=_metric(metrics, "params_m"),
        gflops=_metric(metrics, "gflops"),
        psnr=_per_set(metrics, "psnr/"),
        ssim=_per_set(metrics, "ssim/"),
        latency_s=_metric(metrics, "latency_s"),
        status=run.info.status,
        run_id=run.info.run_id,
        path_fixed=params.get(LEVELS_PARAM, axes.get(LEVELS_PARAM)) == "bilevel",
        start_time=run.info.start_time,
        psnr_bicubic=_per_set(metrics, "psnr_bicubic/"),
        ssim_bicubic=_per_set(metrics, "ssim_bicubic/"),
        psnr_teacher=_per_set(metrics, "psnr_teacher/"),
        val_selected=_metric(metrics, "val_psnr_selected"),
    )


def axis_order(rows: Sequence[TrialRow]) -> list[str]:
    """The sweep's axes in grid order, recovered from the trial ids (``combiner=softmax,lambda_order=0.1``)."""
    axes = sorted({axis for row in rows for axis in row.axes})

    def position(axis: str) -> tuple[int, str]:
        short = axis.rsplit(".", 1)[-1] + "="
        for row in rows:
            parts = [part.split("=", 1)[0] + "=" for part in row.trial.split(",")]
            if short in parts:
                return parts.index(short), axis
        return len(axes), axis

    return sorted(axes, key=position)


def sort_rows(rows: Iterable[TrialRow]) -> list[TrialRow]:
    """Trials in grid order: by each axis value (numbers numerically), then by trial id."""
    rows = list(rows)
    axes = axis_order(rows)

    def key(row: TrialRow) -> tuple:
        missing = (2, 0.0, ())
        return (*(_value_key(row.axes[a]) if a in row.axes else missing for a in axes), natural_key(row.trial))

    return sorted(rows, key=key)


def collect(tracking_uri: str, mlflow_experiment: str, sweep: str, sweep_id: str | None = None) -> list[TrialRow]:
    """The sweep's trials (one row per trial id, the oldest run if a trial was tracked twice), in grid order.

    `sweep_id` (from the sweep's storage) keeps out sweeps of the same name on other storage; without
    it, trial runs of several such sweeps are refused, naming their ids, rather than mixed.
    Raises ValueError when the database, the experiment or the sweep's trial runs do not exist.
    """
    client, experiment_id = sweep_experiment(tracking_uri, mlflow_experiment, sweep)
    runs = search_all(client, experiment_id, sweep_filter(sweep, "trial", sweep_id))
    if not runs:
        raise no_runs_error(sweep, mlflow_experiment, tracking_uri)
    ids = sorted({run.data.tags.get(SWEEP_ID_TAG, "") for run in runs} - {""})
    if len(ids) > 1:
        raise ValueError(
            f"{len(ids)} different sweeps named {sweep!r} are tracked in experiment {mlflow_experiment!r} (sweep ids "
            f"{', '.join(ids)}, each in <storage>/{sweep}/sweep.json): name the storage of the one you mean "
            "(`trilevel report/status --storage`), or pick it by run id"
        )
    rows: dict[str, TrialRow] = {}
    for run in runs:
        row = _row(run)
        if row.trial in rows:
            _log.warning("trial %s of sweep %s is tracked twice; reporting its oldest run", row.trial, sweep)
            continue
        rows[row.trial] = row
    return sort_rows(rows.values())


def scored_test_sets(rows: Iterable[TrialRow]) -> list[str]:
    """Every test set any trial was scored on, in natural order (Set5, Set14, …); validation sets are never reported."""
    return sorted({name for row in rows for name in row.psnr}, key=natural_key)


def _agreed(rows: Sequence[TrialRow], attribute: str, what: str) -> dict[str, float]:
    """Per set, the first trial's value of a baseline; a warning when trials measured different ones."""
    found: dict[str, float] = {}
    for row in rows:
        for name, value in getattr(row, attribute).items():
            first = found.setdefault(name, value)
            if abs(first - value) > _BASELINE_TOLERANCE_DB:
                _log.warning(
                    "trials disagree on %s PSNR of %s (%.3f vs %.3f dB): they were scored on different images; "
                    "the report shows the first",
                    what,
                    name,
                    first,
                    value,
                )
    return {name: found[name] for name in sorted(found, key=natural_key)}


def baselines(rows: Sequence[TrialRow]) -> Baselines:
    """Bicubic (and teacher) PSNR per test set, as the trials' evaluations measured them."""
    return Baselines(_agreed(rows, "psnr_bicubic", "bicubic"), _agreed(rows, "psnr_teacher", "teacher"))


def best_row(rows: Iterable[TrialRow]) -> TrialRow | None:
    """The finished trial to use: highest validation PSNR of its chosen checkpoint, then fewer GFLOPs.

    Chosen on validation, like each trial's checkpoint: the test numbers the report shows choose
    nothing. Trials tracked before validation PSNR was logged (no ``val_psnr_selected``) fall back to
    the first test set every finished trial was scored on. PSNRs equal at the table's precision
    (0.01 dB) are a tie, as a reader of the table sees them. None when no trial has finished with a
    PSNR yet; ValueError, naming the sets, when the fallback finds no shared test set (a sweep over
    ``data.test``): such trials cannot be compared, and leaving some out would pick among the rest.
    """
    done = [row for row in rows if row.evaluated and row.status == "FINISHED"]
    if not done:
        return None
    if all(row.val_selected is not None for row in done):

        def selection(row: TrialRow) -> float:
            assert row.val_selected is not None
            return row.val_selected
    else:
        shared = [name for name in scored_test_sets(done) if all(name in row.psnr for row in done)]
        if not shared:
            scored = Counter(", ".join(row.psnr) for row in done)
            raise ValueError(
                f"its {len(done)} finished trials cannot be compared: some have no validation PSNR "
                "(val_psnr_selected: tracked before it was logged) and they share no test set "
                f"({'; '.join(f'{n} scored on {sets}' for sets, n in scored.items())})"
            )
        first = shared[0]

        def selection(row: TrialRow) -> float:
            return row.psnr[first]

    def key(row: TrialRow) -> tuple[float, float]:
        return (-round(selection(row), 2), row.gflops if row.gflops is not None else math.inf)

    return min(done, key=key)
