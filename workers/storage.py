"""Paths on the storage: a local folder or any URI pyarrow understands (s3://, gs://, file://).

Shards, checkpoints, stage outputs and done markers all live under one storage root that may be a
local path on one machine and an object-store URI on a cluster. These helpers are the one place
that tells the two apart, so every reader and writer handles both the same way.
"""

from __future__ import annotations

import hashlib
import os
import posixpath

import pyarrow.fs as pafs

__all__ = ["file_sha256", "join_storage", "path_kind", "read_bytes", "resolve_uri", "write_bytes"]


def join_storage(storage: str, *parts: str) -> str:
    """`storage/parts…` for a local path or a URI (s3://…, joined with forward slashes)."""
    return posixpath.join(storage.rstrip("/"), *parts) if "://" in storage else os.path.join(storage, *parts)


def resolve_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or any URI pyarrow understands (s3://, gs://, file://)."""
    if "://" in uri:
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, path.rstrip("/") or "/"
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    """The whole file at `path` on `fs`."""
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write `data` as the file at `path` on `fs` (replacing it)."""
    with fs.open_output_stream(path) as f:
        f.write(data)


def path_kind(fs: pafs.FileSystem, path: str) -> pafs.FileType:
    """What is at `path` on `fs`: a file, a directory, or NotFound."""
    return fs.get_file_info(path).type


def file_sha256(fs: pafs.FileSystem, path: str) -> str:
    """SHA-256 of one file on any filesystem, read in 8 MiB blocks (shards, checkpoints, stored stages)."""
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as stream:
        while block := stream.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()
