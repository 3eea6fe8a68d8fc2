"""Small JSON "done" markers on the storage path (local or any pyarrow filesystem URI).

A finished unit of work (a stage, a trial) writes its outputs as a marker, last and atomically
(temp name, then rename); re-running the unit finds the marker and returns it instead of working
again. This is what makes retries and resumes idempotent whatever Tune or Train recorded.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import pyarrow.fs as pafs

from workers.storage import resolve_uri

__all__ = ["read_marker", "remove_marker", "write_marker"]


def read_marker(storage: str, *parts: str) -> dict[str, Any] | None:
    """The marker at `storage/parts…`, or None when the work has not finished."""
    fs, root = resolve_uri(storage)
    path = posixpath.join(root, *parts)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return json.loads(stream.read().decode())


def write_marker(storage: str, data: dict[str, Any], *parts: str) -> None:
    fs, root = resolve_uri(storage)
    path = posixpath.join(root, *parts)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    partial = path + ".partial"
    with fs.open_output_stream(partial) as stream:
        stream.write(json.dumps(data, indent=2).encode())
    fs.move(partial, path)


def remove_marker(storage: str, *parts: str) -> None:
    """Delete the marker at `storage/parts…` if there is one."""
    fs, root = resolve_uri(storage)
    path = posixpath.join(root, *parts)
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)
