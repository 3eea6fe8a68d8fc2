"""`trilevel data prepare|demo|info` as a user runs it: summaries, skip reasons, clean errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from orchestrator.cli.data import data


def _folder(tmp_path: Path) -> Path:
    src = tmp_path / "Mine_HR"
    src.mkdir()
    rng = np.random.default_rng(0)
    for name in ("0001", "0002"):
        Image.fromarray(rng.integers(0, 256, (136, 132, 3), dtype=np.uint8)).save(src / f"{name}.png")
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(src / "tiny.png")
    (src / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    return src


def test_prepare_prints_the_summary_with_reasons(tmp_path):
    src = _folder(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(data, ["prepare", str(src), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"{out}: written" in result.stdout
    assert "images: 2 (2 rows, 0 with official LR)" in result.stdout
    assert "shards: 1, bytes:" in result.stdout
    assert "skipped: 2" in result.stdout
    assert "broken.jpg: cannot decode image" in result.stdout
    assert "tiny.png: image is 64x64 px (WxH), smaller than the minimum side 128 px" in result.stdout
    assert "skipped" in result.stderr and "tiny.png" in result.stderr  # echoed while it runs

    again = CliRunner().invoke(data, ["prepare", str(src), "--out", str(out)])
    assert again.exit_code == 0 and "already prepared, reused" in again.stdout


def test_prepare_strict_and_bad_input_are_clean_errors(tmp_path):
    src = _folder(tmp_path)
    result = CliRunner().invoke(data, ["prepare", str(src), "--out", str(tmp_path / "o"), "--strict"])
    assert result.exit_code == 1
    assert "Error: " in result.output and "(strict mode)" in result.output
    assert "Traceback" not in result.output

    result = CliRunner().invoke(data, ["prepare", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "Error: source folder does not exist:" in result.output and "Traceback" not in result.output

    CliRunner().invoke(data, ["prepare", str(src), "--out", str(tmp_path / "o2")])
    result = CliRunner().invoke(data, ["prepare", str(src), "--out", str(tmp_path / "o2"), "--scale", "2"])
    assert result.exit_code == 1 and "prepared differently (scale: 4 -> 2" in result.output


def test_prepare_option_parsing(tmp_path):
    src = _folder(tmp_path)
    bad = CliRunner().invoke(data, ["prepare", str(src), "--out", str(tmp_path / "o"), "--subimages", "480"])
    assert bad.exit_code == 2 and "expected SIZE/STEP such as 480/240" in bad.output
    bad = CliRunner().invoke(data, ["prepare", str(src), "--out", str(tmp_path / "o"), "--lr-dir", "nolr"])
    assert bad.exit_code == 2 and "expected SRC=LR_DIR" in bad.output
    bad = CliRunner().invoke(data, ["prepare", "--out", str(tmp_path / "o")])
    assert bad.exit_code == 2 and "Missing argument 'SOURCES...'" in bad.output
    bad = CliRunner().invoke(data, ["prepare", str(src), "--out", str(tmp_path / "o"), "--encoding", "jpeg"])
    assert bad.exit_code == 2 and "Invalid value for '--encoding': 'jpeg' is not one of 'png', 'raw'" in bad.output

    options = ["--subimages", "128/64", "--encoding", "raw", "--json"]
    result = CliRunner().invoke(data, ["prepare", str(src), "--out", (tmp_path / "s").as_uri(), *options])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["images"], summary["rows"]) == (2, 8)  # 2x2 BasicSR crops each
    assert {Path(f).name for f, _ in summary["skipped"]} == {"broken.jpg", "tiny.png"}
    info = CliRunner().invoke(data, ["info", str(tmp_path / "s")])
    assert info.exit_code == 0 and "0 rows with stored LR, raw pixels" in info.output


def test_demo_and_info(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(data, ["demo", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "images: 18" in result.stdout
    assert "train: 6 images, 6 rows, 1 shards" in result.stdout
    assert "val: 2 images, 2 rows, 1 shards" in result.stdout
    assert "test: 10 images, 10 rows, 1 shards" in result.stdout

    info = CliRunner().invoke(data, ["info", str(out / "train")])
    assert info.exit_code == 0, info.output
    assert "6 images, 6 rows, 1 shards" in info.output and "png pixels" in info.output
    assert "chi_1 (weights) 3 images, chi_2 (architecture) 3 images" in info.output

    missing = CliRunner().invoke(data, ["info", str(tmp_path)])
    assert missing.exit_code == 1 and "is not a finished data set" in missing.output
