"""Prepare folders of HR images (PNG/JPEG; local paths or URIs) into shards: ``prepare_dataset``.

Sources are flat folders of images, e.g. ``DIV2K_train_HR``. The official LR images are paired
with them when a DIV2K-layout LR folder sits beside one (``DIV2K_train_LR_bicubic/X4/0001x4.png``
beside ``DIV2K_train_HR/0001.png``) or is given explicitly. Listing the folders (image ids are file
stems, unique across all sources; other files are skipped with a reason) is this module's job; the
checks of each image and the writing are :mod:`workers.shards.rows` and :mod:`workers.shards.writer`.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow.fs as pafs

from workers.shards.format import DataError
from workers.shards.rows import RowOptions, SourceImage
from workers.shards.writer import PrepareSummary, check_options, write_items
from workers.storage import path_kind, read_bytes, resolve_uri

__all__ = ["prepare_dataset"]

_IMAGE_EXTS = (".png", ".jpg", ".jpeg")


def _lr_dir_for(fs: pafs.FileSystem, src_path: str, scale: int) -> str | None:
    """The DIV2K-layout LR folder beside an HR folder: ``X_HR`` -> ``X_LR_bicubic/X{scale}``."""
    base = posixpath.basename(src_path)
    if not base.endswith("_HR"):
        return None
    cand = posixpath.join(posixpath.dirname(src_path), base[:-3] + "_LR_bicubic", f"X{scale}")
    return cand if path_kind(fs, cand) == pafs.FileType.Directory else None


def _list_dir(fs: pafs.FileSystem, path: str, shown: str) -> list[pafs.FileInfo]:
    kind = path_kind(fs, path)
    if kind == pafs.FileType.NotFound:
        raise DataError(f"source folder does not exist: {shown}")
    if kind != pafs.FileType.Directory:
        raise DataError(f"source is not a folder: {shown}")
    return sorted(fs.get_file_info(pafs.FileSelector(path, recursive=False)), key=lambda i: i.base_name)


def _folder_items(
    sources: Sequence[str], scale: int, lr_dirs: Mapping[str, str] | None
) -> tuple[list[SourceImage], list[Any], list[tuple[str, str]]]:
    """Items for every HR image in ``sources``, the fingerprint inputs, and pre-decode skips."""
    if not sources:
        raise DataError("no source folders given")
    items: list[SourceImage] = []
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
            if path_kind(lr_fs, lr_root) != pafs.FileType.Directory:
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
                SourceImage(
                    image_id=stem,
                    source=source,
                    name=shown,
                    read_hr=lambda fs=fs, p=p: read_bytes(fs, p),
                    lr_name=lr_p,
                    read_lr=(lambda fs=lr_fs, p=lr_p: read_bytes(fs, p)) if lr_p is not None else None,
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
    compute_lr: bool = False,
    encoding: str = "png",
) -> PrepareSummary:
    """Prepare HR folders (PNG/JPEG; local paths or URIs) into Parquet shards at ``out``.

    - An official LR folder beside an ``*_HR`` folder (DIV2K layout: ``DIV2K_train_LR_bicubic/X4/
      0001x4.png`` beside ``DIV2K_train_HR/0001.png``) or given in ``lr_dirs`` (source -> folder)
      fills the ``lr`` column; its sizes must be exactly the mod-cropped HR size / ``scale``.
    - HR is mod-cropped (top-left kept) to a multiple of ``scale``; images with a side below
      ``min_size`` (default ``patch * scale``) are skipped.
    - ``subimages=(size, step)`` cuts BasicSR-style HR crops (and the aligned LR crops).
    - ``encoding``: ``png`` stores PNG bytes; ``raw`` stores the pixels as uint8 bytes in compressed
      Parquet pages (the same pixels, ~1.5x the bytes of PNG on photographs, ~16x cheaper to decode:
      `workers.shards.encoding`).
    - Grayscale, palette and fully opaque RGBA images are converted (listed in ``converted``);
      16-bit, transparent, unreadable and non-image files are skipped with a reason (``skipped``);
      ``strict=True`` makes any skip an error. Empty folders, LR/HR size mismatches and
      duplicate image ids are always errors (``DataError``).
    - Idempotent: a finished identical preparation at ``out`` is returned as is (``reused=True``).
    """
    min_side = patch * scale if min_size is None else min_size
    check_options(scale, subimages, min_side, rows_per_shard, encoding)
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
        **({"compute_lr": True} if compute_lr else {}),  # absent when off: data sets prepared before still match
        **({"encoding": encoding} if encoding != "png" else {}),  # absent for PNG, likewise
    }
    return write_items(
        items,
        out,
        RowOptions(scale, tuple(subimages) if subimages else None, min_side, png_compress_level, compute_lr, encoding),
        options=options,
        inputs=inputs,
        pre_skipped=pre_skipped,
        strict=strict,
        rows_per_shard=rows_per_shard,
        max_shard_bytes=max_shard_bytes,
        workers=workers if workers is not None else min(4, os.cpu_count() or 1),
    )
