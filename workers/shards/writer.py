"""Rows → ``part-#####.parquet`` shards and the manifest, written so a preparation is done once.

Every preparation (:mod:`workers.shards.folders`, :mod:`workers.shards.demo`) ends here: its
images are cut into rows on a thread pool (:func:`workers.shards.rows.image_rows`, in input order),
rows go into shards under ``_tmp-`` names that are renamed when complete, and ``_MANIFEST.json`` is
written last, as the completion marker. A folder with a matching manifest (same fingerprint of the
inputs and options) is not redone; a different request into it is an error. Skips, conversions and
progress are logged (``workers.shards.writer``) as they happen and listed in the summary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from workers.shards.format import (
    ENCODINGS,
    FORMAT,
    MANIFEST_NAME,
    RAW_COMPRESSION,
    SCHEMA_VERSION,
    SHARD_SCHEMA,
    DataError,
    schema_version,
)
from workers.shards.rows import ImageRows, RowOptions, SourceImage, image_rows
from workers.storage import file_sha256, path_kind, read_bytes, resolve_uri, write_bytes

__all__ = ["PrepareSummary", "check_options", "write_items"]

log = logging.getLogger(__name__)

_TMP_PREFIX = "_tmp-"
_ROW_GROUP_ROWS = 16


@dataclass
class PrepareSummary:
    """What a preparation wrote. ``skipped`` and ``converted`` are (file, reason) pairs."""

    out: str
    images: int
    rows: int
    shards: int
    bytes: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    converted: list[tuple[str, str]] = field(default_factory=list)
    with_lr: int = 0
    reused: bool = False
    parts: dict[str, PrepareSummary] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (the CLI's ``--json``, the bench)."""
        return asdict(self)

    def lines(self) -> list[str]:
        """Human-readable report, one line each, skipped files with their reasons."""
        state = "already prepared, reused" if self.reused else "written"
        out = [
            f"{self.out}: {state}",
            f"  images: {self.images} ({self.rows} rows, {self.with_lr} with official LR)",
            f"  shards: {self.shards}, bytes: {self.bytes:,}",
        ]
        for name, part in self.parts.items():
            out.append(f"  {name}: {part.images} images, {part.rows} rows, {part.shards} shards")
        out.append(f"  converted: {len(self.converted)}")
        out += [f"    {f}: {why}" for f, why in self.converted]
        out.append(f"  skipped: {len(self.skipped)}")
        out += [f"    {f}: {why}" for f, why in self.skipped]
        return out


def _fingerprint(options: Mapping[str, Any], inputs: Sequence[Any]) -> str:
    blob = json.dumps({"v": SCHEMA_VERSION, "options": options, "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _summary_from_manifest(out: str, data: Mapping[str, Any], reused: bool) -> PrepareSummary:
    return PrepareSummary(
        out=out,
        images=int(data["images"]),
        rows=int(data["rows"]),
        shards=len(data["shards"]),
        bytes=int(data["bytes"]),
        skipped=[(f, r) for f, r in data["skipped"]],
        converted=[(f, r) for f, r in data["converted"]],
        with_lr=int(data["with_lr"]),
        reused=reused,
    )


def _check_existing(
    fs: pafs.FileSystem, root: str, out: str, fingerprint: str, options: Mapping[str, Any]
) -> PrepareSummary | None:
    """The summary of a finished, identical preparation at ``root``; an error if it differs."""
    mpath = posixpath.join(root, MANIFEST_NAME)
    kind = path_kind(fs, mpath)
    if kind == pafs.FileType.NotFound:
        return None
    try:
        data = json.loads(read_bytes(fs, mpath))
    except ValueError as exc:
        raise DataError(f"{mpath} exists but is not valid JSON ({exc}); delete {out} and prepare again") from exc
    if data.get("fingerprint") == fingerprint:
        return _summary_from_manifest(out, data, reused=True)
    old = data.get("options", {})
    diffs = [f"{k}: {old.get(k)!r} -> {options.get(k)!r}" for k in options if old.get(k) != options.get(k)]
    what = "; ".join(diffs) if diffs else "the input files changed (names or sizes)"
    raise DataError(
        f"{out} already holds a finished data set prepared differently ({what}). "
        "Use another output folder, or delete this one to prepare it again."
    )


def _ordered_map(
    fn: Callable[[SourceImage], ImageRows], items: Sequence[SourceImage], workers: int
) -> Iterator[ImageRows]:
    """``map`` over a thread pool, in input order, with at most ``2 * workers`` images in flight."""
    if workers <= 1:
        yield from (fn(it) for it in items)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shards") as pool:
        pending: deque[Future[ImageRows]] = deque()
        it = iter(items)
        for item in it:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(fn, nxt))
            yield result


class _ShardWriter:
    """Writes rows into ``part-#####.parquet`` shards via temp names; renames each when complete."""

    def __init__(
        self, fs: pafs.FileSystem, root: str, rows_per_shard: int, max_shard_bytes: int, encoding: str = "png"
    ) -> None:
        self.fs, self.root = fs, root
        self.encoding = encoding
        self.schema = SHARD_SCHEMA.with_metadata({**SHARD_SCHEMA.metadata, b"trilevel_nas.encoding": encoding.encode()})
        self.rows_per_shard, self.max_shard_bytes = rows_per_shard, max_shard_bytes
        self.shards: list[dict[str, Any]] = []
        self._writer: pq.ParquetWriter | None = None
        self._tmp = ""
        self._rows = 0
        self._bytes = 0
        self._buffer: list[dict[str, Any]] = []

    def _open(self) -> None:
        name = f"part-{len(self.shards):05d}.parquet"
        self._tmp = posixpath.join(self.root, _TMP_PREFIX + name)
        self._writer = pq.ParquetWriter(
            self._tmp,
            self.schema,
            filesystem=self.fs,
            # PNG bytes do not compress further; raw pixels do, with a codec that decompresses at GB/s
            compression="none" if self.encoding == "png" else RAW_COMPRESSION,
            use_dictionary=["image_id", "source"],
            write_statistics=["image_id", "id", "source", "height", "width", "scale"],
        )

    def _flush(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            self._open()
        assert self._writer is not None
        self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=self.schema))
        self._buffer = []

    def add(self, row: dict[str, Any]) -> None:
        self._buffer.append(row)
        self._rows += 1
        self._bytes += len(row["hr"]) + len(row["lr"] or b"")  # raw: before Parquet's compression
        if len(self._buffer) >= _ROW_GROUP_ROWS:
            self._flush()
        if self._rows >= self.rows_per_shard or self._bytes >= self.max_shard_bytes:
            self.close_shard()

    def close_shard(self) -> None:
        self._flush()
        if self._writer is None:
            return
        self._writer.close()
        name = posixpath.basename(self._tmp)[len(_TMP_PREFIX) :]
        final = posixpath.join(self.root, name)
        self.fs.move(self._tmp, final)
        size = self.fs.get_file_info(final).size
        entry = {"path": name, "rows": self._rows, "bytes": int(size or 0), "sha256": file_sha256(self.fs, final)}
        self.shards.append(entry)
        self._writer, self._rows, self._bytes = None, 0, 0

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self.fs.delete_file(self._tmp)
            self._writer = None


def _clear_partial(fs: pafs.FileSystem, root: str) -> None:
    """Delete our own leftovers (temp and shard files) of an unfinished run; nothing else."""
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=False)):
        base = info.base_name
        if (
            info.type == pafs.FileType.File
            and base.endswith(".parquet")
            and (base.startswith("part-") or base.startswith(_TMP_PREFIX + "part-"))
        ):
            fs.delete_file(info.path)


def write_items(
    items: Sequence[SourceImage],
    out: str,
    opt: RowOptions,
    *,
    options: Mapping[str, Any],
    inputs: Sequence[Any],
    pre_skipped: Sequence[tuple[str, str]],
    strict: bool,
    rows_per_shard: int,
    max_shard_bytes: int,
    workers: int,
) -> PrepareSummary:
    """Cut `items` into rows (`opt`) and write them as shards at `out` with the manifest; or reuse a finished one.

    `options` and `inputs` make the fingerprint (and are stored in the manifest); `pre_skipped` are files
    rejected before decoding (listed, or an error when `strict`); `workers` threads decode images.
    """
    fs, root = resolve_uri(out)
    fingerprint = _fingerprint(options, inputs)
    done = _check_existing(fs, root, out, fingerprint, options)
    if done is not None:
        return done
    if strict and pre_skipped:
        f, why = pre_skipped[0]
        raise DataError(f"{f}: {why} (strict mode; {len(pre_skipped)} problem(s) in total)")
    fs.create_dir(root, recursive=True)
    _clear_partial(fs, root)
    writer = _ShardWriter(fs, root, rows_per_shard, max_shard_bytes, opt.encoding)
    skipped = list(pre_skipped)
    converted: list[tuple[str, str]] = []
    images = rows = with_lr = decoded = 0
    for f, why in pre_skipped:
        log.warning("skipped %s: %s", f, why)
    try:
        for res in _ordered_map(lambda it: image_rows(it, opt), items, workers):
            if res.skip is not None:
                if strict:
                    raise DataError(f"{res.skip.file}: {res.skip.reason} (strict mode)")
                log.warning("skipped %s: %s", res.skip.file, res.skip.reason)
                skipped.append((res.skip.file, res.skip.reason))
                continue
            for f, note in res.notes:
                log.info("converted %s: %s", f, note)
            converted += res.notes
            images += 1
            if images % 100 == 0:
                log.info("%s: %d/%d images prepared", out, images, len(items))
            for r in res.rows:
                rows += 1
                with_lr += r["lr"] is not None
                # decoded, a row is its HR and its LR (stored, or made on read): what a reader's memory holds
                decoded += 3 * r["height"] * r["width"] * (1 + 1 / r["scale"] ** 2)
                writer.add(r)
        writer.close_shard()
    except BaseException:
        writer.abort()
        raise
    if images == 0:
        reasons = "; ".join(f"{f}: {why}" for f, why in skipped[:5])
        raise DataError(f"no usable images for {out}: all {len(skipped)} were skipped ({reasons})")
    total = sum(s["bytes"] for s in writer.shards)
    manifest = {
        "format": FORMAT,
        "schema_version": schema_version(opt.encoding),
        "fingerprint": fingerprint,
        "options": dict(options),
        "shards": writer.shards,
        "images": images,
        "rows": rows,
        "with_lr": with_lr,
        "bytes": total,
        "decoded_bytes": int(decoded),
        "skipped": skipped,
        "converted": converted,
    }
    write_bytes(fs, posixpath.join(root, MANIFEST_NAME), json.dumps(manifest, indent=1).encode())
    return _summary_from_manifest(out, manifest, reused=False)


def check_options(
    scale: int, subimages: tuple[int, int] | None, min_size: int, rows_per_shard: int, encoding: str = "png"
) -> None:
    """A DataError for options no preparation can honour (scale, shard size, sub-image size and step, encoding)."""
    if encoding not in ENCODINGS:
        raise DataError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    if scale < 1:
        raise DataError(f"scale must be >= 1, got {scale}")
    if rows_per_shard < 1:
        raise DataError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    if subimages is not None:
        size, step = subimages
        if size % scale or step % scale or step <= 0:
            raise DataError(f"subimages size/step {size}/{step} must be positive multiples of the scale {scale}")
        if size < min_size:
            raise DataError(f"subimage size {size} is smaller than the minimum side {min_size} (patch x scale)")
