"""How a shard stores an image's pixels: PNG bytes, or raw uint8 HxWx3 bytes that Parquet compresses.

Why two: PNG is the smallest on disk but its inflate costs a reader ~7 ms per 480x480 sub-image with
its LR, more than a GPU train step's share of the feed at 4 CPUs per worker allows (BENCHMARKS.md,
"Data feed per worker"). Raw bytes in a Parquet column with a fast page compression decode with a
decompression and a reshape. Both give the same pixels (`tests/workers/test_raw_shards.py`); the
writer (:mod:`workers.shards.rows`) encodes with :func:`encode_image`, the readers
(:func:`workers.pipeline.decode_pair`) decode with :func:`decode_image`, by the manifest's
``options.encoding`` (:mod:`workers.shards.format`).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from workers.shards.format import ENCODINGS, DataError

__all__ = ["decode_image", "encode_image"]


def encode_image(pixels: np.ndarray, encoding: str, png_level: int) -> bytes:
    """The bytes a shard stores for 8-bit RGB `pixels` (HxWx3) in `encoding` (png: at zlib level `png_level`)."""
    if encoding == "raw":
        return np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    if encoding == "png":
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG", compress_level=png_level)
        return buf.getvalue()
    raise DataError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")


def decode_image(data: bytes, encoding: str, shape: tuple[int, int] | None, name: str) -> np.ndarray:
    """8-bit RGB pixels (HxWx3, writable) of a shard's `data`; `shape` (H, W) is what the row says it holds.

    `name` says which row and field it is ("row 0001_s001, field hr"), for the error a damaged or
    mislabelled value gets. PNG carries its own size (`shape` None: not checked); raw bytes must be
    exactly H x W x 3, so raw needs `shape`.
    """
    if encoding == "raw":
        if shape is None:
            raise DataError(f"{name}: a raw-encoded image needs the row's height and width")
        height, width = shape
        if len(data) != height * width * 3:
            raise DataError(
                f"{name}: {len(data):,} bytes, but a raw {height}x{width}x3 image is {height * width * 3:,} "
                "(damaged, or not a raw-encoded data set): prepare the data set again"
            )
        # a copy: the readers hand out writable arrays, as PNG decoding does (~0.1 ms for a 480x480 image)
        return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3).copy()
    if encoding == "png":
        try:
            with Image.open(io.BytesIO(data)) as img:
                pixels = np.array(img.convert("RGB"), dtype=np.uint8)
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"{name}: not a readable PNG ({type(exc).__name__}: {exc})") from None
        if shape is not None and pixels.shape[:2] != tuple(shape):
            raise DataError(f"{name}: PNG is {pixels.shape[0]}x{pixels.shape[1]}, the row says {shape[0]}x{shape[1]}")
        return pixels
    raise DataError(f"{name}: encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
