"""`data prepare --compute-lr`: each row stores the LR the readers would compute, so no bicubic per pass.

The stored LR must be exactly what `workers.pipeline.decode_pair` makes from the row's HR when no LR is
stored (MATLAB bicubic of the mod-cropped image or of the sub-image): the training data is unchanged,
only where the bicubic runs moves (once at preparation instead of every epoch in every worker).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import workers.pipeline as pipeline
from workers.shards.folders import prepare_dataset


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "hr"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.png": (138, 133), "b.png": (130, 171)}.items():  # not multiples of 4: mod-cropped
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
    return folder


def _rows(out: Path) -> list[dict]:
    return [row for part in sorted(out.glob("*.parquet")) for row in pq.read_table(part).to_pylist()]


@pytest.mark.parametrize("subimages", [None, (64, 32)], ids=["whole", "subimages"])
def test_stored_lr_is_the_lr_the_readers_would_compute(tmp_path, subimages, monkeypatch):
    folder = _folder(tmp_path)
    plain = prepare_dataset([str(folder)], str(tmp_path / "plain"), subimages=subimages, min_size=32)
    stored = prepare_dataset([str(folder)], str(tmp_path / "stored"), subimages=subimages, min_size=32, compute_lr=True)
    assert plain.with_lr == 0 and stored.with_lr == stored.rows == plain.rows
    computed = [pipeline.decode_pair(row, 4) for row in _rows(tmp_path / "plain")]

    calls = []
    real = pipeline.downscale
    monkeypatch.setattr(pipeline, "downscale", lambda *a: calls.append(a) or real(*a))
    read = [pipeline.decode_pair(row, 4) for row in _rows(tmp_path / "stored")]
    assert calls == [], "with stored LR the readers run no bicubic"
    for (lr_a, hr_a), (lr_b, hr_b) in zip(computed, read, strict=True):
        np.testing.assert_array_equal(hr_a, hr_b)
        np.testing.assert_array_equal(lr_a, lr_b)
