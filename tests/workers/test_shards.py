"""Shard preparation: schema, conversions, every bad-data case with its message, LR pairing,
sub-images, idempotency, URIs and the built-in demo set."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from workers.shards.demo import DEMO_TEST, DEMO_TRAIN, write_demo_dataset
from workers.shards.folders import prepare_dataset
from workers.shards.format import MANIFEST_NAME, SCHEMA_VERSION, DataError, read_manifest


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(arr: np.ndarray | Image.Image, path: Path, **kw) -> Path:
    img = Image.fromarray(arr) if isinstance(arr, np.ndarray) else arr
    img.save(path, **kw)
    return path


def _png16_rgb(path: Path, h: int, w: int) -> Path:
    """A 48-bit RGB PNG written by hand (PIL would silently reduce it to 8 bits on load)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + bytes(w * 6) for _ in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    return path


def _rows(out: Path | str) -> list[dict]:
    m = read_manifest(str(out))
    rows = []
    for shard in m.shards:
        rows += pq.read_table(shard, filesystem=m.filesystem).to_pylist()
    return rows


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


# --------------------------------------------------------------------------- the happy path


def test_prepare_writes_schema_mod_crops_and_keeps_png_bytes(tmp_path):
    src = tmp_path / "Set_HR"
    src.mkdir()
    a, b = _rgb(132, 140, 1), _rgb(130, 138, 2)
    _save(a, src / "a.png")
    _save(b, src / "b.png")
    _save(_rgb(136, 136, 3), src / "c.jpg", quality=95)
    out = tmp_path / "out"
    s = prepare_dataset([str(src)], str(out), scale=4)
    assert (s.images, s.rows, s.shards, s.skipped, s.converted, s.reused) == (3, 3, 1, [], [], False)
    assert s.bytes == sum(p.stat().st_size for p in out.glob("part-*.parquet"))

    m = read_manifest(str(out))
    schema = pq.read_schema(m.shards[0])
    assert schema.names == ["image_id", "id", "source", "hr", "lr", "height", "width", "scale"]
    assert schema.metadata[b"trilevel_nas.schema_version"] == str(SCHEMA_VERSION).encode()
    rows = {r["id"]: r for r in _rows(out)}
    assert sorted(rows) == ["a", "b", "c"]
    assert rows["a"]["hr"] == (src / "a.png").read_bytes()  # untouched 8-bit RGB PNG: stored as is
    assert (rows["b"]["height"], rows["b"]["width"]) == (128, 136)  # mod-cropped, top-left kept
    np.testing.assert_array_equal(_decode(rows["b"]["hr"]), b[:128, :136])
    jpeg = np.asarray(Image.open(src / "c.jpg"))
    np.testing.assert_array_equal(_decode(rows["c"]["hr"]), jpeg)  # JPEG decoded once, stored lossless
    assert all(r["lr"] is None and r["scale"] == 4 and r["source"] == "Set_HR" for r in rows.values())
    assert all(r["image_id"] == r["id"] for r in rows.values())


def test_rows_per_shard_and_file_uri(tmp_path):
    src = tmp_path / "hr"
    src.mkdir()
    for i in range(5):
        _save(_rgb(128, 128, i), src / f"{i:04d}.png")
    out_uri = (tmp_path / "sharded").as_uri()  # file:///...: the s3:// code path on a local disk
    s = prepare_dataset([src.as_uri()], out_uri, rows_per_shard=2)
    assert (s.images, s.shards) == (5, 3)
    m = read_manifest(out_uri)
    assert [len(pq.read_table(p, filesystem=m.filesystem)) for p in m.shards] == [2, 2, 1]
    assert sorted(p.name for p in (tmp_path / "sharded").iterdir()) == [
        MANIFEST_NAME,
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]


def test_conversions_are_reported(tmp_path):
    src = tmp_path / "hr"
    src.mkdir()
    gray = np.random.default_rng(0).integers(0, 256, (128, 128), dtype=np.uint8)
    _save(gray, src / "gray.png")
    rgba = np.dstack([_rgb(128, 128), np.full((128, 128), 255, np.uint8)])
    _save(rgba, src / "opaque.png")
    _save(Image.fromarray(_rgb(128, 128)).quantize(16), src / "palette.png")
    s = prepare_dataset([str(src)], str(tmp_path / "out"))
    assert s.images == 3 and s.skipped == []
    notes = dict(s.converted)
    assert notes[str(src / "gray.png")] == "grayscale (mode L) converted to RGB"
    assert notes[str(src / "opaque.png")] == "RGBA with fully opaque alpha converted to RGB"
    assert notes[str(src / "palette.png")] == "palette image converted to RGB"
    rows = {r["id"]: r for r in _rows(tmp_path / "out")}
    np.testing.assert_array_equal(_decode(rows["gray"]["hr"]), np.dstack([gray] * 3))
    np.testing.assert_array_equal(_decode(rows["opaque"]["hr"]), rgba[..., :3])
    assert any("converted" in line and "gray.png" in line for line in s.lines())


# --------------------------------------------------------------------------- bad data


@pytest.fixture
def bad_folder(tmp_path) -> Path:
    src = tmp_path / "mixed_HR"
    src.mkdir()
    _save(_rgb(128, 128), src / "good.png")
    rgba = np.dstack([_rgb(128, 128), np.full((128, 128), 255, np.uint8)])
    rgba[0, 0, 3] = 10
    _save(rgba, src / "transparent.png")
    pal = Image.fromarray(_rgb(128, 128)).quantize(8)
    _save(pal, src / "paltrans.png", transparency=0)
    _save(_rgb(128, 128), src / "colourkey.png", transparency=(0, 0, 0))
    _save(np.full((128, 128), 40000, np.uint16), src / "gray16.png")
    _png16_rgb(src / "rgb16.png", 128, 128)
    (src / "corrupt.png").write_bytes((src / "good.png").read_bytes()[:300])
    (src / "garbage.jpg").write_bytes(b"not a jpeg at all")
    _save(_rgb(100, 200), src / "small.png")
    (src / "README.txt").write_text("hello")
    (src / ".DS_Store").write_bytes(b"\0")  # hidden files are ignored
    (src / "nested").mkdir()
    return src


EXPECTED_REASONS = {
    "transparent.png": "RGBA image has transparent pixels (min alpha 10)",
    "paltrans.png": "palette image with transparency is not supported",
    "colourkey.png": "RGB image with a transparent colour key (tRNS)",
    "gray16.png": "16-bit",
    "rgb16.png": "16-bit PNG is not supported",
    "corrupt.png": "cannot decode image",
    "garbage.jpg": "cannot decode image",
    "small.png": "image is 200x100 px (WxH), smaller than the minimum side 128 px",
    "README.txt": "not a PNG/JPEG image (extension '.txt')",
    "nested": "subfolder, not searched",
}


def test_every_bad_file_is_skipped_with_its_reason(bad_folder, tmp_path):
    s = prepare_dataset([str(bad_folder)], str(tmp_path / "out"))
    assert s.images == 1 and s.rows == 1
    reasons = {Path(f).name: why for f, why in s.skipped}
    assert set(reasons) == set(EXPECTED_REASONS)
    for name, expected in EXPECTED_REASONS.items():
        assert expected in reasons[name], (name, reasons[name])
    text = "\n".join(s.lines())
    assert "skipped: 10" in text and "rgb16.png: 16-bit PNG is not supported" in text
    assert read_manifest(str(tmp_path / "out")).data["skipped"]  # kept in the manifest too


def test_strict_turns_a_skip_into_an_error(bad_folder, tmp_path):
    with pytest.raises(DataError, match="strict mode"):
        prepare_dataset([str(bad_folder)], str(tmp_path / "out"), strict=True)
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()
    good = tmp_path / "only_bad"
    good.mkdir()
    _save(_rgb(100, 200), good / "small.png")
    _save(_rgb(128, 128), good / "ok.png")
    with pytest.raises(DataError, match=r"small.png: image is 200x100 px .*\(strict mode\)"):
        prepare_dataset([str(good)], str(tmp_path / "out2"), strict=True)
    assert list((tmp_path / "out2").glob("*")) == []  # temp shard removed


def test_min_size_is_configurable(tmp_path):
    src = tmp_path / "hr"
    src.mkdir()
    _save(_rgb(100, 200), src / "small.png")
    s = prepare_dataset([str(src)], str(tmp_path / "out"), min_size=64)
    assert s.images == 1 and s.skipped == []
    with pytest.raises(DataError, match=r"no usable images .* smaller than the minimum side 128"):
        prepare_dataset([str(src)], str(tmp_path / "out2"))


def test_empty_missing_and_imageless_folders_are_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"source folder .*empty is empty"):
        prepare_dataset([str(tmp_path / "empty")], str(tmp_path / "out"))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"source folder .*docs contains no PNG/JPEG images"):
        prepare_dataset([str(tmp_path / "docs")], str(tmp_path / "out"))
    with pytest.raises(DataError, match=r"source folder does not exist: .*nowhere"):
        prepare_dataset([str(tmp_path / "nowhere")], str(tmp_path / "out"))
    with pytest.raises(DataError, match="no source folders"):
        prepare_dataset([], str(tmp_path / "out"))


def test_duplicate_image_ids_are_an_error(tmp_path):
    for name in ("A_HR", "B_HR"):
        (tmp_path / name).mkdir()
        _save(_rgb(128, 128), tmp_path / name / "0001.png")
    with pytest.raises(DataError, match=r"duplicate image id '0001': .*A_HR/0001.png and .*B_HR/0001.png"):
        prepare_dataset([str(tmp_path / "A_HR"), str(tmp_path / "B_HR")], str(tmp_path / "out"))


def test_bad_options_are_errors(tmp_path):
    with pytest.raises(DataError, match="positive multiples of the scale 4"):
        prepare_dataset([str(tmp_path)], str(tmp_path / "o"), subimages=(130, 64))
    with pytest.raises(DataError, match="subimage size 96 is smaller than the minimum side 128"):
        prepare_dataset([str(tmp_path)], str(tmp_path / "o"), subimages=(96, 48))


# --------------------------------------------------------------------------- official LR images


def _div2k(tmp_path: Path, lr_size: tuple[int, int] = (34, 33)) -> tuple[Path, np.ndarray, np.ndarray]:
    hr_dir = tmp_path / "DIV2K_train_HR"
    lr_dir = tmp_path / "DIV2K_train_LR_bicubic" / "X4"
    hr_dir.mkdir()
    lr_dir.mkdir(parents=True)
    hr, lr = _rgb(136, 132, 5), _rgb(*lr_size, 6)
    _save(hr, hr_dir / "0001.png")
    _save(lr, lr_dir / "0001x4.png")
    return hr_dir, hr, lr


def test_div2k_lr_folder_is_detected_and_paired(tmp_path):
    hr_dir, hr, lr = _div2k(tmp_path)
    s = prepare_dataset([str(hr_dir)], str(tmp_path / "out"))
    assert s.with_lr == 1
    (row,) = _rows(tmp_path / "out")
    np.testing.assert_array_equal(_decode(row["lr"]), lr)
    np.testing.assert_array_equal(_decode(row["hr"]), hr)


def test_lr_hr_size_mismatch_names_both_files(tmp_path):
    hr_dir, _, _ = _div2k(tmp_path, lr_size=(34, 32))
    with pytest.raises(DataError) as err:
        prepare_dataset([str(hr_dir)], str(tmp_path / "out"))
    msg = str(err.value)
    assert "LR/HR size mismatch" in msg and "0001x4.png is 32x34 (WxH)" in msg
    assert "x4 = 128x136" in msg and "HR " in msg and "0001.png is 132x136" in msg


def test_missing_lr_counterpart_is_skipped_and_explicit_lr_dirs(tmp_path):
    hr_dir, _, lr = _div2k(tmp_path)
    _save(_rgb(128, 128), hr_dir / "0002.png")
    s = prepare_dataset([str(hr_dir)], str(tmp_path / "out"))
    assert s.images == 1 and "no LR image 0002x4.png" in s.skipped[0][1]
    other = tmp_path / "my_lr"
    other.mkdir()
    _save(lr, other / "0001.png")  # explicit folder: stems may drop the x4 suffix
    _save(_rgb(32, 32), other / "0002.png")
    s = prepare_dataset([str(hr_dir)], str(tmp_path / "out2"), lr_dirs={str(hr_dir): str(other)})
    assert (s.images, s.with_lr, s.skipped) == (2, 2, [])


# --------------------------------------------------------------------------- sub-images


def test_subimages_are_basicsr_crops_with_aligned_lr(tmp_path):
    hr_dir, hr, lr = _div2k(tmp_path)  # HR 136x132, LR 34x33
    s = prepare_dataset([str(hr_dir)], str(tmp_path / "out"), subimages=(128, 64), min_size=32)
    # BasicSR: starts 0, step..., plus a last crop flush with the border: y in {0, 8}, x in {0, 4}.
    rows = _rows(tmp_path / "out")
    assert s.images == 1 and s.rows == 4
    assert [r["id"] for r in rows] == ["0001_s001", "0001_s002", "0001_s003", "0001_s004"]
    assert {r["image_id"] for r in rows} == {"0001"}
    for r, (y, x) in zip(rows, [(0, 0), (0, 4), (8, 0), (8, 4)], strict=True):
        assert (r["height"], r["width"]) == (128, 128)
        np.testing.assert_array_equal(_decode(r["hr"]), hr[y : y + 128, x : x + 128])
        np.testing.assert_array_equal(_decode(r["lr"]), lr[y // 4 : y // 4 + 32, x // 4 : x // 4 + 32])


# --------------------------------------------------------------------------- idempotency


def test_finished_output_is_reused_and_different_requests_are_errors(tmp_path):
    src = tmp_path / "hr"
    src.mkdir()
    _save(_rgb(128, 128), src / "a.png")
    out = tmp_path / "out"
    first = prepare_dataset([str(src)], str(out))
    shard = out / "part-00000.parquet"
    stamp = shard.stat().st_mtime_ns
    again = prepare_dataset([str(src)], str(out))
    assert again.reused and not first.reused
    assert (again.images, again.bytes) == (first.images, first.bytes)
    assert shard.stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match=r"prepared differently \(scale: 4 -> 2; min_size: 128 -> 64\)"):
        prepare_dataset([str(src)], str(out), scale=2)
    _save(_rgb(128, 128, 9), src / "b.png")
    with pytest.raises(DataError, match="input files changed"):
        prepare_dataset([str(src)], str(out))


def test_unfinished_output_is_redone(tmp_path):
    src = tmp_path / "hr"
    src.mkdir()
    _save(_rgb(128, 128), src / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "_tmp-part-00000.parquet").write_bytes(b"half written")
    (out / "part-00007.parquet").write_bytes(b"stale")
    (out / "keep.txt").write_text("not ours")
    s = prepare_dataset([str(src)], str(out))
    assert not s.reused
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME, "keep.txt", "part-00000.parquet"]


def test_read_manifest_needs_a_finished_data_set(tmp_path):
    with pytest.raises(DataError, match=f"is not a finished data set \\(no {MANIFEST_NAME}\\)"):
        read_manifest(str(tmp_path))


# --------------------------------------------------------------------------- the demo set


def test_demo_dataset_is_deterministic_and_split(tmp_path):
    s = write_demo_dataset(str(tmp_path / "d1"))
    assert set(s.parts) == {"train", "val", "test"}
    train, val, test = (_rows(tmp_path / "d1" / part) for part in ("train", "val", "test"))
    assert [r["id"] for r in train] == list(DEMO_TRAIN)
    assert [r["id"] for r in val] == ["chelsea_c256", "coffee_c256"]
    assert [r["id"] for r in test] == [f"{name}_c256" for name in DEMO_TEST]
    assert len(test) >= 10  # what the reports show: enough images that one odd photograph does not decide
    assert all((r["height"], r["width"]) == (256, 256) for r in val + test)
    assert all(r["height"] % 4 == 0 and r["width"] % 4 == 0 and r["source"] == "skimage.data" for r in train)
    assert {r["source"] for r in test} == {"skimage.data", "matplotlib.sample_data"}
    photographs = [{r["image_id"].removesuffix("_c256") for r in rows} for rows in (train, val, test)]
    assert not photographs[0] & photographs[1] and not photographs[0] & photographs[2]
    assert not photographs[1] & photographs[2]  # no photograph trains, selects and reports at once
    grey = next(r for r in test if r["id"] == "camera_c256")  # grey photographs are stacked to RGB
    hr = np.asarray(Image.open(io.BytesIO(grey["hr"])))
    assert hr.shape == (256, 256, 3) and (hr[..., 0] == hr[..., 1]).all() and (hr[..., 1] == hr[..., 2]).all()
    assert write_demo_dataset(str(tmp_path / "d1")).reused
    write_demo_dataset(str(tmp_path / "d2"))
    for part in ("train", "val", "test"):
        a = (tmp_path / "d1" / part / "part-00000.parquet").read_bytes()
        assert a == (tmp_path / "d2" / part / "part-00000.parquet").read_bytes()
