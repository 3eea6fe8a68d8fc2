"""`data prepare --encoding raw`: the pixels as uint8 bytes in compressed Parquet pages, read like PNG shards.

A raw data set must give every reader exactly the pixels of the PNG data set prepared from the same
files with the same options (whole images and sub-images, official, stored and computed LR, converted
images); its manifest says so, so that readers pick the decoder, code that cannot read it refuses it,
and a damaged value or an unknown encoding is an error naming where and what.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import workers.pipeline as pipeline
from workers.shards.folders import prepare_dataset
from workers.shards.format import (
    MANIFEST_NAME,
    RAW_COMPRESSION,
    SCHEMA_VERSION,
    DataError,
    read_manifest,
    verify_shards,
)


def _folders(tmp_path: Path) -> tuple[Path, Path]:
    """A DIV2K-layout folder (official LR beside it) and a plain one (odd sizes, a grayscale image, no LR)."""
    rng = np.random.default_rng(0)
    div2k = tmp_path / "DIV2K_train_HR"
    lr_dir = tmp_path / "DIV2K_train_LR_bicubic" / "X4"
    lr_dir.mkdir(parents=True)
    div2k.mkdir()
    for n, (h, w) in enumerate([(136, 132), (128, 160)], start=1):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(div2k / f"{n:04d}.png")
        Image.fromarray(rng.integers(0, 256, (h // 4, w // 4, 3), dtype=np.uint8)).save(lr_dir / f"{n:04d}x4.png")
    plain = tmp_path / "plain"
    plain.mkdir()
    Image.fromarray(rng.integers(0, 256, (138, 133, 3), dtype=np.uint8)).save(plain / "a.png")  # mod-cropped
    Image.fromarray(rng.integers(0, 256, (130, 171), dtype=np.uint8)).save(plain / "b.png")  # grayscale: converted
    return div2k, plain


def _decoded(path: Path) -> list[dict]:
    return pipeline.decoded_rows(str(path), 4)


@pytest.mark.parametrize("subimages", [None, (64, 32)], ids=["whole", "subimages"])
def test_raw_shards_give_the_pixels_of_png_shards(tmp_path, subimages):
    div2k, plain = _folders(tmp_path)
    for name, folder, options in (
        ("official", div2k, {}),
        ("stored", plain, {"compute_lr": True}),
        ("made", plain, {}),
    ):
        png, raw = (
            prepare_dataset(
                [str(folder)],
                str(tmp_path / f"{name}-{enc}"),
                subimages=subimages,
                min_size=32,
                encoding=enc,
                **options,
            )
            for enc in ("png", "raw")
        )
        assert (raw.rows, raw.images, raw.with_lr, raw.converted) == (png.rows, png.images, png.with_lr, png.converted)
        want, got = _decoded(tmp_path / f"{name}-png"), _decoded(tmp_path / f"{name}-raw")
        assert [r["id"] for r in got] == [r["id"] for r in want] and len(got) == png.rows
        for a, b in zip(want, got, strict=True):
            for field in ("lr", "hr"):
                assert b[field].dtype == np.uint8 and b[field].flags.writeable
                np.testing.assert_array_equal(a[field], b[field], err_msg=f"{name} {a['id']} {field}")


def test_the_manifest_and_the_shards_say_how_pixels_are_stored(tmp_path):
    _, plain = _folders(tmp_path)
    prepare_dataset([str(plain)], str(tmp_path / "png"), min_size=32)
    prepare_dataset([str(plain)], str(tmp_path / "raw"), min_size=32, encoding="raw")
    png, raw = read_manifest(str(tmp_path / "png")), read_manifest(str(tmp_path / "raw"))
    assert (png.encoding, png.data["schema_version"]) == ("png", SCHEMA_VERSION)
    assert "encoding" not in png.data["options"]  # PNG sets keep the fingerprint they always had
    assert (raw.encoding, raw.data["schema_version"], raw.data["options"]["encoding"]) == ("raw", 2, "raw")
    assert raw.data["fingerprint"] != png.data["fingerprint"]  # another preparation: another data set identity
    # decoded pixels counted once at preparation, the same for both: HR + LR of 136x132 and 128x168
    pixels = 136 * 132 + 128 * 168
    assert raw.data["decoded_bytes"] == png.data["decoded_bytes"] == int(3 * pixels * (1 + 1 / 16))
    from orchestrator.plan import _decoded_mb, data_facts

    # what decides whether a training set is decoded once and kept (`data.cache_mb`): the count, not the bytes stored
    assert _decoded_mb(data_facts(str(tmp_path / "raw"), "data.train")) == raw.data["decoded_bytes"] / 2**20
    meta = pq.ParquetFile(raw.shards[0])
    assert meta.schema_arrow.metadata[b"trilevel_nas.encoding"] == b"raw"
    assert meta.metadata.row_group(0).column(3).compression == RAW_COMPRESSION.upper()  # the hr column
    assert pq.ParquetFile(png.shards[0]).metadata.row_group(0).column(3).compression == "UNCOMPRESSED"
    verify_shards(raw)  # sizes and SHA-256s listed as for PNG shards
    shard = Path(raw.shards[0])
    shard.write_bytes(shard.read_bytes()[:-1] + b"\0")
    with pytest.raises(DataError, match="SHA-256"):
        verify_shards(raw)

    # a manifest from before the option reads as PNG; an unknown encoding names the file, the field and the value
    manifest = tmp_path / "png" / MANIFEST_NAME
    data = json.loads(manifest.read_text())
    data["options"]["encoding"] = "jpeg"
    manifest.write_text(json.dumps(data))
    with pytest.raises(DataError, match=rf"{MANIFEST_NAME}: options.encoding is 'jpeg', this code reads png or raw"):
        read_manifest(str(tmp_path / "png"))
    with pytest.raises(DataError, match="encoding must be one of png, raw, got 'jpeg'"):
        prepare_dataset([str(plain)], str(tmp_path / "jpeg"), min_size=32, encoding="jpeg")
    # a raw set's manifest is version 2: code from before raw shards (which reads version 1) refuses it
    raw_manifest = tmp_path / "raw" / MANIFEST_NAME
    data = json.loads(raw_manifest.read_text())
    data["schema_version"] = 1
    raw_manifest.write_text(json.dumps(data))
    with pytest.raises(DataError, match="schema version 1, this code reads version 2 for raw shards"):
        read_manifest(str(tmp_path / "raw"))


def test_a_raw_value_of_the_wrong_size_names_the_row_and_field(tmp_path):
    _, plain = _folders(tmp_path)
    prepare_dataset([str(plain)], str(tmp_path / "raw"), min_size=32, encoding="raw", compute_lr=True)
    m = read_manifest(str(tmp_path / "raw"))
    row = pq.read_table(m.shards[0]).to_pylist()[0]
    lr, hr = pipeline.decode_pair(row, 4, "raw")
    assert hr.shape == (row["height"], row["width"], 3) and lr.shape == (row["height"] // 4, row["width"] // 4, 3)
    with pytest.raises(DataError, match=r"row a, field lr: 10 bytes, but a raw 34x33x3 image is 3,366"):
        pipeline.decode_pair({**row, "lr": b"\0" * 10}, 4, "raw")
    with pytest.raises(DataError, match="row a, field hr: not a readable PNG"):
        pipeline.decode_pair(row, 4, "png")  # raw bytes read as PNG: named, not a PIL traceback
    # what a Ray Data task runs on a row group names the shard too
    unit = {"shard": m.shards[0], "row_group": 0}
    assert [r["id"] for r in pipeline._read_unit(unit, str(tmp_path / "raw"), 4, None, "raw")] == ["a", "b"]
    with pytest.raises(DataError, match=rf"{m.shards[0]}: row a, field hr: not a readable PNG"):
        pipeline._read_unit(unit, str(tmp_path / "raw"), 4, None, "png")
