"""The stages of a trial, in pipeline order, and the part of the training data each one reads.

One home for the list: the stage settings (`workers.settings`), the experiment schema, the trial plan,
the pre-flight and the MLflow stage tags all derive from it. It imports nothing, so the cheapest
module (a report that must not load torch) can use it.

A stage reads one or both halves of the search split, or the whole set; a *role* names which:
``w`` = χ1 (the first half of the sorted image ids, for the weights), ``a`` = χ2 (the second half,
for the architecture), ``all`` = every image.
"""

from __future__ import annotations

__all__ = ["EVALUATE", "PIPELINE", "ROLES", "SEARCH_SPLIT_ROLES", "STAGES", "STAGE_ROLES"]

# Training stage → the roles of the data it reads; the order of the keys is the pipeline's.
STAGE_ROLES: dict[str, tuple[str, ...]] = {"pretrain": ("w",), "search": ("w", "a"), "train": ("all",)}
STAGES: tuple[str, ...] = tuple(STAGE_ROLES)  # the training stages: each is a stage loop in a Train run
EVALUATE = "evaluate"  # the last stage: the trial process evaluates the trained network (no Train run)
PIPELINE: tuple[str, ...] = (*STAGES, EVALUATE)

# Role → what it reads, as the plan text names it.
ROLES: dict[str, str] = {"w": "χ1 (first half of the sorted image ids)", "a": "χ2 (second half)", "all": "all images"}
SEARCH_SPLIT_ROLES: frozenset[str] = frozenset({"w", "a"})  # roles that need both halves of the split non-empty
