"""The built-in demo data set: the photographs scikit-image and matplotlib ship, as shards, no download needed.

It lets `trilevel demo`, the tests and the benchmarks run the whole pipeline on any machine, split
three ways so that what is reported was never used to choose anything: six photographs to train
on (``train``), two to select with (``val``: per-epoch curves and the best checkpoint) and ten to
report on (``test``: evaluated once, never seen by any stage or choice). Deterministic and
idempotent like any other preparation (:mod:`workers.shards.writer`). No LR is stored: readers make
it with the MATLAB-faithful bicubic. Grey photographs are stacked to RGB (their Y-PSNR is that of
the grey image).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np

from workers.shards.rows import RowOptions, SourceImage
from workers.shards.writer import PrepareSummary, check_options, write_items

__all__ = ["DEMO_TEST", "DEMO_TRAIN", "DEMO_VAL", "write_demo_dataset"]

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
# Held out of train and val: what reports show. Every bundled photograph at least 256 px on each side that
# is neither a training nor a validation image (skimage's eight grey ones stacked to RGB, matplotlib's
# grace_hopper.jpg); 256x256 center crops named "<name>_c256", like val. Left out: binary or synthetic
# images (horse, checkerboard, colorwheel, logos) and those smaller than 256 px (page, text, microaneurysms).
DEMO_TEST: tuple[str, ...] = (
    "brick",
    "camera",
    "cell",
    "clock",
    "coins",
    "grace_hopper",
    "grass",
    "gravel",
    "immunohistochemistry",
    "moon",
)
_DEMO_CROP = 256


def _demo_image(name: str) -> np.ndarray:
    """H×W×3 uint8 pixels of a bundled photograph (grey ones stacked to RGB)."""
    import skimage.data

    if name in ("motorcycle_left", "motorcycle_right"):
        left, right, _ = skimage.data.stereo_motorcycle()
        return left if name == "motorcycle_left" else right
    if name == "grace_hopper":
        from matplotlib.cbook import get_sample_data
        from PIL import Image

        with Image.open(get_sample_data("grace_hopper.jpg")) as image:
            return np.asarray(image.convert("RGB"))
    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image)


def _source(name: str) -> str:
    return "matplotlib.sample_data" if name == "grace_hopper" else "skimage.data"


def _center_crop(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    y, x = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(img[y : y + size, x : x + size])


def _demo_items(names: Iterable[str], crop: int | None) -> list[SourceImage]:
    items = []
    for name in names:
        image_id = f"{name}_c{crop}" if crop else name
        items.append(
            SourceImage(
                image_id=image_id,
                source=_source(name),
                name=f"{_source(name)}.{name}",
                read_hr=(lambda n=name: _center_crop(_demo_image(n), crop))
                if crop
                else (lambda n=name: _demo_image(n)),
            )
        )
    return items


def write_demo_dataset(
    out: str, *, scale: int = 4, subimages: tuple[int, int] | None = None, rows_per_shard: int = 256
) -> PrepareSummary:
    """Write the built-in demo data set from the bundled photographs (no network).

    ``out/train``: ``DEMO_TRAIN`` (6 photographs, mod-cropped); ``out/val``: 256x256 center crops
    of the two held-out photographs ``DEMO_VAL`` (ids ``chelsea_c256``, ``coffee_c256``);
    ``out/test``: 256x256 center crops of the ten ``DEMO_TEST`` photographs. No LR is stored:
    readers make it with the MATLAB-faithful bicubic. Deterministic and idempotent.
    """
    import matplotlib
    import skimage

    parts: dict[str, PrepareSummary] = {}
    base = out.rstrip("/")
    for part, names, crop, sub in (
        ("train", DEMO_TRAIN, None, subimages),
        ("val", DEMO_VAL, _DEMO_CROP, None),
        ("test", DEMO_TEST, _DEMO_CROP, None),
    ):
        min_side = 32 * scale
        check_options(scale, sub, min_side, rows_per_shard)
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
        parts[part] = write_items(
            _demo_items(names, crop),
            f"{base}/{part}",
            RowOptions(scale, sub, min_side, 1),
            options=options,
            inputs=[skimage.__version__] + ([matplotlib.__version__] if part == "test" else []),
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
