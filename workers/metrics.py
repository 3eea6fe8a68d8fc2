"""Y-channel PSNR / SSIM for super-resolution, following the BasicSR / AGD evaluation convention.

Why (method.md §3 "Evaluation", §7): TrilevelNAS is evaluated with AGD's ``util_gan/psnr.py``, which
matches BasicSR ``calculate_psnr/calculate_ssim(crop_border=scale, test_y_channel=True)``:

1. The SR output is saved as an 8-bit PNG (torchvision ``save_image``: clamp to [0, 1], then
   ``floor(x * 255 + 0.5)``) and reloaded, so we quantise the SR image the same way
   (:func:`quantize_to_8bit`). The HR image comes from an 8-bit PNG, so it is snapped to the same grid:
   a no-op for exact k/255 values, but it removes float32 representation error (``float32(k/255)``
   differs from ``k/255`` by ~1e-8, which would otherwise turn identical images into ~160 dB instead
   of inf). ``quantize=False`` skips both (raw float metric).
2. Y = 16 + 65.481 R + 128.553 G + 24.966 B for RGB in [0, 1] (MATLAB ``rgb2ycbcr``, BT.601), giving Y in
   [16, 235] on the 0-255 scale, kept as float (no rounding). Grayscale images are not accepted:
   replicate them to RGB first (as ``cv2.imread`` does in the reference pipeline).
3. ``crop`` pixels (= the scale, 4) are removed from every border before the metric.
4. PSNR uses peak 255. Identical images give ``float('inf')`` (as BasicSR); averaging over a set then
   gives inf too, which only happens for a perfect reconstruction.
5. SSIM (BasicSR / MATLAB ``ssim.m``): 11x11 Gaussian window with σ = 1.5, population statistics,
   C1 = (0.01·255)², C2 = (0.03·255)², mean over the "valid" window positions. This is exactly
   scikit-image ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
   data_range=255)`` (it filters with reflect padding and then drops the 5-pixel border before averaging).

Input layout is decided by type: ``torch.Tensor`` images are ``[3, H, W]`` (batches ``[N, 3, H, W]``
for the ``batch_*`` helpers), ``numpy.ndarray`` images are ``[H, W, 3]``; values are float RGB in [0, 1].
All computation runs in float64 on the CPU.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "batch_psnr_y",
    "batch_ssim_y",
    "psnr_y",
    "quantize_to_8bit",
    "rgb_to_y",
    "ssim_y",
]

Image = Tensor | np.ndarray

# MATLAB rgb2ycbcr (BT.601, studio swing) Y row, for RGB in [0, 1] -> Y in [16, 235].
_Y_COEFFS = (65.481, 128.553, 24.966)
_Y_OFFSET = 16.0
_PEAK = 255.0
_SSIM_WIN = 11  # skimage: 2 * int(3.5 * 1.5 + 0.5) + 1 with gaussian_weights=True, sigma=1.5


def quantize_to_8bit(img: Image) -> Image:
    """Quantise a [0, 1] float image as an 8-bit PNG would store it: ``floor(clip(x, 0, 1)·255 + 0.5) / 255``.

    Same as torchvision ``save_image`` (``mul(255).add_(0.5).clamp_(0, 255).to(uint8)``) reloaded as /255.
    Returns the same type as the input (tensors keep dtype and device; arrays become float64).
    """
    if isinstance(img, Tensor):
        x = img.detach()
        if not x.is_floating_point():
            x = x.to(torch.float32)
        return torch.floor(x.clamp(0.0, 1.0) * 255.0 + 0.5) / 255.0
    if isinstance(img, np.ndarray):
        return np.floor(np.clip(img.astype(np.float64), 0.0, 1.0) * 255.0 + 0.5) / 255.0
    raise TypeError(f"expected a torch.Tensor or numpy.ndarray, got {type(img).__name__}")


def rgb_to_y(img: Image) -> Image:
    """Luma Y on the 0-255 scale, MATLAB ``rgb2ycbcr``: ``16 + 65.481 R + 128.553 G + 24.966 B``.

    ``img`` holds RGB in [0, 1]: a tensor ``[..., 3, H, W]`` (returns ``[..., H, W]``, float dtype kept,
    other dtypes become float32) or an array ``[..., H, W, 3]`` (returns ``[..., H, W]`` float64).
    No rounding is applied.
    """
    r_c, g_c, b_c = _Y_COEFFS
    if isinstance(img, Tensor):
        if img.ndim < 3 or img.shape[-3] != 3:
            raise ValueError(f"rgb_to_y: tensor must be [..., 3, H, W] RGB, got shape {tuple(img.shape)}")
        x = img if img.is_floating_point() else img.to(torch.float32)
        return _Y_OFFSET + r_c * x[..., 0, :, :] + g_c * x[..., 1, :, :] + b_c * x[..., 2, :, :]
    if isinstance(img, np.ndarray):
        if img.ndim < 3 or img.shape[-1] != 3:
            raise ValueError(f"rgb_to_y: array must be [..., H, W, 3] RGB, got shape {img.shape}")
        x = img.astype(np.float64)
        return _Y_OFFSET + r_c * x[..., 0] + g_c * x[..., 1] + b_c * x[..., 2]
    raise TypeError(f"rgb_to_y: expected a torch.Tensor or numpy.ndarray, got {type(img).__name__}")


def _as_hwc(img: Image, name: str) -> np.ndarray:
    """One image as a float64 ``[H, W, 3]`` array (tensor ``[3, H, W]`` or array ``[H, W, 3]``)."""
    if isinstance(img, Tensor):
        if img.ndim != 3 or img.shape[0] != 3:
            raise ValueError(f"{name}: tensor image must be [3, H, W] RGB, got shape {tuple(img.shape)}")
        return img.detach().to(device="cpu", dtype=torch.float64).permute(1, 2, 0).numpy()
    if isinstance(img, np.ndarray):
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"{name}: array image must be [H, W, 3] RGB, got shape {img.shape}")
        return img.astype(np.float64)
    raise TypeError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {type(img).__name__}")


def _shape(img: Image) -> tuple[int, ...]:
    return tuple(img.shape)


def _y_pair(sr: Image, hr: Image, crop: int, quantize: bool, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Quantise SR and HR to 8 bits, convert both to Y (float64, 0-255), crop ``crop`` px from each border."""
    sr_a = _as_hwc(sr, f"{what} sr")
    hr_a = _as_hwc(hr, f"{what} hr")
    if sr_a.shape != hr_a.shape:
        raise ValueError(
            f"{what}: sr and hr differ in size: sr shape {_shape(sr)} vs hr shape {_shape(hr)} "
            f"(as HWC: {sr_a.shape} vs {hr_a.shape})"
        )
    if not isinstance(crop, int | np.integer) or crop < 0:
        raise ValueError(f"{what}: crop must be a non-negative int, got {crop!r}")
    h, w = sr_a.shape[:2]
    if h - 2 * crop <= 0 or w - 2 * crop <= 0:
        raise ValueError(f"{what}: crop={crop} leaves nothing of a {h}x{w} image")
    if quantize:
        sr_a, hr_a = quantize_to_8bit(sr_a), quantize_to_8bit(hr_a)
    sr_y, hr_y = rgb_to_y(sr_a), rgb_to_y(hr_a)
    if crop:
        sr_y, hr_y = sr_y[crop:-crop, crop:-crop], hr_y[crop:-crop, crop:-crop]
    return sr_y, hr_y


def psnr_y(sr: Image, hr: Image, crop: int = 4, *, quantize: bool = True) -> float:
    """Y-channel PSNR (dB, peak 255) after cropping ``crop`` px per border; BasicSR/AGD convention.

    Both images are quantised to 8 bits first, as saved PNGs (``quantize=False`` to skip).
    Identical images → ``inf``.
    Raises ``ValueError`` if the shapes differ (naming both) or the crop leaves no pixels.
    """
    sr_y, hr_y = _y_pair(sr, hr, crop, quantize, "psnr_y")
    mse = float(np.mean((sr_y - hr_y) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(_PEAK * _PEAK / mse)


def ssim_y(sr: Image, hr: Image, crop: int = 4, *, quantize: bool = True) -> float:
    """Y-channel SSIM (MATLAB/BasicSR: 11x11 Gaussian σ=1.5, data range 255) after cropping ``crop`` px.

    Both images are quantised to 8 bits first, as saved PNGs (``quantize=False`` to skip).
    Identical images → 1.0.
    The cropped image must be at least 11x11. Raises ``ValueError`` on shape mismatch (naming both).
    """
    from skimage.metrics import structural_similarity  # 0.4 s of scipy: only evaluation needs it, not training

    sr_y, hr_y = _y_pair(sr, hr, crop, quantize, "ssim_y")
    if min(sr_y.shape) < _SSIM_WIN:
        raise ValueError(f"ssim_y: cropped Y image {sr_y.shape} is smaller than the {_SSIM_WIN}x{_SSIM_WIN} window")
    return float(
        structural_similarity(
            sr_y, hr_y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=_PEAK
        )
    )


def _check_batch(sr: Tensor, hr: Tensor, what: str) -> None:
    if not isinstance(sr, Tensor) or not isinstance(hr, Tensor):
        raise TypeError(f"{what}: expected torch tensors, got {type(sr).__name__} and {type(hr).__name__}")
    if sr.shape != hr.shape:
        raise ValueError(f"{what}: sr shape {tuple(sr.shape)} != hr shape {tuple(hr.shape)}")
    if sr.ndim != 4:
        raise ValueError(f"{what}: expected [N, 3, H, W] batches, got shape {tuple(sr.shape)}")


def batch_psnr_y(sr: Tensor, hr: Tensor, crop: int = 4, *, quantize: bool = True) -> list[float]:
    """:func:`psnr_y` for each image of ``[N, 3, H, W]`` batches (validation loops); one float per image."""
    _check_batch(sr, hr, "batch_psnr_y")
    sr_c, hr_c = sr.detach().cpu(), hr.detach().cpu()
    return [psnr_y(s, h, crop, quantize=quantize) for s, h in zip(sr_c, hr_c, strict=True)]


def batch_ssim_y(sr: Tensor, hr: Tensor, crop: int = 4, *, quantize: bool = True) -> list[float]:
    """:func:`ssim_y` for each image of ``[N, 3, H, W]`` batches; one float per image."""
    _check_batch(sr, hr, "batch_ssim_y")
    sr_c, hr_c = sr.detach().cpu(), hr.detach().cpu()
    return [ssim_y(s, h, crop, quantize=quantize) for s, h in zip(sr_c, hr_c, strict=True)]
