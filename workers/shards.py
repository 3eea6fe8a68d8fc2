"""Prepare SR data sets once into Parquet shards, so every trial reads the same bytes fast.

Why shards: DIV2K + Flickr2K are 3450 multi-megapixel PNGs. Decoding folders of files on every
epoch from object storage is slow and each trial would re-validate the same images; a one-off,
idempotent preparation step checks every image once (clear reasons for anything rejected), mod-crops
it, optionally cuts BasicSR-style sub-images, pairs it with the official LR image when there is one,
and writes a few large Parquet files that Ray Data reads in parallel from a local disk or s3://.

Shard schema (version ``SCHEMA_VERSION``, stored in each file's Arrow schema metadata under
``trilevel_nas.schema_version``; one row per image or sub-image):

========== ======= =====================================================================
column     type    meaning
========== ======= =====================================================================
image_id   string  stem of the source file ("0001"); sub-images of one file share it
id         string  unique per row: image_id, or image_id + "_s###" for sub-images
source     string  the source folder's name ("DIV2K_train_HR"), or "skimage.data"
hr         binary  PNG bytes of the mod-cropped 8-bit RGB HR image (or sub-image)
lr         binary  PNG bytes of the matching official LR image, or null (then the reader
                   makes it with the MATLAB-faithful ``workers.imresize.downscale``)
height     int32   HR height in pixels (a multiple of ``scale``)
width      int32   HR width in pixels (a multiple of ``scale``)
scale      int32   the SR factor the row was prepared for
========== ======= =====================================================================

A finished output folder holds ``part-#####.parquet`` shards and ``_MANIFEST.json``, written last:
the completion marker, listing the shards, the options and a fingerprint of the inputs (source file
names and sizes) and options. A folder with a matching manifest is not redone; a different request
into it is an error. Shards are written under ``_tmp-`` names and renamed when complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

__all__ = [
    "DEMO_TRAIN",
    "DEMO_VAL",
    "MANIFEST_NAME",
    "SCHEMA_VERSION",
    "SHARD_SCHEMA",
    "DataError",
    "Manifest",
    "PrepareSummary",
    "join_storage",
    "prepare_dataset",
    "read_manifest",
    "resolve_uri",
    "write_demo_dataset",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST_NAME = "_MANIFEST.json"
_FORMAT = "trilevel-nas/sr-shards"
_TMP_PREFIX = "_tmp-"
_IMAGE_EXTS = (".png", ".jpg", ".jpeg")
_ROW_GROUP_ROWS = 16

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
    metadata={b"trilevel_nas.format": _FORMAT.encode(), b"trilevel_nas.schema_version": b"1"},
)

# Demo photographs shipped inside the scikit-image wheel (no download). Checked against skimage 0.26:
# ``motorcycle_left``/``motorcycle_right`` are the two views of ``skimage.data.stereo_motorcycle()``.
# Not used because they need pooch downloads: eagle, brain, lily, kidney, cells3d, skin.
DEMO_TRAIN: tuple[str, ...] = (
    "astronaut",
    "hubble_deep_field",
    "motorcycle_left",
    "motorcycle_right",
    "retina",
    "rocket",
)
# Held out of train entirely; val rows are 256x256 center crops named "<name>_c256".
DEMO_VAL: tuple[str, ...] = ("chelsea", "coffee")
_DEMO_VAL_CROP = 256


class DataError(ValueError):
    """A data set cannot be prepared or read; the message names the file/folder and the reason."""


class _Skip(Exception):
    """One image is rejected; ``reason`` says why. Becomes a ``skipped`` entry (or an error if strict)."""

    def __init__(self, file: str, reason: str) -> None:
        super().__init__(f"{file}: {reason}")
        self.file = file
        self.reason = reason


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


# --------------------------------------------------------------------------- filesystem helpers


def join_storage(storage: str, *parts: str) -> str:
    """`storage/parts…` for a local path or a URI (s3://…, joined with forward slashes)."""
    return posixpath.join(storage.rstrip("/"), *parts) if "://" in storage else os.path.join(storage, *parts)


def resolve_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or any URI pyarrow understands (s3://, gs://, file://)."""
    if "://" in uri:
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, path.rstrip("/") or "/"
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def _read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def _write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as f:
        f.write(data)


def _kind(fs: pafs.FileSystem, path: str) -> pafs.FileType:
    return fs.get_file_info(path).type


# --------------------------------------------------------------------------- manifest


def read_manifest(path: str) -> Manifest:
    """Load and check the manifest of a finished data set at ``path`` (local or URI)."""
    fs, root = resolve_uri(path)
    mpath = posixpath.join(root, MANIFEST_NAME)
    if _kind(fs, mpath) != pafs.FileType.File:
        raise DataError(
            f"{path} is not a finished data set (no {MANIFEST_NAME}): run `trilevel data prepare` "
            "or `trilevel data demo` into it first, or let an interrupted preparation finish"
        )
    try:
        data = json.loads(_read_bytes(fs, mpath))
    except ValueError as exc:
        raise DataError(f"{mpath} is not valid JSON: {exc}") from exc
    if data.get("format") != _FORMAT:
        raise DataError(f"{mpath} is not a trilevel-nas shard manifest (format={data.get('format')!r})")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise DataError(
            f"{mpath} has shard schema version {data.get('schema_version')}, this code reads "
            f"version {SCHEMA_VERSION}: prepare the data set again"
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
    )


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
    kind = _kind(fs, mpath)
    if kind == pafs.FileType.NotFound:
        return None
    try:
        data = json.loads(_read_bytes(fs, mpath))
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


# --------------------------------------------------------------------------- decoding and checks


def _png_bit_depth(data: bytes) -> int | None:
    """Bit depth from a PNG's IHDR (PIL silently reduces 16-bit RGB to 8 bits), None if not a PNG."""
    if len(data) >= 26 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return struct.unpack(">B", data[24:25])[0]
    return None


def _to_rgb(img: Image.Image, name: str) -> tuple[np.ndarray, str | None]:
    """8-bit RGB pixels, and a note when a conversion happened; ``_Skip`` when unsupported."""
    mode = img.mode
    if mode in ("RGB", "L") and "transparency" in img.info:
        raise _Skip(name, f"{mode} image with a transparent colour key (tRNS) is not supported")
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8), None
    if mode in ("1", "L"):
        return np.asarray(img.convert("RGB")), f"grayscale (mode {mode}) converted to RGB"
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        raise _Skip(
            name,
            f"{'16' if mode.startswith('I;16') else '32'}-bit image (mode {mode}) is not "
            "supported: convert it to 8-bit RGB first",
        )
    if mode in ("RGBA", "LA", "RGBa", "La"):
        alpha = np.asarray(img.getchannel("A" if "A" in mode else "a"))
        if alpha.min() < 255:
            raise _Skip(
                name,
                f"{mode} image has transparent pixels (min alpha {int(alpha.min())}); "
                "flatten it onto a background first",
            )
        return np.asarray(img.convert("RGB")), f"{mode} with fully opaque alpha converted to RGB"
    if mode in ("P", "PA"):
        if mode == "PA" or "transparency" in img.info:
            raise _Skip(name, "palette image with transparency is not supported: convert it to RGB first")
        return np.asarray(img.convert("RGB")), "palette image converted to RGB"
    if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        return np.asarray(img.convert("RGB")), f"{mode} image converted to RGB"
    raise _Skip(name, f"unsupported image mode {mode}")


def _decode(data: bytes, name: str) -> tuple[np.ndarray, str | None, bool]:
    """(RGB uint8 pixels, conversion note, is an 8-bit RGB PNG whose bytes can be stored as they are)."""
    depth = _png_bit_depth(data)
    if depth == 16:
        raise _Skip(name, "16-bit PNG is not supported: convert it to 8-bit RGB first")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            fmt = img.format
            arr, note = _to_rgb(img, name)
    except _Skip:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise _Skip(name, f"cannot decode image ({type(exc).__name__}: {exc})") from None
    return arr, note, (fmt == "PNG" and note is None and depth == 8)


def _encode_png(arr: np.ndarray, level: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def _positions(length: int, size: int, step: int) -> list[int]:
    """BasicSR ``extract_subimages`` start offsets (threshold 0); the whole extent if shorter than size."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, step))
    if length - (starts[-1] + size) > 0:
        starts.append(length - size)
    return starts


# --------------------------------------------------------------------------- items and processing


@dataclass(frozen=True)
class _Item:
    """One source image: where to read it (bytes or an in-memory array) and its optional LR file."""

    image_id: str
    source: str
    name: str
    read_hr: Callable[[], bytes | np.ndarray]
    lr_name: str | None = None
    read_lr: Callable[[], bytes] | None = None


@dataclass(frozen=True)
class _Options:
    scale: int
    subimages: tuple[int, int] | None
    min_size: int
    png_level: int


@dataclass
class _Result:
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)
    skip: _Skip | None = None


def _process(item: _Item, opt: _Options) -> _Result:
    """Validate, convert, mod-crop and cut one image into shard rows. Thread-safe, pure."""
    res = _Result()
    try:
        raw = item.read_hr()
        if isinstance(raw, np.ndarray):
            hr, note, reusable = raw, None, False
            if hr.dtype != np.uint8 or hr.ndim != 3 or hr.shape[2] != 3:
                raise _Skip(item.name, f"expected 8-bit RGB pixels, got {hr.dtype} {hr.shape}")
        else:
            hr, note, reusable = _decode(raw, item.name)
        if note:
            res.notes.append((item.name, note))
        s = opt.scale
        h, w = hr.shape[:2]
        hc, wc = h - h % s, w - w % s
        if min(hc, wc) < opt.min_size:
            raise _Skip(
                item.name,
                f"image is {w}x{h} px (WxH), smaller than the minimum side {opt.min_size} px "
                f"(patch x scale); lower min_size to keep it",
            )
        if (hc, wc) != (h, w):
            hr, reusable = hr[:hc, :wc], False
        lr = lr_bytes = None
        lr_reusable = False
        if item.read_lr is not None:
            assert item.lr_name is not None
            lr_bytes = item.read_lr()
            lr, lr_note, lr_reusable = _decode(lr_bytes, item.lr_name)
            if lr_note:
                res.notes.append((item.lr_name, lr_note))
            if (lr.shape[0] * s, lr.shape[1] * s) != (hc, wc):
                raise DataError(
                    f"LR/HR size mismatch: LR {item.lr_name} is {lr.shape[1]}x{lr.shape[0]} (WxH), "
                    f"x{s} = {lr.shape[1] * s}x{lr.shape[0] * s}, but HR {item.name} is {w}x{h}"
                    + (f" (mod-cropped to {wc}x{hc})" if (hc, wc) != (h, w) else "")
                )
    except _Skip as skip:
        res.skip = skip
        return res

    def row(rid: str, hr_png: bytes, lr_png: bytes | None, hh: int, ww: int) -> dict[str, Any]:
        return {
            "image_id": item.image_id,
            "id": rid,
            "source": item.source,
            "hr": hr_png,
            "lr": lr_png,
            "height": hh,
            "width": ww,
            "scale": s,
        }

    if opt.subimages is None:
        hr_png = raw if reusable and isinstance(raw, bytes) else _encode_png(hr, opt.png_level)
        lr_png = None
        if lr is not None:
            lr_png = lr_bytes if lr_reusable else _encode_png(lr, opt.png_level)
        res.rows.append(row(item.image_id, hr_png, lr_png, hc, wc))
        return res
    size, step = opt.subimages
    ys, xs = _positions(hc, size, step), _positions(wc, size, step)
    digits = max(3, len(str(len(ys) * len(xs))))
    n = 0
    for y in ys:
        for x in xs:
            n += 1
            crop = hr[y : y + size, x : x + size]
            lr_png = None
            if lr is not None:
                lr_png = _encode_png(lr[y // s : (y + size) // s, x // s : (x + size) // s], opt.png_level)
            res.rows.append(
                row(
                    f"{item.image_id}_s{n:0{digits}d}",
                    _encode_png(crop, opt.png_level),
                    lr_png,
                    *crop.shape[:2],
                )
            )
    return res


def _ordered_map(fn: Callable[[_Item], _Result], items: Sequence[_Item], workers: int) -> Iterator[_Result]:
    """``map`` over a thread pool, in input order, with at most ``2 * workers`` images in flight."""
    if workers <= 1:
        yield from (fn(it) for it in items)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shards") as pool:
        pending: deque[Future[_Result]] = deque()
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


# --------------------------------------------------------------------------- writing


class _ShardWriter:
    """Writes rows into ``part-#####.parquet`` shards via temp names; renames each when complete."""

    def __init__(self, fs: pafs.FileSystem, root: str, rows_per_shard: int, max_shard_bytes: int) -> None:
        self.fs, self.root = fs, root
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
            SHARD_SCHEMA,
            filesystem=self.fs,
            compression="none",  # PNG bytes do not compress further
            use_dictionary=["image_id", "source"],
            write_statistics=["image_id", "id", "source", "height", "width", "scale"],
        )

    def _flush(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            self._open()
        assert self._writer is not None
        self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=SHARD_SCHEMA))
        self._buffer = []

    def add(self, row: dict[str, Any]) -> None:
        self._buffer.append(row)
        self._rows += 1
        self._bytes += len(row["hr"]) + len(row["lr"] or b"")
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
        self.shards.append({"path": name, "rows": self._rows, "bytes": int(size or 0)})
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


def _write_items(
    items: Sequence[_Item],
    out: str,
    opt: _Options,
    *,
    options: Mapping[str, Any],
    inputs: Sequence[Any],
    pre_skipped: Sequence[tuple[str, str]],
    strict: bool,
    rows_per_shard: int,
    max_shard_bytes: int,
    workers: int,
) -> PrepareSummary:
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
    writer = _ShardWriter(fs, root, rows_per_shard, max_shard_bytes)
    skipped = list(pre_skipped)
    converted: list[tuple[str, str]] = []
    images = rows = with_lr = 0
    for f, why in pre_skipped:
        log.warning("skipped %s: %s", f, why)
    try:
        for res in _ordered_map(lambda it: _process(it, opt), items, workers):
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
        "format": _FORMAT,
        "schema_version": SCHEMA_VERSION,
        "fingerprint": fingerprint,
        "options": dict(options),
        "shards": writer.shards,
        "images": images,
        "rows": rows,
        "with_lr": with_lr,
        "bytes": total,
        "skipped": skipped,
        "converted": converted,
    }
    _write_bytes(fs, posixpath.join(root, MANIFEST_NAME), json.dumps(manifest, indent=1).encode())
    return _summary_from_manifest(out, manifest, reused=False)


# --------------------------------------------------------------------------- folders -> items


def _lr_dir_for(fs: pafs.FileSystem, src_path: str, scale: int) -> str | None:
    """The DIV2K-layout LR folder beside an HR folder: ``X_HR`` -> ``X_LR_bicubic/X{scale}``."""
    base = posixpath.basename(src_path)
    if not base.endswith("_HR"):
        return None
    cand = posixpath.join(posixpath.dirname(src_path), base[:-3] + "_LR_bicubic", f"X{scale}")
    return cand if _kind(fs, cand) == pafs.FileType.Directory else None


def _list_dir(fs: pafs.FileSystem, path: str, shown: str) -> list[pafs.FileInfo]:
    kind = _kind(fs, path)
    if kind == pafs.FileType.NotFound:
        raise DataError(f"source folder does not exist: {shown}")
    if kind != pafs.FileType.Directory:
        raise DataError(f"source is not a folder: {shown}")
    return sorted(fs.get_file_info(pafs.FileSelector(path, recursive=False)), key=lambda i: i.base_name)


def _folder_items(
    sources: Sequence[str], scale: int, lr_dirs: Mapping[str, str] | None
) -> tuple[list[_Item], list[Any], list[tuple[str, str]]]:
    """Items for every HR image in ``sources``, the fingerprint inputs, and pre-decode skips."""
    if not sources:
        raise DataError("no source folders given")
    items: list[_Item] = []
    inputs: list[Any] = []
    skipped: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    explicit = {resolve_uri(k)[1]: v for k, v in (lr_dirs or {}).items()}
    for src in sources:
        fs, path = resolve_uri(src)
        source = posixpath.basename(path.rstrip("/")) or path
        entries = _list_dir(fs, path, src)
        lr_root = explicit.get(path)
        lr_fs = fs
        if lr_root is not None:
            lr_fs, lr_root = resolve_uri(lr_root)
            if _kind(lr_fs, lr_root) != pafs.FileType.Directory:
                raise DataError(f"LR folder for {src} does not exist: {lr_dirs and lr_dirs.get(src)}")
        else:
            lr_root = _lr_dir_for(fs, path, scale)
        lr_files: dict[str, pafs.FileInfo] = {}
        if lr_root is not None:
            for info in lr_fs.get_file_info(pafs.FileSelector(lr_root, recursive=False)):
                stem, ext = posixpath.splitext(info.base_name)
                if info.type == pafs.FileType.File and ext.lower() in _IMAGE_EXTS:
                    lr_files[stem] = info
        count = 0
        for info in entries:
            base = info.base_name
            if base.startswith("."):
                continue
            shown = posixpath.join(src.rstrip("/"), base)
            stem, ext = posixpath.splitext(base)
            if info.type == pafs.FileType.Directory:
                skipped.append((shown, "subfolder, not searched (sources are flat folders of images)"))
                continue
            if ext.lower() not in _IMAGE_EXTS:
                skipped.append((shown, f"not a PNG/JPEG image (extension {ext or 'none'!r})"))
                continue
            count += 1
            if stem in seen:
                raise DataError(f"duplicate image id {stem!r}: {seen[stem]} and {shown}; image ids are file stems")
            seen[stem] = shown
            lr_info = None
            if lr_root is not None:
                lr_info = lr_files.get(f"{stem}x{scale}") or lr_files.get(stem)
                if lr_info is None:
                    skipped.append((shown, f"no LR image {stem}x{scale}.png in the LR folder {lr_root}"))
                    continue
            p = info.path
            lr_p = lr_info.path if lr_info is not None else None
            items.append(
                _Item(
                    image_id=stem,
                    source=source,
                    name=shown,
                    read_hr=lambda fs=fs, p=p: _read_bytes(fs, p),
                    lr_name=lr_p,
                    read_lr=(lambda fs=lr_fs, p=lr_p: _read_bytes(fs, p)) if lr_p is not None else None,
                )
            )
            inputs.append(
                [
                    source,
                    base,
                    info.size,
                    lr_info.base_name if lr_info else None,
                    lr_info.size if lr_info else None,
                ]
            )
        if count == 0:
            if not [e for e in entries if not e.base_name.startswith(".")]:
                raise DataError(f"source folder {src} is empty")
            raise DataError(f"source folder {src} contains no PNG/JPEG images")
    return items, inputs, skipped


def _check_common(scale: int, subimages: tuple[int, int] | None, min_size: int, rows_per_shard: int) -> None:
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


def prepare_dataset(
    sources: Sequence[str],
    out: str,
    scale: int = 4,
    subimages: tuple[int, int] | None = None,
    rows_per_shard: int = 256,
    lr_dirs: Mapping[str, str] | None = None,
    *,
    strict: bool = False,
    patch: int = 32,
    min_size: int | None = None,
    max_shard_bytes: int = 256 * 2**20,
    png_compress_level: int = 1,
    workers: int | None = None,
) -> PrepareSummary:
    """Prepare HR folders (PNG/JPEG; local paths or URIs) into Parquet shards at ``out``.

    - An official LR folder beside an ``*_HR`` folder (DIV2K layout: ``DIV2K_train_LR_bicubic/X4/
      0001x4.png`` beside ``DIV2K_train_HR/0001.png``) or given in ``lr_dirs`` (source -> folder)
      fills the ``lr`` column; its sizes must be exactly the mod-cropped HR size / ``scale``.
    - HR is mod-cropped (top-left kept) to a multiple of ``scale``; images with a side below
      ``min_size`` (default ``patch * scale``) are skipped.
    - ``subimages=(size, step)`` cuts BasicSR-style HR crops (and the aligned LR crops).
    - Grayscale, palette and fully opaque RGBA images are converted (listed in ``converted``);
      16-bit, transparent, unreadable and non-image files are skipped with a reason (``skipped``);
      ``strict=True`` makes any skip an error. Empty folders, LR/HR size mismatches and
      duplicate image ids are always errors (``DataError``).
    - Idempotent: a finished identical preparation at ``out`` is returned as is (``reused=True``).
    """
    min_side = patch * scale if min_size is None else min_size
    _check_common(scale, subimages, min_side, rows_per_shard)
    items, inputs, pre_skipped = _folder_items(sources, scale, lr_dirs)
    options = {
        "kind": "folders",
        "sources": [posixpath.basename(resolve_uri(s)[1]) for s in sources],
        "scale": scale,
        "subimages": list(subimages) if subimages else None,
        "min_size": min_side,
        "rows_per_shard": rows_per_shard,
        "max_shard_bytes": max_shard_bytes,
        "png_compress_level": png_compress_level,
    }
    return _write_items(
        items,
        out,
        _Options(scale, tuple(subimages) if subimages else None, min_side, png_compress_level),
        options=options,
        inputs=inputs,
        pre_skipped=pre_skipped,
        strict=strict,
        rows_per_shard=rows_per_shard,
        max_shard_bytes=max_shard_bytes,
        workers=workers if workers is not None else min(4, os.cpu_count() or 1),
    )


# --------------------------------------------------------------------------- demo data set


def _demo_image(name: str) -> np.ndarray:
    import skimage.data

    if name in ("motorcycle_left", "motorcycle_right"):
        left, right, _ = skimage.data.stereo_motorcycle()
        return left if name == "motorcycle_left" else right
    return getattr(skimage.data, name)()


def _center_crop(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    y, x = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(img[y : y + size, x : x + size])


def _demo_items(names: Iterable[str], crop: int | None) -> list[_Item]:
    items = []
    for name in names:
        image_id = f"{name}_c{crop}" if crop else name
        items.append(
            _Item(
                image_id=image_id,
                source="skimage.data",
                name=f"skimage.data.{name}",
                read_hr=(lambda n=name: _center_crop(_demo_image(n), crop))
                if crop
                else (lambda n=name: _demo_image(n)),
            )
        )
    return items


def write_demo_dataset(
    out: str, *, scale: int = 4, subimages: tuple[int, int] | None = None, rows_per_shard: int = 256
) -> PrepareSummary:
    """Write the built-in demo data set from scikit-image's bundled photographs (no network).

    ``out/train``: ``DEMO_TRAIN`` (6 photographs, mod-cropped); ``out/val``: 256x256 center crops
    of the two held-out photographs ``DEMO_VAL`` (ids ``chelsea_c256``, ``coffee_c256``). No LR is
    stored: readers make it with the MATLAB-faithful bicubic. Deterministic and idempotent.
    """
    import skimage

    parts: dict[str, PrepareSummary] = {}
    base = out.rstrip("/")
    for part, names, crop, sub in (
        ("train", DEMO_TRAIN, None, subimages),
        ("val", DEMO_VAL, _DEMO_VAL_CROP, None),
    ):
        min_side = 32 * scale
        _check_common(scale, sub, min_side, rows_per_shard)
        options = {
            "kind": "skimage-demo",
            "sources": list(names),
            "crop": crop,
            "scale": scale,
            "subimages": list(sub) if sub else None,
            "min_size": min_side,
            "rows_per_shard": rows_per_shard,
            "png_compress_level": 1,
        }
        parts[part] = _write_items(
            _demo_items(names, crop),
            f"{base}/{part}",
            _Options(scale, sub, min_side, 1),
            options=options,
            inputs=[skimage.__version__],
            pre_skipped=[],
            strict=True,
            rows_per_shard=rows_per_shard,
            max_shard_bytes=256 * 2**20,
            workers=min(4, os.cpu_count() or 1),
        )
    total = PrepareSummary(
        out=out,
        images=sum(p.images for p in parts.values()),
        rows=sum(p.rows for p in parts.values()),
        shards=sum(p.shards for p in parts.values()),
        bytes=sum(p.bytes for p in parts.values()),
        reused=all(p.reused for p in parts.values()),
        parts=parts,
    )
    return total
