"""One source image → shard rows: decode, check, convert, mod-crop and cut it into sub-images.

Every image is checked once, here, with a clear reason for anything rejected: grayscale, palette
and fully opaque RGBA images are converted (each conversion noted); 16-bit, transparent, unreadable
and too-small images are skipped with the reason; an official LR image must be exactly the
mod-cropped HR size / ``scale``. Pure and thread-safe, so :mod:`workers.shards.writer` runs it on a
thread pool.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from workers.imresize import downscale
from workers.shards.encoding import encode_image
from workers.shards.format import DataError

__all__ = ["ImageRows", "RowOptions", "SourceImage", "image_rows"]


class _Skip(Exception):
    """One image is rejected; ``reason`` says why. Becomes a ``skipped`` entry (or an error if strict)."""

    def __init__(self, file: str, reason: str) -> None:
        super().__init__(f"{file}: {reason}")
        self.file = file
        self.reason = reason


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


def _positions(length: int, size: int, step: int) -> list[int]:
    """BasicSR ``extract_subimages`` start offsets (threshold 0); the whole extent if shorter than size."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, step))
    if length - (starts[-1] + size) > 0:
        starts.append(length - size)
    return starts


@dataclass(frozen=True)
class SourceImage:
    """One source image: where to read it (bytes or an in-memory array) and its optional LR file."""

    image_id: str
    source: str
    name: str
    read_hr: Callable[[], bytes | np.ndarray]
    lr_name: str | None = None
    read_lr: Callable[[], bytes] | None = None


@dataclass(frozen=True)
class RowOptions:
    """How every image of a preparation is cut and stored: the SR scale, sub-images (size, step), minimum side,
    PNG level, stored LR, and the pixels' encoding (`workers.shards.encoding`: png or raw)."""

    scale: int
    subimages: tuple[int, int] | None
    min_size: int
    png_level: int
    # Store each row's LR (MATLAB bicubic of its HR) where no official LR exists: the readers then decode
    # a small PNG instead of running the bicubic on every pass (the same pixels: `workers.pipeline.decode_pair`).
    compute_lr: bool = False
    encoding: str = "png"

    def encode(self, pixels: np.ndarray) -> bytes:
        """The bytes a shard stores for `pixels` in this preparation's encoding."""
        return encode_image(pixels, self.encoding, self.png_level)


@dataclass
class ImageRows:
    """What one image gave: its shard rows and conversion notes, or why it was skipped."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)
    skip: _Skip | None = None


def image_rows(item: SourceImage, opt: RowOptions) -> ImageRows:
    """Validate, convert, mod-crop and cut one image into shard rows. Thread-safe, pure."""
    res = ImageRows()
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

    def row(rid: str, hr_data: bytes, lr_data: bytes | None, hh: int, ww: int, hr_pixels: np.ndarray) -> dict[str, Any]:
        if lr_data is None and opt.compute_lr:
            lr_data = opt.encode(downscale(hr_pixels, s))
        return {
            "image_id": item.image_id,
            "id": rid,
            "source": item.source,
            "hr": hr_data,
            "lr": lr_data,
            "height": hh,
            "width": ww,
            "scale": s,
        }

    png = opt.encoding == "png"  # an 8-bit RGB PNG source is stored as it is, byte for byte
    if opt.subimages is None:
        hr_data = raw if png and reusable and isinstance(raw, bytes) else opt.encode(hr)
        lr_data = None
        if lr is not None:
            lr_data = lr_bytes if png and lr_reusable else opt.encode(lr)
        res.rows.append(row(item.image_id, hr_data, lr_data, hc, wc, hr))
        return res
    size, step = opt.subimages
    ys, xs = _positions(hc, size, step), _positions(wc, size, step)
    digits = max(3, len(str(len(ys) * len(xs))))
    n = 0
    for y in ys:
        for x in xs:
            n += 1
            crop = hr[y : y + size, x : x + size]
            lr_data = None
            if lr is not None:
                lr_data = opt.encode(lr[y // s : (y + size) // s, x // s : (x + size) // s])
            res.rows.append(
                row(
                    f"{item.image_id}_s{n:0{digits}d}",
                    opt.encode(crop),
                    lr_data,
                    *crop.shape[:2],
                    crop,
                )
            )
    return res
