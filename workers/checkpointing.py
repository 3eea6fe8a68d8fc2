"""Stage checkpoints: what they hold, how they are written and read back (safely).

A checkpoint directory holds `state.pt` (model, optimisers, schedulers, the next epoch and the
settings), for search/train stages `genotype.json`, and `_CHECKSUMS.json` (each file's size and
SHA-256, written last): a checkpoint damaged on the storage path after it was registered (a truncated
copy, a bad disk) is refused by `load_state` naming the file, and resuming falls back to the one
before. It is written into a fresh temporary directory and handed to `ray.train.report`, which
copies it to the storage path, so a crash while writing never leaves a half-written "latest"
checkpoint. Reading uses `torch.load(weights_only=True)`: a checkpoint is data, never code.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch

from workers.storage import file_sha256

__all__ = [
    "CHECKSUM_FILE",
    "GENOTYPE_FILE",
    "STATE_FILE",
    "CheckpointError",
    "CheckpointWriteError",
    "is_no_space",
    "load_state",
    "open_checkpoint",
    "read_genotype_json",
    "staged_checkpoint",
    "verify_checkpoint",
]

STATE_FILE = "state.pt"
GENOTYPE_FILE = "genotype.json"
CHECKSUM_FILE = "_CHECKSUMS.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or not plain data."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (staged locally or copied to the storage path).

    Raised in the Train worker; the stage runner turns it into a message naming the storage path.
    `no_space` says whether the disk (or quota) was full, so the message can say what to do.
    """

    def __init__(self, message: str, no_space: bool = False) -> None:
        super().__init__(message)
        self.no_space = no_space

    def __reduce__(self) -> tuple:  # crosses process boundaries inside Ray's WorkerGroupError
        return (type(self), (str(self), self.no_space))


def is_no_space(err: BaseException) -> bool:
    """ENOSPC/EDQUOT, also when pyarrow reports it as a plain IOError message without an errno."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return "No space left on device" in text or "Disk quota exceeded" in text


@contextmanager
def staged_checkpoint(state: dict[str, Any], genotype_json: str | None = None) -> Iterator[str]:
    """Write a checkpoint into a temporary directory and yield its path (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="trilevel-ckpt-") as tmp:
        partial = os.path.join(tmp, STATE_FILE + ".partial")
        torch.save(state, partial)
        os.replace(partial, os.path.join(tmp, STATE_FILE))
        if genotype_json is not None:
            Path(tmp, GENOTYPE_FILE).write_text(genotype_json)
        _write_checksums(Path(tmp))
        yield tmp


def _sha256(path: Path) -> str:
    return file_sha256(pafs.LocalFileSystem(), str(path))


def _write_checksums(directory: Path) -> None:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name != CHECKSUM_FILE)
    listed = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    (directory / CHECKSUM_FILE).write_text(json.dumps({"files": listed}, indent=1))


def verify_checkpoint(directory: str | os.PathLike) -> None:
    """Every file `_CHECKSUMS.json` lists is there with its size and SHA-256; else a CheckpointError naming it.

    Checkpoints written before checksums were recorded have no list and pass (their `state.pt` is
    still only loaded as plain data).
    """
    root = Path(directory)
    listing = root / CHECKSUM_FILE
    if not listing.is_file():
        return
    try:
        files = json.loads(listing.read_text())["files"]
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{listing}: unreadable checksum list ({err})") from None
    for name, expected in files.items():
        path = root / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing from the checkpoint ({CHECKSUM_FILE} lists it)")
        if path.stat().st_size != expected["bytes"]:
            raise CheckpointError(
                f"{path}: {path.stat().st_size:,} bytes, {CHECKSUM_FILE} lists {expected['bytes']:,} (truncated)"
            )
        if _sha256(path) != expected["sha256"]:
            raise CheckpointError(f"{path}: SHA-256 differs from {CHECKSUM_FILE} (damaged after it was written)")


def load_state(directory: str | os.PathLike) -> dict[str, Any]:
    """`state.pt` of a checkpoint directory, checked against its checksums; refuses pickles that are not plain
    tensors/containers."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint state here (expected {STATE_FILE})")
    verify_checkpoint(directory)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path}: refusing to unpickle arbitrary objects from a checkpoint ({err})") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path}: unreadable checkpoint ({err})") from None


@contextmanager
def open_checkpoint(path: str) -> Iterator[Path]:
    """A local directory view of a checkpoint on any storage (local path or URI such as s3://)."""
    local = Path(path)
    if local.is_dir():
        yield local
        return
    from ray.train import Checkpoint

    try:
        checkpoint = Checkpoint(path)
        with checkpoint.as_directory() as directory:
            yield Path(directory)
    except FileNotFoundError as err:
        raise CheckpointError(f"{path}: checkpoint not found ({err})") from None


def read_genotype_json(directory: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(directory) / GENOTYPE_FILE
    return json.loads(path.read_text()) if path.is_file() else None
