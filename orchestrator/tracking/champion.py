"""The registry's ``champion``: the best trial's model under one name, the alias moved as better ones finish.

Why it looks like this: users of the MLflow registry expect one registered model per use (here
``tracking.registered_model``) whose alias ``champion`` names the version to deploy
(``mlflow models serve -m models:/NAME@champion``), not a version per trial. So a trial registers
its model only when it beats the current champion, by the rule the project's reports use for
``best:SWEEP`` (:func:`orchestrator.report.rows.best_row`: highest PSNR on the first evaluation set,
equal at 0.01 dB → fewer GFLOPs). Each version carries its score as tags, so the comparison needs
no run lookups, and after registering, the alias is set to the best of all versions: two trials
that finish at once cannot leave a worse one as champion for long (the next one to finish, or
:func:`settle_champion`, moves it back).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

__all__ = ["CHAMPION_ALIAS", "Score", "register_if_better", "settle_champion", "settle_champion_quietly"]

_log = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"
SCORE_TAG = "trilevel.score"  # the PSNR the version was ranked by
SCORE_KEY_TAG = "trilevel.score_key"  # which metric that was, e.g. psnr/Set5
GFLOPS_TAG = "trilevel.gflops"
TRIAL_TAG = "trilevel.trial"
SWEEP_TAG = "trilevel.sweep"


@dataclass(frozen=True)
class Score:
    """What a trial's model is ranked by: the validation PSNR that chose its checkpoint (dB; before that was
    logged, PSNR on the first test set), then GFLOPs (fewer wins). Test numbers are reported, never chosen on."""

    key: str  # the metric, e.g. "psnr/Set5"
    psnr: float
    gflops: float | None = None
    trial: str = ""
    sweep: str = ""

    def rank(self) -> tuple[float, float]:
        """Sort key, smaller is better: as :func:`orchestrator.report.rows.best_row` ranks trials."""
        return (-round(self.psnr, 2), self.gflops if self.gflops is not None else math.inf)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (e.g. for a queue kept on storage); :meth:`from_dict` reads it back."""
        return {"key": self.key, "psnr": self.psnr, "gflops": self.gflops, "trial": self.trial, "sweep": self.sweep}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Score:
        gflops = data.get("gflops")
        return cls(
            str(data["key"]),
            float(data["psnr"]),
            None if gflops is None else float(gflops),
            str(data.get("trial", "")),
            str(data.get("sweep", "")),
        )

    def tags(self) -> dict[str, str]:
        tags = {
            SCORE_TAG: repr(float(self.psnr)),
            SCORE_KEY_TAG: self.key,
            TRIAL_TAG: self.trial,
            SWEEP_TAG: self.sweep,
        }
        if self.gflops is not None:
            tags[GFLOPS_TAG] = repr(float(self.gflops))
        return tags

    @classmethod
    def of_metrics(cls, metrics: dict[str, Any], trial: str = "", sweep: str = "") -> Score | None:
        """The score of a trial's evaluation metrics (``val_psnr_selected``, else ``psnr/<set>``; ``gflops``).

        None without a PSNR.
        """
        gflops = metrics.get("gflops")
        cost = float(gflops) if _finite(gflops) else None
        if _finite(metrics.get("val_psnr_selected")):  # chosen on validation, as best:SWEEP is
            return cls("val_psnr_selected", float(metrics["val_psnr_selected"]), cost, trial, sweep)
        sets = sorted(
            (key.split("/", 1)[1] for key, value in metrics.items() if key.startswith("psnr/") and _finite(value)),
            key=_natural_key,
        )
        if not sets:
            return None
        return cls(f"psnr/{sets[0]}", float(metrics[f"psnr/{sets[0]}"]), cost, trial, sweep)

    @classmethod
    def of_version(cls, version: ModelVersion) -> Score | None:
        """The score a version was registered with; None for a version registered some other way."""
        tags = version.tags or {}
        try:
            psnr = float(tags[SCORE_TAG])
        except (KeyError, ValueError):
            return None
        try:
            gflops = float(tags[GFLOPS_TAG]) if GFLOPS_TAG in tags else None
        except ValueError:
            gflops = None
        return cls(tags.get(SCORE_KEY_TAG, ""), psnr, gflops, tags.get(TRIAL_TAG, ""), tags.get(SWEEP_TAG, ""))


def _natural_key(text: str) -> tuple:
    """Set5 before Set14: :func:`orchestrator.report.rows.natural_key` (which imports this package, hence a copy)."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", text))


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _champion(client: MlflowClient, name: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def register_if_better(
    client: MlflowClient, name: str, score: Score, *, source: str, run_id: str, model_id: str | None
) -> ModelVersion | None:
    """Register the model at `source` as a version of `name` if `score` beats the champion's; then settle the alias.

    Returns the new version, or None when the champion is at least as good (nothing registered).
    """
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            name, description="The best trilevel-nas model; its alias `champion` names the version to serve."
        )
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    current = _champion(client, name)
    held = Score.of_version(current) if current is not None else None
    if held is not None and held.rank() <= score.rank():
        return None
    # source: the artifact location, not models:/<id>: the SQL registry store resolves the latter through
    # the *global* tracking URI (its own TODO), which is not ours. The version points at the same files.
    version = client.create_model_version(name, source=source, run_id=run_id, tags=score.tags(), model_id=model_id)
    settle_champion(client, name)
    return version


def settle_champion(client: MlflowClient, name: str) -> ModelVersion | None:
    """Point ``champion`` at the best scored version of `name` (None when none is scored)."""
    versions = client.search_model_versions(f"name = '{name}'")
    scored = [(score.rank(), -int(v.version), v) for v in versions if (score := Score.of_version(v)) is not None]
    if not scored:
        return None
    best = min(scored, key=lambda item: item[:2])[2]
    current = _champion(client, name)
    if current is None or str(current.version) != str(best.version):
        client.set_registered_model_alias(name, CHAMPION_ALIAS, best.version)
    return best


def settle_champion_quietly(client: MlflowClient, name: str) -> None:
    """:func:`settle_champion` at a sweep's end, when trials that finished at once may have raced; never raises.

    The alias is then only as late as the next trial's end (or the next sweep's): worth a warning, not a failure.
    """
    try:
        settle_champion(client, name)
    except Exception as err:  # an outage, a registry that refuses: the sweep's results stand
        _log.warning("registered model %s: could not check its alias %s (%s)", name, CHAMPION_ALIAS, err)
