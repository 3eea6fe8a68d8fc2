"""The Python API: load an experiment, run its sweep, read its trials, as one would with Ray Tune.

```python
import orchestrator as trilevel

experiment = trilevel.load_experiment("table8", scale="tiny", overrides=["stages.search.epochs=1"])
result = trilevel.run(experiment)  # a local Ray; address="auto" or "ray://head:10001" for a cluster
result.trials  # pandas DataFrame: one row per trial
result.grid  # Tune's ResultGrid: every epoch of every stage of every trial
again = trilevel.open_results(experiment.name, storage=experiment.storage)  # later, from the storage alone
```

The DataFrame is built from what a sweep leaves on its storage path (Tune's results, each stage's done
marker) and the trial runs in MLflow (their ids; left empty when the tracking server cannot be read).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.experiment import Experiment, ExperimentError
from orchestrator.experiment import load_experiment as _load

if TYPE_CHECKING:
    import pandas as pd
    from ray.tune import ResultGrid

__all__ = ["Experiment", "ExperimentError", "SweepResult", "load_experiment", "open_results", "run"]

_log = logging.getLogger(__name__)


def load_experiment(
    name_or_path: str | Path, scale: str = "tiny", overrides: Sequence[str] = (), **fields: Any
) -> Experiment:
    """A preset (`table8`, `psnr-b`, ...) at `scale`, or a YAML file, with `FIELD=VALUE` overrides.

    Keyword fields set top-level or dotted fields: `load_experiment("table8", storage="runs",
    **{"tracking.uri": "sqlite:///mlflow.db"})`. Errors are `ExperimentError`s naming field and value.
    """
    return _load(name_or_path, scale, overrides, **fields)


@dataclass(frozen=True)
class SweepResult:
    """A sweep's results: its trials as a DataFrame and Tune's `ResultGrid` (per-epoch curves per trial)."""

    name: str
    storage: str
    experiment: Experiment
    grid: ResultGrid
    trials: pd.DataFrame

    def curves(self, trial_id: str) -> pd.DataFrame:
        """Every epoch of every stage of one trial, as Tune recorded them: one row per (stage, epoch).

        A trial restarted after a kill reports again what it redoes (an epoch resumed from the checkpoint
        before it, or its evaluation when the driver died before Tune saved the trial as finished): the
        last report of each (stage, epoch) is the one kept, in the order the trial ran them.
        """
        from orchestrator.sweep import trial_id_of

        for result in self.grid:
            if trial_id_of(result.config or {}) == trial_id:
                frame = result.metrics_dataframe
                if {"stage", "epoch"} <= set(frame.columns):
                    frame = frame.drop_duplicates(subset=["stage", "epoch"], keep="last").reset_index(drop=True)
                return frame
        raise KeyError(f"no trial {trial_id!r} in sweep {self.name}; trials: {', '.join(self.trials.trial_id)}")

    def best(self, metric: str = "objective", mode: str = "max") -> pd.Series:
        """The finished trial with the best `metric` of its final report (default: the search objective)."""
        done = self.trials[self.trials.status == "TERMINATED"].dropna(subset=[metric])
        if done.empty:
            raise ValueError(f"sweep {self.name}: no finished trial has {metric}")
        return done.loc[done[metric].idxmax() if mode == "max" else done[metric].idxmin()]


def run(
    experiment: Experiment | str | Path,
    *,
    address: str | None = None,
    resume: bool = False,
    scale: str = "tiny",
    overrides: Sequence[str] = (),
) -> SweepResult:
    """Run (or resume) the sweep of `experiment` and return its results.

    `address`: None starts a local Ray for the call (an already initialised Ray is used as it is);
    `auto`, a head's address or `ray://host:10001` runs it on that cluster. A sweep of the same name
    and experiment under the storage path is resumed, as `trilevel sweep` does.
    """
    from orchestrator.cluster import ray_connection
    from orchestrator.sweep import run_sweep

    if not isinstance(experiment, Experiment):
        experiment = _load(experiment, scale, overrides)
    with ray_connection(address):
        outcome = run_sweep(experiment, resume=resume)
    return open_results(outcome.name, outcome.storage, outcome.results)


def open_results(name: str, storage: str = "./trilevel-runs", grid: ResultGrid | None = None) -> SweepResult:
    """The results of sweep `name` under `storage` (finished or not), read from the storage path and MLflow."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    from orchestrator.sweep import absolute_storage, load_sweep_experiment
    from workers.storage import join_storage

    storage = absolute_storage(storage)
    experiment = load_sweep_experiment(name, storage)
    if grid is None:
        grid = ResultGrid(ExperimentAnalysis(join_storage(storage, name)))
    return SweepResult(name, storage, experiment, grid, trials_frame(experiment, storage, grid))


def trials_frame(experiment: Experiment, storage: str, grid: ResultGrid) -> pd.DataFrame:
    """One row per trial: id, status, axes, seed, path, params, GFLOPs, PSNR/SSIM per set, run id, checkpoints."""
    import pandas as pd

    from orchestrator.plan import stage_outputs
    from orchestrator.sweep import _status, trial_id_of
    from orchestrator.trial import AXES
    from workers.stage_outputs import read_stage_result

    run_ids = _trial_run_ids(experiment)
    rows = []
    for result in grid:
        config, last = result.config or {}, result.metrics or {}
        trial = trial_id_of(config)
        row: dict[str, Any] = {"trial_id": trial, "status": "ERROR" if result.error else _status(last)}
        row |= {f"axis.{axis}": value for axis, value in config.get(AXES, {}).items()}
        row["seed"] = config.get(AXES, {}).get("seed", experiment.seed)
        trained = read_stage_result(stage_outputs(storage, experiment.name, trial), "train")
        searched = read_stage_result(stage_outputs(storage, experiment.name, trial), "search")
        genotype = (trained or searched).genotype if (trained or searched) else None
        row["path"] = str(genotype["path"]) if genotype and "path" in genotype else None
        for key in ("params_m", "gflops", "derived_gflops", "latency_s", "val_psnr", "objective", "epochs_done"):
            row[key] = last.get(key)
        row |= {k: v for k, v in last.items() if k.split("/", 1)[0] in _PER_SET}
        row["run_id"] = run_ids.get(trial)
        row["checkpoint"] = (trained.best_checkpoint or trained.checkpoint) if trained else None
        row["search_checkpoint"] = searched.checkpoint if searched else None
        row["tune_path"] = result.path
        row["error"] = str(result.error).strip().splitlines()[-1][:500] if result.error else None
        rows.append(row)
    return pd.DataFrame(rows)


_PER_SET = ("psnr", "ssim", "psnr_bicubic", "ssim_bicubic", "psnr_teacher", "ssim_teacher")


def _trial_run_ids(experiment: Experiment) -> dict[str, str]:
    """Trial id → its MLflow run id; empty when the tracking server or the sweep's runs cannot be read."""
    from orchestrator.report.rows import collect
    from orchestrator.sweep_lease import read_sweep_id

    try:
        identity = read_sweep_id(experiment.storage, experiment.name)  # not a same-name sweep on other storage
        return {
            row.trial: row.run_id
            for row in collect(experiment.tracking.uri, experiment.tracking.experiment, experiment.name, identity)
        }
    except Exception as err:  # the DataFrame is still useful without run ids
        _log.warning("no MLflow run ids for sweep %s: %s", experiment.name, err)
        return {}
