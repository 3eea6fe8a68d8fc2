"""MATLAB-faithful bicubic ``imresize``, the resize that made the official DIV2K/Set5/Set14 LR images.

Why not torch or PIL: ``torch.nn.functional.interpolate(mode="bicubic")`` uses a = -0.75 and no
antialiasing, and PIL handles borders and rounding differently, so LR images made with them shift
PSNR (method.md §7). This module follows MATLAB's ``imresize.m`` step by step:

- cubic kernel with a = -0.5 (Keys), kernel width 4;
- when shrinking (scale < 1) the kernel is stretched by 1/scale and scaled by ``scale``
  (antialiasing), so it spans ``4/scale`` input pixels;
- output pixel x (1-based) samples input coordinate ``u = x/scale + 0.5*(1 - 1/scale)``;
- weights are normalised to sum to 1 per output pixel;
- out-of-range taps mirror with MATLAB's ``'symmetric'`` rule (edge pixel repeated:
  ``[1..n, n..1]`` periodically);
- the two axes are resized one after the other, the one with the smaller scale first (rows first on
  a tie), and for ``uint8`` input every pass is clipped to [0, 255] and rounded half up to
  ``uint8``, as ``imresizemex`` does. BasicSR's ``matlab_functions.imresize`` rounds once at the
  end instead; the two differ by at most one grey level on a few pixels.

The weights and indices per axis are precomputed once per (input length, output length, scale) and
applied as a short loop over the kernel taps, each a vectorised gather + multiply-add over the whole
image.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

__all__ = ["cubic", "downscale", "imresize"]

_KERNEL_WIDTH = 4.0


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5, exactly as MATLAB's ``cubic``."""
    absx = np.abs(x)
    absx2 = absx * absx
    absx3 = absx2 * absx
    inner = (1.5 * absx3 - 2.5 * absx2 + 1.0) * (absx <= 1)
    outer = (-0.5 * absx3 + 2.5 * absx2 - 4.0 * absx + 2.0) * ((absx > 1) & (absx <= 2))
    return inner + outer


@lru_cache(maxsize=256)
def _contributions(in_length: int, out_length: int, scale: float, antialiasing: bool) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB ``contributions``: per output pixel, the 0-based input indices and their weights.

    Returns ``(weights, indices)``, both shaped ``(out_length, taps)``, read-only. Taps whose weight
    is zero for every output pixel are dropped, as MATLAB does.
    """
    kernel_width = _KERNEL_WIDTH
    shrink = scale < 1 and antialiasing
    if shrink:
        kernel_width = kernel_width / scale
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - kernel_width / 2.0)
    taps = math.ceil(kernel_width) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # 1-based, may be out of range
    distance = u[:, None] - indices
    weights = scale * cubic(scale * distance) if shrink else cubic(distance)
    weights = weights / weights.sum(axis=1, keepdims=True)
    # MATLAB 'symmetric' border: aux = [1:n, n:-1:1]; indices = aux(mod(indices - 1, 2n) + 1).
    aux = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])
    idx0 = aux[np.mod(indices.astype(np.int64) - 1, aux.size)]
    keep = np.any(weights != 0, axis=0)
    weights, idx0 = np.ascontiguousarray(weights[:, keep]), np.ascontiguousarray(idx0[:, keep])
    weights.setflags(write=False)
    idx0.setflags(write=False)
    return weights, idx0


def _resize_axis(img: np.ndarray, weights: np.ndarray, indices: np.ndarray, axis: int) -> np.ndarray:
    """Apply one axis' contributions to a float64 array with image axes (0, 1)."""
    shape = [1] * img.ndim
    shape[axis] = -1
    out = None
    for k in range(weights.shape[1]):
        term = np.take(img, indices[:, k], axis=axis) * weights[:, k].reshape(shape)
        out = term if out is None else out + term
    assert out is not None
    return out


def _round_uint8(x: np.ndarray) -> np.ndarray:
    """Clip to [0, 255] and round half up (MATLAB rounds half away from zero; all values are >= 0)."""
    return np.floor(np.clip(x, 0.0, 255.0) + 0.5)


def _resize(img: np.ndarray, out_hw: tuple[int, int], scales: tuple[float, float], antialiasing: bool) -> np.ndarray:
    if img.ndim not in (2, 3):
        raise ValueError(f"imresize expects an HxW or HxWxC array, got shape {img.shape}")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"imresize got an empty image of shape {img.shape}")
    is_uint8 = img.dtype == np.uint8
    if not (is_uint8 or np.issubdtype(img.dtype, np.floating)):
        raise TypeError(f"imresize supports uint8 or floating-point images, got dtype {img.dtype}")
    work = img.astype(np.float64)
    # MATLAB: resize the dimension with the smaller scale first; stable sort keeps rows first on a tie.
    order = sorted((0, 1), key=lambda d: scales[d])
    for axis in order:
        in_len, out_len = img.shape[axis], out_hw[axis]
        if in_len == out_len and scales[axis] == 1.0:
            continue
        weights, indices = _contributions(in_len, out_len, scales[axis], antialiasing)
        work = _resize_axis(work, weights, indices, axis)
        if is_uint8:
            work = _round_uint8(work)
    if is_uint8:
        return work.astype(np.uint8)
    return work.astype(img.dtype, copy=False)


def imresize(img: np.ndarray, scale: float, *, antialiasing: bool = True) -> np.ndarray:
    """Resize ``img`` (HxW or HxWxC, uint8 or float) by ``scale`` like MATLAB ``imresize(img, scale)``.

    ``scale`` < 1 shrinks (``imresize(hr, 1/4)`` makes a x4 LR image); the output size is
    ``ceil(scale * size)`` per axis, as in MATLAB. ``uint8`` in gives ``uint8`` out (clipped and
    rounded after each axis pass); float in gives the same float dtype out, unclipped.
    """
    if not scale > 0:
        raise ValueError(f"imresize scale must be > 0, got {scale}")
    out_hw = (math.ceil(scale * img.shape[0]), math.ceil(scale * img.shape[1]))
    return _resize(img, out_hw, (float(scale), float(scale)), antialiasing)


def downscale(img: np.ndarray, factor: int) -> np.ndarray:
    """Bicubic LR image of ``img`` shrunk by an integer ``factor``: MATLAB ``imresize(img, 1/factor)``.

    Height and width must be multiples of ``factor`` (mod-crop the HR image first); the output is
    exactly ``(H/factor, W/factor)`` without the float rounding of ``ceil(H * (1/factor))``.
    """
    if factor < 1 or int(factor) != factor:
        raise ValueError(f"downscale factor must be a positive integer, got {factor}")
    factor = int(factor)
    h, w = img.shape[:2]
    if h % factor or w % factor:
        raise ValueError(
            f"image of size {h}x{w} is not a multiple of the scale {factor}; mod-crop it first "
            f"(to {h - h % factor}x{w - w % factor})"
        )
    if factor == 1:
        return img.copy()
    return _resize(img, (h // factor, w // factor), (1.0 / factor, 1.0 / factor), True)
