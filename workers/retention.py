"""Checkpoint retention: keep a run's last K checkpoints and every one something still points to.

Why: a paper-scale supernet checkpoint (model and two Adam states) is ~341 MB and a stage saves one
per epoch, ~68 GB per trial when all are kept. Resume needs only the newest; what else must stay is
what a finished stage's result or the train stage's best names (the next stage's start, `best:` models,
the report). The rule is the same for a run in the trial's process and a Ray Train run (rank 0 prunes
after each checkpoint it reported): Train's own `CheckpointConfig(num_to_keep)` cannot spare the
checkpoints stage results point to, so Train keeps its list and the deleted ones read as missing
(resume takes the newest that loads, which retention always keeps).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence

import pyarrow.fs as pafs

from workers.storage import resolve_uri

__all__ = ["delete_checkpoints", "to_delete"]

_log = logging.getLogger(__name__)


def to_delete(saved: Sequence[str], keep_last: int | None, protected: Collection[str]) -> list[str]:
    """The checkpoints of `saved` (oldest first) older than the last `keep_last`, except `protected` ones.

    `keep_last=None` keeps everything (the default: every epoch's checkpoint).
    """
    if keep_last is None:
        return []
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 (the newest checkpoint is what a resume needs), got {keep_last}")
    keep = set(saved[-keep_last:]) | set(protected)
    return [path for path in saved[:-keep_last] if path not in keep]


def delete_checkpoints(paths: Sequence[str]) -> None:
    """Delete checkpoint directories (local or storage URIs); one already gone is fine."""
    for path in paths:
        fs, target = resolve_uri(path)
        try:
            if fs.get_file_info(target).type != pafs.FileType.NotFound:
                fs.delete_dir(target)
        except OSError as err:  # retention only saves space: never fail a stage over it
            _log.warning("could not delete the old checkpoint %s: %s", path, err)
