"""Tests for workers.metrics: MATLAB Y conversion, Y-PSNR / Y-SSIM with BasicSR conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from workers.metrics import batch_psnr_y, batch_ssim_y, psnr_y, quantize_to_8bit, rgb_to_y, ssim_y

_Y_WHITE = 16.0 + 65.481 + 128.553 + 24.966  # = 235.0


def _gray(h: int, w: int, level: int) -> np.ndarray:
    """HWC image with R = G = B = level / 255 (exactly representable as 8-bit)."""
    return np.full((h, w, 3), level / 255.0)


def _hand_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """BasicSR/MATLAB SSIM on 0-255 float images: 11x11 Gaussian (σ=1.5), 'valid' windows, mean."""
    x = np.arange(11) - 5
    g1 = np.exp(-(x**2) / (2 * 1.5**2))
    g1 /= g1.sum()
    win = np.outer(g1, g1)

    def filt(img: np.ndarray) -> np.ndarray:
        views = np.lib.stride_tricks.sliding_window_view(img, (11, 11))
        return np.einsum("ijkl,kl->ij", views, win)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu1, mu2 = filt(a), filt(b)
    s11 = filt(a * a) - mu1**2
    s22 = filt(b * b) - mu2**2
    s12 = filt(a * b) - mu1 * mu2
    ssim_map = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s11 + s22 + c2))
    return float(ssim_map.mean())


# ------------------------------------------------------------------------------------------ rgb_to_y


@pytest.mark.parametrize(
    ("rgb", "y"),
    [
        ((0, 0, 0), 16.0),
        ((1, 1, 1), _Y_WHITE),
        ((1, 0, 0), 16.0 + 65.481),
        ((0, 1, 0), 16.0 + 128.553),
        ((0, 0, 1), 16.0 + 24.966),
        ((0.5, 0.25, 1.0), 16.0 + 0.5 * 65.481 + 0.25 * 128.553 + 24.966),
    ],
)
def test_rgb_to_y_pure_colours(rgb: tuple[float, float, float], y: float) -> None:
    arr = np.broadcast_to(np.array(rgb, dtype=np.float64), (2, 3, 3))
    out = rgb_to_y(arr)
    assert out.shape == (2, 3)
    np.testing.assert_allclose(out, y, rtol=0, atol=1e-12)
    t = torch.tensor(rgb, dtype=torch.float64).view(3, 1, 1).expand(3, 2, 3)
    tout = rgb_to_y(t)
    assert tout.shape == (2, 3)
    torch.testing.assert_close(tout, torch.full((2, 3), y, dtype=torch.float64))
    assert pytest.approx(235.0) == _Y_WHITE


def test_rgb_to_y_batched_tensor_and_no_rounding() -> None:
    t = torch.full((2, 3, 4, 5), 1.0 / 255.0, dtype=torch.float64)
    out = rgb_to_y(t)
    assert out.shape == (2, 4, 5)
    torch.testing.assert_close(out, torch.full((2, 4, 5), 16.0 + 219.0 / 255.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="3, H, W"):
        rgb_to_y(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="H, W, 3"):
        rgb_to_y(np.zeros((3, 4, 4)))


# ----------------------------------------------------------------------------------------- quantise


def test_quantize_to_8bit() -> None:
    x = np.array([-0.2, 0.0, 0.4 / 255, 0.6 / 255, 100.3 / 255, 100.7 / 255, 1.0, 1.3])
    expected = np.array([0, 0, 0, 1, 100, 101, 255, 255]) / 255.0
    np.testing.assert_allclose(quantize_to_8bit(x), expected, rtol=0, atol=1e-15)
    t = quantize_to_8bit(torch.tensor(x, dtype=torch.float32))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), expected, atol=1e-7)


# --------------------------------------------------------------------------------------------- PSNR


def test_psnr_constant_offset_hand_value() -> None:
    hr = _gray(16, 16, 100)
    sr = _gray(16, 16, 110)
    dy = 10 / 255 * 219.0  # gray offset d in [0,1] moves Y by d * (65.481 + 128.553 + 24.966) = 219 d
    expected = 10 * math.log10(255**2 / dy**2)
    assert psnr_y(sr, hr, crop=4) == pytest.approx(expected, rel=1e-12)
    assert psnr_y(sr, hr, crop=0) == pytest.approx(expected, rel=1e-12)
    # Same in torch CHW layout.
    to_t = lambda a: torch.from_numpy(a).permute(2, 0, 1).float()  # noqa: E731
    assert psnr_y(to_t(sr), to_t(hr)) == pytest.approx(expected, rel=1e-6)


def test_psnr_only_red_channel_offset() -> None:
    hr = _gray(12, 12, 50)
    sr = hr.copy()
    sr[..., 0] = 80 / 255  # red +30 levels -> ΔY = 30/255 * 65.481
    dy = 30 / 255 * 65.481
    assert psnr_y(sr, hr, crop=2) == pytest.approx(20 * math.log10(255 / dy), rel=1e-12)


def test_psnr_crop_behaviour() -> None:
    h = w = 20
    hr = _gray(h, w, 100)
    sr = hr.copy()
    sr[:4, :, :] = 120 / 255  # differences only in the top 4 rows
    assert psnr_y(sr, hr, crop=4) == math.inf
    dy = 20 / 255 * 219.0
    mse = (4 * w) * dy**2 / (h * w)
    assert psnr_y(sr, hr, crop=0) == pytest.approx(10 * math.log10(255**2 / mse), rel=1e-12)
    # crop=3 keeps one of the differing rows out of 14.
    mse3 = (1 * 14) * dy**2 / (14 * 14)
    assert psnr_y(sr, hr, crop=3) == pytest.approx(10 * math.log10(255**2 / mse3), rel=1e-12)
    with pytest.raises(ValueError, match="crop"):
        psnr_y(sr, hr, crop=10)
    with pytest.raises(ValueError, match="crop"):
        psnr_y(sr, hr, crop=-1)


def test_psnr_identical_is_inf() -> None:
    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3)) / 255.0
    assert psnr_y(img, img) == math.inf


def test_psnr_quantisation_effect() -> None:
    rng = np.random.default_rng(1)
    hr = rng.integers(0, 256, (16, 16, 3)) / 255.0
    sr = hr + 0.3 / 255  # below half a level: disappears once saved as 8-bit
    assert psnr_y(sr, hr) == math.inf
    dy = 0.3 / 255 * 219.0
    assert psnr_y(sr, hr, quantize=False) == pytest.approx(20 * math.log10(255 / dy), rel=1e-9)
    # Out-of-range values are clamped before saving.
    white = _gray(16, 16, 255)
    assert psnr_y(white * 1.2, white) == math.inf
    assert psnr_y(white * 1.2, white, quantize=False) < 100


def test_psnr_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(3, 16, 16\).*\(3, 16, 12\)"):
        psnr_y(torch.zeros(3, 16, 16), torch.zeros(3, 16, 12))
    with pytest.raises(ValueError, match=r"\(16, 16, 3\).*\(12, 16, 3\)"):
        ssim_y(np.zeros((16, 16, 3)), np.zeros((12, 16, 3)))
    with pytest.raises(ValueError, match="3, H, W"):
        psnr_y(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16))


# --------------------------------------------------------------------------------------------- SSIM


def test_ssim_identical_is_one() -> None:
    img = np.random.default_rng(2).integers(0, 256, (24, 24, 3)) / 255.0
    assert ssim_y(img, img) == pytest.approx(1.0, abs=1e-12)


def test_ssim_matches_hand_formula() -> None:
    rng = np.random.default_rng(3)
    hr = rng.integers(0, 256, (26, 24, 3)) / 255.0
    sr = np.clip(hr + rng.normal(0, 0.1, hr.shape), 0, 1)
    hr_y = rgb_to_y(hr)[4:-4, 4:-4]
    sr_y = rgb_to_y(quantize_to_8bit(sr))[4:-4, 4:-4]
    expected = _hand_ssim(sr_y, hr_y)
    assert 0.1 < expected < 0.99
    assert ssim_y(sr, hr, crop=4) == pytest.approx(expected, rel=1e-10)
    # Without quantisation the hand value changes accordingly.
    expected_raw = _hand_ssim(rgb_to_y(sr)[4:-4, 4:-4], hr_y)
    assert ssim_y(sr, hr, crop=4, quantize=False) == pytest.approx(expected_raw, rel=1e-10)


def test_ssim_constant_images_closed_form() -> None:
    a, b = 100, 140
    ya, yb = 16 + 219 * a / 255, 16 + 219 * b / 255
    c1 = (0.01 * 255) ** 2
    expected = (2 * ya * yb + c1) / (ya**2 + yb**2 + c1)  # zero variance: structure term is C2/C2
    assert ssim_y(_gray(20, 20, a), _gray(20, 20, b), crop=4) == pytest.approx(expected, rel=1e-12)


def test_ssim_too_small_after_crop() -> None:
    with pytest.raises(ValueError, match="11x11"):
        ssim_y(_gray(18, 18, 10), _gray(18, 18, 10), crop=4)


# -------------------------------------------------------------------------------------------- batch


def test_batch_metrics_match_single_image() -> None:
    g = torch.Generator().manual_seed(0)
    hr = torch.randint(0, 256, (3, 3, 24, 24), generator=g).float() / 255
    sr = (hr + 0.05 * torch.randn(3, 3, 24, 24, generator=g)).clamp(0, 1)
    sr[1] = hr[1]
    psnrs = batch_psnr_y(sr, hr, 4)
    assert len(psnrs) == 3 and all(isinstance(v, float) for v in psnrs)
    assert psnrs[1] == math.inf
    for i in (0, 2):
        assert psnrs[i] == psnr_y(sr[i], hr[i], 4)
        hwc = lambda t: t.permute(1, 2, 0).numpy()  # noqa: E731
        assert psnrs[i] == pytest.approx(psnr_y(hwc(sr[i]), hwc(hr[i])))
    ssims = batch_ssim_y(sr, hr)
    assert ssims[1] == pytest.approx(1.0)
    assert ssims[0] == ssim_y(sr[0], hr[0])
    with pytest.raises(ValueError, match=r"\(3, 3, 24, 24\).*\(3, 3, 24, 20\)"):
        batch_psnr_y(sr, hr[..., :20])
    with pytest.raises(ValueError, match="N, 3, H, W"):
        batch_psnr_y(sr[0], hr[0])
