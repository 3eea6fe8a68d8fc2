"""workers.evaluate's baselines and workers.comparison's picture, on the built-in photographs.

Bicubic is checked by hand twice: the upscaling itself against MATLAB's separable cubic formula
written out per pixel, and the PSNR of a bicubic image against a planted, computable error.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from search_space.derived import build_network
from search_space.genotype import Genotype, OpChoice
from search_space.teacher import RRDBNet
from workers.comparison import comparison_for_sets, comparison_image, hardest_window
from workers.evaluate import (
    bicubic_upscale,
    evaluate_bicubic,
    evaluate_network,
    evaluate_sets,
    load_supervision_teacher,
)
from workers.imresize import cubic, imresize
from workers.pipeline import val_pairs
from workers.validation import evaluate_pairs

TINY = Genotype(
    backbone="B",
    path=(0,),
    cells=((OpChoice("conv3x3", 8),) * 4 + (OpChoice("conv3x3", 16),),),
    nf=16,
    scale=4,
    name="tiny",
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny convolutions on 2 shared cores: a second intra-op thread only spins."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _matlab_upscale_pixel(img: np.ndarray, y: int, x: int, scale: int) -> float:
    """MATLAB imresize(img, scale) at 0-based output pixel (y, x), written out: Σ cubic(u-i)·cubic(v-j)·img."""
    u = (y + 1) / scale + 0.5 * (1 - 1 / scale)  # 1-based input coordinate
    v = (x + 1) / scale + 0.5 * (1 - 1 / scale)
    total = 0.0
    for i in range(math.floor(u) - 2, math.floor(u) + 4):
        for j in range(math.floor(v) - 2, math.floor(v) + 4):
            total += float(cubic(np.array(u - i)) * cubic(np.array(v - j))) * img[i - 1, j - 1]
    return total


def test_bicubic_upscaling_matches_matlabs_formula_by_hand():
    img = np.random.default_rng(0).random((9, 11))
    up = imresize(img, 4)
    assert up.shape == (36, 44)
    for y, x in [(10, 12), (17, 30), (20, 21), (25, 19)]:  # interior: every tap inside the image
        assert up[y, x] == pytest.approx(_matlab_upscale_pixel(img, y, x, 4), abs=1e-12)


def test_bicubic_psnr_of_a_planted_error_is_computed_by_hand():
    lr = np.random.default_rng(1).integers(0, 246, (10, 12, 3), dtype=np.uint8)
    hr = bicubic_upscale(lr, 4).copy()
    assert hr.shape == (40, 48, 3) and hr.dtype == np.uint8
    assert evaluate_bicubic([(lr, hr)], 4)["val_psnr"] == math.inf  # the baseline reproduces itself
    hr[20, 20] = np.minimum(hr[20, 20].astype(int) + 10, 255)  # one pixel, +10 on each channel
    delta = np.array(hr[20, 20], dtype=float) - bicubic_upscale(lr, 4)[20, 20]
    dy = (65.481 * delta[0] + 128.553 * delta[1] + 24.966 * delta[2]) / 255  # Y moves by this much
    pixels = (40 - 8) * (48 - 8)  # crop 4 px per border
    expected = 10 * math.log10(255**2 / (dy**2 / pixels))
    assert evaluate_bicubic([(lr, hr)], 4)["val_psnr"] == pytest.approx(expected, abs=1e-9)


def test_bicubic_rejects_what_is_not_an_8bit_rgb_image():
    with pytest.raises(ValueError, match=r"uint8 HxWx3 image, got float64 of shape \(4, 4, 3\)"):
        bicubic_upscale(np.zeros((4, 4, 3)), 4)


def test_evaluate_network_returns_bicubic_and_teacher_rows_on_the_same_images(demo_data):
    torch.manual_seed(0)
    net = build_network(TINY).eval()
    teacher = RRDBNet(nf=8, nb=1, gc=4).eval()
    val = {"demo": f"{demo_data}/val"}
    metrics = evaluate_network(net, val, 4, max_images=1, latency_repeats=0, teacher=teacher)
    assert set(metrics) == {
        "params_m",
        "gflops",
        *(f"{m}/demo" for m in ("psnr", "ssim", "psnr_bicubic", "ssim_bicubic", "psnr_teacher", "ssim_teacher")),
    }
    pairs = val_pairs(val["demo"], 4)[:1]
    assert metrics["psnr_bicubic/demo"] == evaluate_bicubic(pairs, 4)["val_psnr"]
    assert 20 < metrics["psnr_bicubic/demo"] < 40 and 0 < metrics["ssim_bicubic/demo"] < 1
    assert metrics["psnr_teacher/demo"] == evaluate_pairs(teacher, pairs, 4)["val_psnr"]
    without = evaluate_network(net, val, 4, max_images=1, latency_repeats=0)
    assert not any("teacher" in key for key in without)
    assert without["psnr_bicubic/demo"] == metrics["psnr_bicubic/demo"]


def test_evaluate_sets_keeps_every_images_scores_behind_the_means(demo_data):
    torch.manual_seed(0)
    net = build_network(TINY).eval()
    evaluation = evaluate_sets(net, {"demo": f"{demo_data}/val"}, 4, latency_repeats=0)
    rows = evaluation.per_image
    assert [(r["image_id"], r["network"]) for r in rows] == [
        ("chelsea_c256", "ours"), ("coffee_c256", "ours"), ("chelsea_c256", "bicubic"), ("coffee_c256", "bicubic"),
    ]  # fmt: skip
    for network, key in (("ours", "psnr/demo"), ("bicubic", "psnr_bicubic/demo")):
        psnrs = [r["psnr"] for r in rows if r["network"] == network]
        assert evaluation.metrics[key] == pytest.approx(sum(psnrs) / len(psnrs), abs=1e-12)
    pairs = val_pairs(f"{demo_data}/val", 4)
    assert rows[3]["psnr"] == evaluate_bicubic(pairs[1:], 4)["val_psnr"]  # coffee's own bicubic score
    table = evaluation.table()
    assert list(table) == ["set", "image_id", "network", "psnr", "ssim"] and len(table["psnr"]) == 4


def test_supervision_teacher_is_loaded_only_for_a_teacher(tmp_path):
    assert load_supervision_teacher({"kind": "hr", "weights": None}) is None
    with pytest.raises(ValueError, match=r"supervision\.weights: a teacher needs a weights file"):
        load_supervision_teacher({"kind": "teacher", "weights": None})
    torch.manual_seed(0)
    small = RRDBNet(nf=8, nb=1, gc=4)
    torch.save(small.state_dict(), tmp_path / "teacher.pth")
    loaded = load_supervision_teacher(
        {"kind": "teacher", "weights": str(tmp_path / "teacher.pth"), "nb": 1, "nf": 8, "gc": 4}
    )
    x = torch.rand(1, 3, 6, 6)
    torch.testing.assert_close(loaded(x), small(x))


def test_hardest_window_finds_a_planted_error():
    reference = np.full((64, 80, 3), 128, dtype=np.uint8)
    approximation = reference.copy()
    approximation[40:56, 48:64] = 0
    assert hardest_window(reference, approximation, 16, step=4) == (40, 48)  # the one window covering it all
    assert hardest_window(reference, approximation, 200, step=4) == (0, 0)  # larger than the image: all of it


def test_comparison_image_has_a_row_per_image(demo_data):
    torch.manual_seed(0)
    net = build_network(TINY).eval()
    one = comparison_image(net, val_pairs(f"{demo_data}/val", 4)[:1], 4, set_name="demo")
    two = comparison_for_sets(net, {"demo": f"{demo_data}/val"}, 4, max_images=2)
    assert one.dtype == np.uint8 and one.ndim == 3 and one.shape[2] == 3
    assert two is not None and two.shape[1] == one.shape[1] and two.shape[0] > 1.8 * one.shape[0]
    assert one.std() > 10  # pictures, not a blank canvas
    assert comparison_for_sets(net, {}, 4) is None
    with pytest.raises(ValueError, match="validation set 'demo' has no images"):
        comparison_image(net, [], 4, set_name="demo")
