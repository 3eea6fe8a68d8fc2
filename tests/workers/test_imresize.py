"""MATLAB imresize: hand-computed values on ramps, interior linearity, borders, uint8 rounding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workers.imresize import _contributions, cubic, downscale, imresize


def _ramp(n: int, rows: int = 8) -> np.ndarray:
    """Rows of the horizontal ramp 1..n (MATLAB 1-based pixel values)."""
    return np.tile(np.arange(1, n + 1, dtype=np.float64), (rows, 1))


def test_cubic_kernel_is_keys_a_minus_half():
    # Values worked out by hand from (a+2)|x|^3-(a+3)|x|^2+1 and a|x|^3-5a|x|^2+8a|x|-4a, a = -0.5.
    x = np.array([0.0, 0.25, 0.75, 1.0, 1.25, 1.75, 2.0, 2.5])
    expected = [1.0, 0.8671875, 0.2265625, 0.0, -0.0703125, -0.0234375, 0.0, 0.0]
    np.testing.assert_array_equal(cubic(x), expected)
    np.testing.assert_array_equal(cubic(-x), expected)


def test_ramp_8_by_2_matches_hand_computation():
    # Output pixel 1 samples u = 1.5 with the kernel stretched to 8 taps; normalised weights
    # 0.5*cubic(0.5*d) = [-0.01171875, -0.03515625, 0.11328125, 0.43359375] (and mirrored) at
    # input pixels -2..5, which MATLAB's symmetric border maps to 3,2,1,1,2,3,4,5. Hence
    # out(1) = 3a + 2b + c + d + 2d + 3c + 4b + 5a = 1.44921875; out(2) has one mirrored tap
    # (pixel 0 -> 1): 3.5 - 0.01171875. The ramp is antisymmetric about 4.5, so out(5-x) = 9-out(x).
    out = downscale(_ramp(8), 2)
    assert out.shape == (4, 4)
    np.testing.assert_array_equal(out[0], [1.44921875, 3.48828125, 5.51171875, 7.55078125])
    np.testing.assert_array_equal(out, np.tile(out[0], (4, 1)))  # constant columns stay constant


def test_ramp_8_by_4_matches_hand_computation():
    # u = 2.5, 16 taps with weights 0.25*cubic(d/4); an unmirrored ramp would give exactly 2.5.
    # Mirrored taps change the values at pixels -5..0 (v = 1-j instead of j) and 9..10
    # (v = 17-j): correction = sum (1-2j) w_j + sum (17-2j) w_j = -0.14013671875 + 0.01611328125.
    out = downscale(_ramp(8), 4)
    np.testing.assert_array_equal(out[0], [2.3759765625, 6.6240234375])


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_linear_ramp_interior_is_exact(factor):
    # Away from the borders a normalised symmetric kernel reproduces a linear ramp exactly:
    # output pixel x samples u = factor*x - (factor-1)/2 (MATLAB's pixel-centre convention).
    n = 24 * factor
    out = downscale(_ramp(n, rows=factor * 4), factor)
    x = np.arange(1, n // factor + 1)
    u = factor * x - (factor - 1) / 2
    inner = slice(3, -3)  # the kernel spans 4*factor input pixels: 2 output pixels each side
    np.testing.assert_allclose(out[0, inner], u[inner], rtol=0, atol=1e-12)


def test_constant_image_stays_constant_and_uint8_round_trips():
    img = np.full((40, 36, 3), 173, np.uint8)
    out = downscale(img, 4)
    assert out.dtype == np.uint8 and out.shape == (10, 9, 3)
    assert (out == 173).all()


def _dense(n_in: int, factor: int) -> np.ndarray:
    """The (n_in/factor x n_in) resampling matrix of one axis, from MATLAB's contributions."""
    weights, indices = _contributions(n_in, n_in // factor, 1 / factor, True)
    mat = np.zeros((n_in // factor, n_in))
    for k in range(weights.shape[1]):
        np.add.at(mat, (np.arange(mat.shape[0]), indices[:, k]), weights[:, k])
    return mat


def test_uint8_is_clipped_and_rounded_half_up_after_each_pass_like_imresizemex():
    img = np.random.default_rng(3).integers(0, 256, (48, 40), dtype=np.uint8)
    img[:, 16:22], img[:, 22:28] = 0, 255  # a hard edge overshoots both ways: clipping matters
    rows, cols = _dense(48, 4), _dense(40, 4)

    def rnd(x: np.ndarray) -> np.ndarray:
        return np.floor(np.clip(x, 0, 255) + 0.5)

    per_pass = rnd(rnd(rows @ img.astype(np.float64)) @ cols.T).astype(np.uint8)
    once = rnd(rows @ img.astype(np.float64) @ cols.T).astype(np.uint8)
    out = downscale(img, 4)
    np.testing.assert_array_equal(out, per_pass)
    assert (per_pass != once).any()  # the test can tell MATLAB's rounding from BasicSR's
    unclipped = rows @ img.astype(np.float64) @ cols.T
    assert unclipped.min() < 0 and unclipped.max() > 255
    assert out.min() == 0 and out.max() == 255


def test_float_dtype_preserved_and_grayscale_2d():
    img = np.random.default_rng(0).random((32, 48)).astype(np.float32)
    out = downscale(img, 4)
    assert out.dtype == np.float32 and out.shape == (8, 12)


def test_matches_antialiased_bicubic_in_the_interior_but_not_plain_torch_bicubic():
    rng = np.random.default_rng(1)
    img = rng.random((64, 80, 3))
    ours = downscale(img, 4)
    t = torch.from_numpy(img).permute(2, 0, 1)[None]

    def torch_down(antialias: bool) -> np.ndarray:
        y = F.interpolate(t, scale_factor=0.25, mode="bicubic", antialias=antialias, align_corners=False)
        return y[0].permute(1, 2, 0).numpy()

    # torch's antialiased bicubic also uses a = -0.5: identical away from the borders only.
    aa = torch_down(True)
    np.testing.assert_allclose(ours[3:-3, 3:-3], aa[3:-3, 3:-3], atol=1e-9)
    assert np.abs(ours - aa).max() > 1e-3  # borders: symmetric padding vs renormalised kernel
    plain = torch_down(False)  # a = -0.75, no antialiasing: clearly different everywhere
    assert np.abs(ours - plain).mean() > 0.05


def test_imresize_scale_semantics_and_upscaling():
    img = np.random.default_rng(2).random((10, 15))
    assert imresize(img, 0.25).shape == (math.ceil(2.5), math.ceil(3.75))
    up = imresize(np.full((5, 7), 0.5), 2)
    assert up.shape == (10, 14)
    np.testing.assert_allclose(up, 0.5)
    np.testing.assert_allclose(imresize(img[:, :14], 0.5), downscale(img[:, :14], 2))


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"not a multiple of the scale 4; mod-crop it first \(to 8x12\)"):
        downscale(np.zeros((10, 13, 3)), 4)
    with pytest.raises(TypeError, match="uint8 or floating-point"):
        downscale(np.zeros((8, 8), np.int32), 2)
    with pytest.raises(ValueError, match="positive integer"):
        downscale(np.zeros((8, 8)), 0)
    with pytest.raises(ValueError, match="scale must be > 0"):
        imresize(np.zeros((8, 8)), -1)
