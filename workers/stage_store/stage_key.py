"""The key of a stage run, as a value: its own module so that the settings can name its type
without importing what computes keys from settings (`workers.stage_store.keys`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["StageKey"]


@dataclass(frozen=True)
class StageKey:
    """A stage run's key and the inputs it hashes (kept with a stored stage to compare on reuse)."""

    stage: str
    key: str
    inputs: dict[str, Any]
