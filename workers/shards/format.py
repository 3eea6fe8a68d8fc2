"""The shard format: the row schema, the manifest, and reading a finished data set back.

Shard schema (version ``SCHEMA_VERSION``, stored in each file's Arrow schema metadata under
``trilevel_nas.schema_version``; one row per image or sub-image):

========== ======= =====================================================================
column     type    meaning
========== ======= =====================================================================
image_id   string  stem of the source file ("0001"); sub-images of one file share it
id         string  unique per row: image_id, or image_id + "_s###" for sub-images
source     string  the source folder's name ("DIV2K_train_HR"), or "skimage.data"
hr         binary  the mod-cropped 8-bit RGB HR image (or sub-image), encoded (below)
lr         binary  the matching LR image (official, or stored by ``--compute-lr``), encoded;
                   or null (then the reader makes it with the MATLAB-faithful
                   ``workers.imresize.downscale``)
height     int32   HR height in pixels (a multiple of ``scale``)
width      int32   HR width in pixels (a multiple of ``scale``)
scale      int32   the SR factor the row was prepared for
========== ======= =====================================================================

How ``hr`` and ``lr`` are encoded is the manifest's ``options.encoding`` (``ENCODINGS``): ``png`` (the
default; absent from manifests written before the option, which read as ``png``) or ``raw``, the pixels
as uint8 HxWx3 bytes in row order (``height`` x ``width``; LR is that / ``scale``), which Parquet
compresses (``RAW_COMPRESSION``): decoding is a page decompression and a reshape instead of a PNG inflate
(``workers.shards.encoding``). A raw data set's manifest has schema version 2, so code from before raw
shards refuses it instead of reading the bytes as PNG.

A finished output folder holds ``part-#####.parquet`` shards and ``_MANIFEST.json``, written last:
the completion marker, listing the shards (each with its size and SHA-256), the options and a
fingerprint of the inputs (source file names and sizes) and options. ``verify_shards`` checks the
shards against it before a sweep trains on them: a shard truncated or changed after its manifest was
written is an error naming the file, not a failure mid-training. Writers (:mod:`workers.shards.writer`) and readers
(:mod:`workers.pipeline`) agree on the format through this module alone.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from workers.storage import file_sha256, path_kind, read_bytes, resolve_uri

__all__ = [
    "ENCODINGS",
    "FORMAT",
    "MANIFEST_NAME",
    "RAW_COMPRESSION",
    "SCHEMA_VERSION",
    "SHARD_SCHEMA",
    "DataError",
    "Manifest",
    "read_manifest",
    "schema_version",
    "verify_shards",
]

SCHEMA_VERSION = 1  # PNG shards (and every data set's fingerprint); raw shards are version 2: `schema_version`
ENCODINGS: tuple[str, ...] = ("png", "raw")
RAW_COMPRESSION = "lz4"  # Parquet page compression of raw shards (BENCHMARKS.md: bytes and decode time)
MANIFEST_NAME = "_MANIFEST.json"
FORMAT = "trilevel-nas/sr-shards"  # the manifest's "format" and the shards' schema metadata

SHARD_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("hr", pa.binary(), nullable=False),
        pa.field("lr", pa.binary(), nullable=True),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("scale", pa.int32(), nullable=False),
    ],
    metadata={b"trilevel_nas.format": FORMAT.encode(), b"trilevel_nas.schema_version": b"1"},
)


def schema_version(encoding: str) -> int:
    """The manifest schema version of a data set of `encoding`: 1 for PNG (as always), 2 for raw."""
    return SCHEMA_VERSION if encoding == "png" else 2


class DataError(ValueError):
    """A data set cannot be prepared or read; the message names the file/folder and the reason."""


@dataclass(frozen=True)
class Manifest:
    """A finished data set: the filesystem, the root path on it and the shard paths on it."""

    filesystem: pafs.FileSystem
    root: str
    shards: tuple[str, ...]
    scale: int
    rows: int
    images: int
    data: Mapping[str, Any]
    encoding: str = "png"  # how the hr/lr columns are encoded (ENCODINGS)


def read_manifest(path: str) -> Manifest:
    """Load and check the manifest of a finished data set at ``path`` (local or URI)."""
    fs, root = resolve_uri(path)
    mpath = posixpath.join(root, MANIFEST_NAME)
    if path_kind(fs, mpath) != pafs.FileType.File:
        raise DataError(
            f"{path} is not a finished data set (no {MANIFEST_NAME}): run `trilevel data prepare` "
            "or `trilevel data demo` into it first, or let an interrupted preparation finish"
        )
    try:
        data = json.loads(read_bytes(fs, mpath))
    except ValueError as exc:
        raise DataError(f"{mpath} is not valid JSON: {exc}") from exc
    if data.get("format") != FORMAT:
        raise DataError(f"{mpath} is not a trilevel-nas shard manifest (format={data.get('format')!r})")
    encoding = data.get("options", {}).get("encoding", "png")
    if encoding not in ENCODINGS:
        raise DataError(
            f"{mpath}: options.encoding is {encoding!r}, this code reads {' or '.join(ENCODINGS)}: prepare the "
            "data set again with `trilevel data prepare --encoding png|raw`"
        )
    if data.get("schema_version") != schema_version(encoding):
        raise DataError(
            f"{mpath} has shard schema version {data.get('schema_version')}, this code reads version "
            f"{schema_version(encoding)} for {encoding} shards: prepare the data set again"
        )
    shards = tuple(posixpath.join(root, s["path"]) for s in data["shards"])
    return Manifest(
        filesystem=fs,
        root=root,
        shards=shards,
        scale=int(data["options"]["scale"]),
        rows=int(data["rows"]),
        images=int(data["images"]),
        data=data,
        encoding=encoding,
    )


def verify_shards(manifest: Manifest, *, digests: bool = True) -> None:
    """Every shard the manifest lists is there, of the size it lists, with its SHA-256 (when listed).

    Sizes cost one listing; digests read every byte once (paper data: ~15 GB, tens of seconds, once per
    sweep start in the driver), which is what catches a shard damaged in place. Manifests written before
    digests were recorded are checked by size only.
    """
    infos = {info.path: info for info in manifest.filesystem.get_file_info(list(manifest.shards))}
    for entry, path in zip(manifest.data["shards"], manifest.shards, strict=True):
        info = infos[path]
        if info.type != pafs.FileType.File:
            raise DataError(f"{path}: shard listed in {MANIFEST_NAME} is missing: prepare the data set again")
        if info.size != entry["bytes"]:
            raise DataError(
                f"{path}: {info.size:,} bytes, but {MANIFEST_NAME} lists {entry['bytes']:,} (truncated or changed "
                "after the data set was prepared): prepare the data set again"
            )
        expected = entry.get("sha256")
        if digests and expected and (actual := file_sha256(manifest.filesystem, path)) != expected:
            raise DataError(
                f"{path}: SHA-256 {actual[:12]}… differs from {expected[:12]}… in {MANIFEST_NAME} (damaged or changed "
                "after the data set was prepared): prepare the data set again"
            )
