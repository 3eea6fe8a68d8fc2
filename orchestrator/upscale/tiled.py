"""Tiled inference: a trained network run over a tensor or an image tile by tile, on a chosen device.

**Tiles.** A super-resolution network is fully convolutional, so a large image is cut into
``tile``-pixel LR tiles, each run with ``overlap`` pixels of real neighbouring context on every
side (fewer at the image border, where the network's own zero padding applies exactly as for the
whole image) and only its centre × scale is kept. With ``overlap`` at least the network's
receptive-field radius (:func:`receptive_radius` bounds it) the tiled result equals whole-image
inference up to float rounding; with less, seams differ by little, since residual blocks damp
far context. Tiles bound memory: a 4000×3000 photo at ×4 never needs the whole feature maps.
Non-RGB images are converted to RGB first, and the conversion is said.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from orchestrator.upscale.errors import UpscaleError

__all__ = [
    "InputConversionWarning",
    "check_tiling",
    "receptive_radius",
    "resolve_device",
    "upscale_image",
    "upscale_tensor",
    "upscale_with_note",
]


class InputConversionWarning(UserWarning):
    """An input image was not 8-bit RGB and was converted (alpha dropped, gray replicated, 16-bit reduced)."""


def receptive_radius(model: nn.Module) -> int:
    """An upper bound, in LR pixels, of how far an output pixel sees: the sum of the conv kernels' radii.

    Exact for chains of convolutions; branches (shortcuts) and upsampling only make the true radius
    smaller. 0 when the model has no ``nn.Conv2d`` modules (e.g. an exported graph).
    """
    radius = 0
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            dh, dw = module.dilation
            radius += max((kh - 1) // 2 * dh, (kw - 1) // 2 * dw)
    return radius


def resolve_device(device: str | torch.device) -> torch.device:
    """`device` as a torch device that exists here; UpscaleError otherwise."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UpscaleError(f"device {device!r}: not a torch device (cpu, cuda, cuda:1, …)") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise UpscaleError(f"device {device}: CUDA is not available here (use --device cpu)")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise UpscaleError(f"device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise UpscaleError(f"device {device}: MPS is not available here")
    return resolved


def check_tiling(tile: int | None, overlap: int) -> int:
    """`tile` as an int (None: 0, the whole image); ValueError for a negative tile or overlap."""
    if tile is None:
        tile = 0
    if not isinstance(tile, int) or tile < 0:
        raise ValueError(f"tile must be a non-negative number of pixels (0 = whole image), got {tile!r}")
    if not isinstance(overlap, int) or overlap < 0:
        raise ValueError(f"overlap must be a non-negative number of pixels, got {overlap!r}")
    return tile


def _spans(length: int, tile: int) -> list[tuple[int, int]]:
    step = tile if 0 < tile < length else length
    return [(start, min(start + step, length)) for start in range(0, length, step)]


def _tiles(
    model: nn.Module, lr: Tensor, scale: int, tile: int, overlap: int, device: torch.device
) -> Iterator[tuple[tuple[int, int, int, int], Tensor]]:
    """((top, bottom, left, right) in HR pixels, the HR crop on `device`) for every tile of `lr` [N,3,H,W]."""
    height, width = lr.shape[-2:]
    for y0, y1 in _spans(height, tile):
        for x0, x1 in _spans(width, tile):
            py0, py1 = max(0, y0 - overlap), min(height, y1 + overlap)
            px0, px1 = max(0, x0 - overlap), min(width, x1 + overlap)
            patch = lr[..., py0:py1, px0:px1].to(device)
            with torch.inference_mode():
                out = model(patch)
            expected = (lr.shape[0], 3, (py1 - py0) * scale, (px1 - px0) * scale)
            if not isinstance(out, Tensor) or tuple(out.shape) != expected:
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise UpscaleError(f"the model turned a {tuple(patch.shape)} input into {got}, expected {expected}")
            crop = out[..., (y0 - py0) * scale : (y1 - py0) * scale, (x0 - px0) * scale : (x1 - px0) * scale]
            yield (y0 * scale, y1 * scale, x0 * scale, x1 * scale), crop


def upscale_tensor(
    model: nn.Module,
    lr: Tensor,
    scale: int,
    *,
    tile: int | None = 256,
    overlap: int = 24,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Tiled inference on a float batch [N,3,h,w] in [0,1]: the float output [N,3,h·s,w·s] on the CPU (not clamped).

    `tile` is the LR tile size (0 or None: the whole image at once), `overlap` the context each tile
    gets on every side. The model is moved to `device`.
    """
    tile = check_tiling(tile, overlap)
    if lr.ndim != 4 or lr.shape[1] != 3:
        raise ValueError(f"expected an LR batch [N,3,h,w], got shape {tuple(lr.shape)}")
    target = resolve_device(device)
    model.to(target)
    n, _, height, width = lr.shape
    out = torch.empty((n, 3, height * scale, width * scale), dtype=torch.float32)
    for (top, bottom, left, right), crop in _tiles(model, lr.float(), scale, tile, overlap, target):
        out[..., top:bottom, left:right] = crop.float().cpu()
    return out


def _as_rgb(image: Image.Image) -> tuple[np.ndarray, str | None]:
    """(H×W×3 float32 in [0,1], a note saying what was converted, or None for 8-bit RGB)."""
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image, dtype=np.float32) / 255.0, None
    has_alpha = "A" in mode or (mode == "P" and "transparency" in image.info)
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if mode.startswith("I;16") or (mode == "I" and values.max(initial=0) > 255) else 255.0
        if mode == "F" and values.max(initial=0) <= 1.0:
            peak = 1.0
        gray = np.clip(values / peak, 0.0, 1.0)
        note = f"{mode} ({'16-bit' if peak == 65535.0 else 'high-precision'}) grayscale converted to 8-bit RGB"
        return np.repeat(gray[..., None], 3, axis=2), note
    try:
        rgb = np.asarray(image.convert("RGBA" if has_alpha else "RGB"), dtype=np.float32)[..., :3] / 255.0
    except (ValueError, OSError) as err:
        raise UpscaleError(f"image mode {mode}: cannot convert it to RGB ({err})") from None
    if has_alpha:
        note = f"{mode} image: alpha channel dropped, output is RGB"
    elif mode in ("L", "1"):
        note = f"grayscale ({mode}) image converted to RGB"
    else:
        note = f"{mode} image converted to RGB"
    return rgb, note


def upscale_with_note(
    model: nn.Module, image: Image.Image, scale: int, tile: int, overlap: int, device: torch.device
) -> tuple[Image.Image, str | None]:
    """`image` upscaled as 8-bit RGB by tiles (tiling already checked), and what was converted (None: nothing)."""
    rgb, note = _as_rgb(image)
    lr = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
    height, width = rgb.shape[:2]
    out = np.empty((height * scale, width * scale, 3), dtype=np.uint8)
    for (top, bottom, left, right), crop in _tiles(model, lr, scale, tile, overlap, device):
        pixels = crop[0].float().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
        out[top:bottom, left:right] = pixels.permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(out, mode="RGB"), note


def upscale_image(
    model: nn.Module,
    image: Image.Image,
    scale: int,
    *,
    tile: int | None = 256,
    overlap: int = 24,
    device: str | torch.device = "cpu",
) -> Image.Image:
    """`image` upscaled ×`scale` as an 8-bit RGB image (rounded, clamped), by tiled inference.

    Non-RGB inputs are converted to RGB first (alpha dropped, gray replicated, 16-bit scaled) with an
    :class:`InputConversionWarning` saying so. See :func:`upscale_tensor` for `tile` and `overlap`;
    the model is moved to `device`.
    """
    tile = check_tiling(tile, overlap)
    target = resolve_device(device)
    model.to(target)
    result, note = upscale_with_note(model, image, scale, tile, overlap, target)
    if note:
        warnings.warn(note, InputConversionWarning, stacklevel=2)
    return result
