"""Image files and folders in, upscaled ``<stem>_x<scale>.png`` files out.

**Files.** Outputs are ``<stem>_x<scale>.png`` (lossless), written atomically; JPEG orientation
(EXIF) is applied first, non-RGB inputs are converted to RGB and each conversion is reported;
an unreadable file is an error naming it (or, with ``keep_going``, reported and skipped), and
two inputs that would write the same output are refused before any work. The pixels themselves
are :mod:`orchestrator.upscale.tiled`'s job.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn

from orchestrator.upscale.errors import UpscaleError
from orchestrator.upscale.tiled import check_tiling, resolve_device, upscale_with_note

__all__ = ["IMAGE_SUFFIXES", "collect_images", "output_name", "upscale_files"]

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")

Report = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def collect_images(inputs: Sequence[Path | str], report: Report | None = None) -> list[Path]:
    """Files as given, folders expanded to their PNG/JPEG files (sorted, not recursive), duplicates removed.

    A missing path or a folder without images is an UpscaleError; other files in a folder are
    left out and reported.
    """
    report = report or _stderr
    files: list[Path] = []
    seen: set[Path] = set()
    for entry in map(Path, inputs):
        if entry.is_dir():
            children = sorted(p for p in entry.iterdir() if p.is_file() and not p.name.startswith("."))
            images = [p for p in children if p.suffix.lower() in IMAGE_SUFFIXES]
            if not images:
                raise UpscaleError(f"{entry}: no PNG/JPEG images in this folder")
            if len(images) < len(children):
                others = [p.name for p in children if p.suffix.lower() not in IMAGE_SUFFIXES]
                shown = ", ".join(others[:5]) + (", …" if len(others) > 5 else "")
                report(f"{entry}: {len(others)} file(s) that are not PNG/JPEG left out ({shown})")
        elif entry.is_file():
            images = [entry]
        else:
            raise UpscaleError(f"{entry}: no such file or folder")
        for path in images:
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                files.append(path)
    return files


def output_name(path: Path, scale: int) -> str:
    """``<stem>_x<scale>.png``."""
    return f"{path.stem}_x{scale}.png"


def _read(path: Path) -> Image.Image:
    try:
        with Image.open(path) as opened:
            opened.load()
            return ImageOps.exif_transpose(opened)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UpscaleError(f"{path}: cannot read the image ({err})") from None


def _write(image: Image.Image, target: Path) -> None:
    partial = target.with_name(f".{target.name}.partial")
    try:
        image.save(partial, format="PNG")
        os.replace(partial, target)
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise UpscaleError(f"{target}: cannot write the output ({err})") from None


def upscale_files(
    model: nn.Module,
    scale: int,
    inputs: Sequence[Path | str],
    out_dir: Path | str,
    *,
    tile: int | None = 256,
    overlap: int = 24,
    device: str | torch.device = "cpu",
    keep_going: bool = False,
    report: Report | None = None,
) -> list[Path]:
    """Upscale image files and folders of PNG/JPEG into `out_dir` as ``<stem>_x<scale>.png``; the paths written.

    Progress, conversions and left-out files go to `report` (default: stderr). An unreadable image
    (or an unwritable output) raises an UpscaleError naming the file; with `keep_going` it is
    reported and skipped instead, so fewer paths come back than inputs went in. Two inputs that
    would write the same output are refused before anything runs.
    """
    tile = check_tiling(tile, overlap)
    report = report or _stderr
    target_device = resolve_device(device)
    files = collect_images(inputs, report)
    out = Path(out_dir)
    claimed: dict[str, Path] = {}
    for path in files:
        name = output_name(path, scale)
        if name.lower() in claimed:  # lower: a.png and A.png collide on case-insensitive file systems
            other = claimed[name.lower()]
            raise UpscaleError(f"{other} and {path} would both be written to {out / name}; rename one")
        claimed[name.lower()] = path
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UpscaleError(f"{out}: cannot create the output folder ({err})") from None
    model.to(target_device)
    written: list[Path] = []
    for index, path in enumerate(files, 1):
        target = out / output_name(path, scale)
        started = time.perf_counter()
        try:
            image = _read(path)
            result, note = upscale_with_note(model, image, scale, tile, overlap, target_device)
            if note:
                report(f"{path}: {note}")
            _write(result, target)
        except UpscaleError as err:
            if not keep_going:
                raise
            report(f"[{index}/{len(files)}] skipped: {err}")
            continue
        written.append(target)
        report(
            f"[{index}/{len(files)}] {path} → {target} ({image.width}×{image.height} → "
            f"{result.width}×{result.height}, {time.perf_counter() - started:.1f} s)"
        )
    return written
