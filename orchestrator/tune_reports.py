"""Every epoch of every stage as a Ray Tune result, so `ResultGrid`, Tune's callbacks and schedulers see the curves.

A stage reports one dict per epoch (`workers.stages`); `EpochResults` turns it into the trial's Tune
result: its numbers, the stage and epoch, and two keys a scheduler and a search algorithm can rely on
in every result of every trial (Tune checks that each result carries their metrics):

- `epochs_done`: epochs finished over the whole pipeline (pretrain, then search, then train), the
  time axis of ASHA and median stopping (`tune.scheduler.grace_period` is in these epochs);
- `val_psnr` (the latest validation PSNR, carried over between stages) and `objective`: that PSNR,
  less 10 dB per 100% of derived GFLOPs over `tune.gflops_budget` once the architecture is known.
  A network that diverged (NaN output, NaN PSNR) scores 0 dB: outputs are clamped to [0, 1], so
  0 dB is the worst PSNR any output can have, and a NaN would make schedulers skip the trial.

A run in the trial's process calls `tune.report` itself; a TorchTrainer run passes `TrainEpochReports`,
Ray Train V2's way of handing its workers' reports to the Tune trial that fit it
(`ray.tune.integration.ray_train.TuneReportCallback`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ray.tune.integration.ray_train import TuneReportCallback

from orchestrator.plan import TrialPlan
from workers.stage_list import STAGES

__all__ = ["METRIC_KEYS", "OVER_BUDGET_DB", "EpochResults", "TrainEpochReports", "objective", "stage_offsets"]

OVER_BUDGET_DB = 10.0  # objective penalty per 100% of GFLOPs over the budget
_DROPPED = ("genotype",)  # a JSON document per epoch: kept in MLflow and the stage's marker, not in every Tune row
METRIC_KEYS = ("epochs_done", "val_psnr", "objective")


def stage_offsets(plan: TrialPlan) -> dict[str, int]:
    """Epochs of the stages before each stage of the trial's pipeline (its finetune phase included)."""
    epochs = {s.stage: s.total_epochs for run in plan.runs for s in run.settings.stages}
    offsets, done = {}, 0
    for stage in STAGES:
        offsets[stage] = done
        done += epochs.get(stage, 0)
    offsets["total"] = done
    return offsets


def objective(psnr: float | None, gflops: float | None, budget: float | None) -> float | None:
    """The search's (and by default the scheduler's) score: the PSNR, less `OVER_BUDGET_DB` per 100% over budget."""
    if psnr is None:
        return None
    if not math.isfinite(psnr):
        psnr = 0.0  # diverged: the worst PSNR of any clamped output
    if budget is None or gflops is None:
        return psnr
    return psnr - OVER_BUDGET_DB * max(0.0, gflops / budget - 1.0)


class EpochResults:
    """Stage reports → Tune results of one trial (or one Train run of it), keeping what later reports lack."""

    def __init__(self, offsets: Mapping[str, int], gflops_budget: float | None, trial_id: str) -> None:
        self.offsets = dict(offsets)
        self.budget = gflops_budget
        self.trial_id = trial_id
        self.carried: dict[str, float] = {}

    def __call__(self, metrics: Mapping[str, Any], checkpoint: str | None) -> dict[str, Any]:
        stage = metrics.get("stage")
        result: dict[str, Any] = {
            k: v for k, v in metrics.items() if k not in _DROPPED and isinstance(v, int | float | str | bool)
        }
        if stage in STAGES and "epoch" in metrics:
            result["epochs_done"] = self.offsets.get(stage, 0) + int(metrics["epoch"]) + 1
            result["stage_index"] = STAGES.index(stage)
        if "loss" not in result and "loss_w" in result:
            result["loss"] = result["loss_w"]  # the search's weight loss: one loss column for every stage
        for key in ("val_psnr", "derived_gflops"):
            if isinstance(result.get(key), int | float) and not isinstance(result.get(key), bool):
                self.carried[key] = float(result[key])
            elif key in self.carried:
                result[key] = self.carried[key]
        score = objective(self.carried.get("val_psnr"), self.carried.get("derived_gflops"), self.budget)
        if score is not None:
            result["objective"] = score
        if checkpoint:
            result["checkpoint_path"] = checkpoint
        return result | {"trial": self.trial_id}

    def final(self, evaluated: Mapping[str, Any]) -> dict[str, Any]:
        """The trial's last result: its evaluation (test `psnr/<set>`, `gflops`, ...), scored on validation.

        Test numbers never choose anything: `val_psnr` and the objective are the validation PSNR that
        chose the trained checkpoint (`val_psnr_selected`), else the last one reported.
        """
        result = dict(evaluated) | {"trial": self.trial_id}
        selected = evaluated.get("val_psnr_selected", self.carried.get("val_psnr"))
        if selected is not None:
            result["val_psnr"] = float(selected)
        if isinstance(evaluated.get("gflops"), int | float):
            result["derived_gflops"] = float(evaluated["gflops"])
        score = objective(result.get("val_psnr"), result.get("derived_gflops"), self.budget)
        if score is not None:
            result["objective"] = score
        return result


class TrainEpochReports(TuneReportCallback):
    """Train callback (in the Train controller): each report of rank 0, as `EpochResults` makes it, to the trial.

    Ray's own `TuneReportCallback` sends the metrics unchanged through the Tune session's queue; this
    one sends the same Tune result an in-process run reports, so the two kinds of run look alike.
    """

    def __init__(self, results: EpochResults) -> None:
        super().__init__()
        self.results = results

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        path = None if checkpoint is None else checkpoint.path
        self._training_actor_item_queue.put(self.results(dict(metrics[0]) if metrics else {}, path))
