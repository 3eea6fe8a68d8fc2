"""What a finished stage leaves on the storage path, and how the next stage (or trial) finds it.

Each finished stage writes `<outputs>/<stage>/_STAGE_DONE.json` (rank 0, atomically, after its
final checkpoint is on storage): the checkpoint the next stage starts from, the best-validated one,
the final metrics and the derived genotype. Running the stage again finds the marker and skips the
work, whatever Tune or Train recorded; the trial reads it to evaluate and to log artifacts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from workers.markers import read_marker, write_marker

__all__ = ["DONE_MARKER", "StageResult", "read_stage_result", "write_stage_result"]

DONE_MARKER = "_STAGE_DONE.json"


@dataclass(frozen=True)
class StageResult:
    """What a finished stage hands on: checkpoint paths, last metrics, derived genotype (JSON dict).

    `history` holds every epoch's numeric metrics, so what a crash kept from live tracking can be
    filled in afterwards. `origin` is None for a stage this trial computed; for a stage reused from
    the stage store (`workers.stage_store`) it says whence: the key, the store entry and who computed it.
    """

    stage: str
    checkpoint: str
    best_checkpoint: str | None
    metrics: dict[str, Any]
    genotype: dict[str, Any] | None
    history: list[dict[str, float]] = field(default_factory=list)
    origin: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_stage_result(outputs: str, stage: str) -> StageResult | None:
    """The recorded result of `stage` under `outputs`, or None while it has not finished."""
    data = read_marker(outputs, stage, DONE_MARKER)
    if data is None:
        return None
    known = {k: data.get(k) for k in ("stage", "checkpoint", "best_checkpoint", "metrics", "genotype")}
    return StageResult(**known, history=data.get("history") or [], origin=data.get("origin"))


def write_stage_result(outputs: str, result: StageResult) -> None:
    write_marker(outputs, result.to_dict(), result.stage, DONE_MARKER)
