"""The stored stages: `<storage>/_stages/<stage>/<key>/_STAGE.json`, a reference to checkpoints, checked on reuse.

A stage that finished is *published*: its result (the checkpoint the next stage starts from, the
best-validated one, metrics, genotype, per-epoch history), the inputs its key hashes, who computed
it, and the size and SHA-256 of every file of the checkpoints it names. The checkpoints stay where
the computing run wrote them (a reference, not a copy). A *lookup* returns the stored stage only if
its recorded inputs equal the ones asked for (a hash is compared, then the inputs themselves) and
every checksummed file is there with the same size and content; otherwise the stage is computed
again, and the new result replaces the entry.
"""

from __future__ import annotations

import logging
import posixpath
import time
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from workers.markers import read_marker, write_marker
from workers.stage_outputs import StageResult
from workers.stage_store.keys import StageKey, canonical
from workers.storage import file_sha256, join_storage, resolve_uri

__all__ = ["ENTRY_FILE", "STORE_DIR", "StoreError", "StoredStage", "checksums", "entry_dir", "lookup", "publish"]

STORE_DIR = "_stages"
ENTRY_FILE = "_STAGE.json"
_log = logging.getLogger(__name__)


class StoreError(RuntimeError):
    """A stored stage cannot be used: the message says which entry and why."""


@dataclass(frozen=True)
class StoredStage:
    """A stored stage that passed its checks: what it hands on and who computed it."""

    key: str
    result: StageResult
    computed_by: dict[str, Any]  # sweep, trial, checkpoints (the computing run's directory), at
    entry: str


def entry_dir(storage: str, stage: str, key: str) -> str:
    """Where the stage with this key is stored (and claimed)."""
    return join_storage(storage, STORE_DIR, stage, key)


def _files(path: str) -> list[tuple[str, pafs.FileInfo]]:
    fs, root = resolve_uri(path)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    return sorted((posixpath.relpath(i.path, root), i) for i in infos if i.type == pafs.FileType.File)


def checksums(result: StageResult) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file of the checkpoints the result names, by full path."""
    out: dict[str, dict[str, Any]] = {}
    for checkpoint in {result.checkpoint, result.best_checkpoint} - {None}:
        fs, _ = resolve_uri(checkpoint)
        files = _files(checkpoint)
        if not files:
            raise StoreError(f"stage {result.stage}: its checkpoint {checkpoint} holds no files")
        for relative, info in files:
            out[join_storage(checkpoint, relative)] = {"size": info.size, "sha256": file_sha256(fs, info.path)}
    return out


def publish(storage: str, key: StageKey, result: StageResult, computed_by: dict[str, Any]) -> str:
    """Store the finished stage under its key (replacing what was there); returns the entry's directory."""
    entry = entry_dir(storage, key.stage, key.key)
    body = {
        "key": key.key,
        "stage": key.stage,
        "inputs": canonical(key.inputs),
        "result": result.to_dict() | {"origin": None},
        "files": checksums(result),
        "computed_by": computed_by | {"at": time.time()},
    }
    write_marker(entry, body, ENTRY_FILE)
    return entry


def _why_not(body: dict[str, Any], key: StageKey) -> str | None:
    """Why a stored entry cannot stand for `key` (None: it can)."""
    if body.get("key") != key.key or body.get("stage") != key.stage:
        return f"it is stored as {body.get('stage')}/{body.get('key')}"
    if canonical(body.get("inputs") or {}) != canonical(key.inputs):
        stored = body.get("inputs") or {}
        asked = canonical(key.inputs)
        differ = sorted(k for k in stored.keys() | asked.keys() if stored.get(k) != asked.get(k))
        return f"its recorded inputs differ ({', '.join(differ)})"
    for path, expected in (body.get("files") or {}).items():
        fs, where = resolve_uri(path)
        info = fs.get_file_info(where)
        if info.type != pafs.FileType.File:
            return f"{path} is missing"
        if info.size != expected["size"] or file_sha256(fs, where) != expected["sha256"]:
            return f"{path} fails its checksum"
    if not body.get("files"):
        return "it lists no checkpoint files"
    return None


def lookup(storage: str, key: StageKey) -> StoredStage | None:
    """The stored stage for `key` if it is there and passes every check; otherwise None (reason logged)."""
    entry = entry_dir(storage, key.stage, key.key)
    try:
        body = read_marker(entry, ENTRY_FILE)
    except ValueError as err:  # a torn or edited entry file
        _log.warning("stored stage %s is unreadable (%s): computing it again", entry, err)
        return None
    if body is None:
        return None
    why = _why_not(body, key)
    if why is not None:
        _log.warning("stored stage %s cannot be reused: %s; computing it again", entry, why)
        return None
    data = body["result"]
    result = StageResult(
        stage=data["stage"],
        checkpoint=data["checkpoint"],
        best_checkpoint=data.get("best_checkpoint"),
        metrics=dict(data.get("metrics") or {}),
        genotype=data.get("genotype"),
        history=list(data.get("history") or []),
    )
    return StoredStage(key.key, result, dict(body.get("computed_by") or {}), entry)
