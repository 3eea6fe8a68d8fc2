"""A picture of a result: validation crops as bicubic | network | HR, side by side, PSNR in the captions.

Why: super-resolution is judged by eye as much as by PSNR (the paper's Fig. 2), and a number alone
hides failures a glance shows (colour shifts, ringing, a network that only blurs). Each row is one
validation image; the crop is the window where bicubic errs most (edges and texture, where an SR
network has something to add), so the picture shows the hard part, not a flat sky. The captions
carry the whole-image Y-PSNR of each method (the metric's convention, :mod:`workers.metrics`), so
the picture and the table agree.

Pure image code (numpy, torch, matplotlib's Agg canvas, no pyplot); returns an RGB uint8 array the
orchestrator logs as a PNG.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from workers.evaluate import bicubic_upscale
from workers.metrics import psnr_y, rgb_to_y
from workers.pipeline import val_pairs

__all__ = ["comparison_for_sets", "comparison_image", "hardest_window"]


def hardest_window(reference: np.ndarray, approximation: np.ndarray, size: int, step: int) -> tuple[int, int]:
    """(top, left) of the `size`×`size` window, on a `step` grid, where `approximation` differs most in Y."""
    height, width = reference.shape[:2]
    size = min(size, height, width)
    error = (rgb_to_y(reference.astype(np.float64) / 255.0) - rgb_to_y(approximation.astype(np.float64) / 255.0)) ** 2
    integral = np.pad(error.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    tops = np.arange(0, height - size + 1, max(1, step))
    lefts = np.arange(0, width - size + 1, max(1, step))
    t, left = tops[:, None], lefts[None, :]
    sums = integral[t + size, left + size] - integral[t, left + size] - integral[t + size, left] + integral[t, left]
    i, j = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(tops[i]), int(lefts[j])


def _device_of(forward: Callable[[torch.Tensor], torch.Tensor]) -> torch.device:
    """Where `forward` computes: its parameters' device when it is a module (a GPU net takes GPU input)."""
    if isinstance(forward, torch.nn.Module):
        for tensor in itertools.chain(forward.parameters(), forward.buffers()):
            return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def _network_output(forward: Callable[[torch.Tensor], torch.Tensor], lr: np.ndarray) -> np.ndarray:
    """The network's output for one uint8 LR image, as the 8-bit image it would be saved as."""
    x = torch.from_numpy(np.ascontiguousarray(lr)).permute(2, 0, 1)[None].float().div(255.0)
    x = x.to(_device_of(forward))
    out = forward(x)[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return np.floor(out.astype(np.float64) * 255.0 + 0.5).astype(np.uint8)


def comparison_image(
    forward: Callable[[torch.Tensor], torch.Tensor],
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    scale: int,
    *,
    set_name: str = "val",
    crop: int = 96,
    label: str = "ours",
) -> np.ndarray:
    """An RGB uint8 image: one row per (LR, HR) uint8 pair, columns bicubic | `label` | HR of one HR crop.

    The crop (`crop` HR pixels square, smaller for small images) is where bicubic errs most; captions
    give each method's whole-image Y-PSNR (crop = scale, as the metrics) and the network's Δ vs bicubic.
    """
    if not pairs:
        raise ValueError(f"comparison_image: validation set {set_name!r} has no images")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = len(pairs)
    fig = Figure(figsize=(9.0, 3.4 * rows + 0.3), dpi=100)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 3, squeeze=False)
    for index, (lr, hr) in enumerate(pairs):
        bicubic = bicubic_upscale(lr, scale)
        ours = _network_output(forward, lr)
        if ours.shape != hr.shape:
            raise ValueError(f"comparison_image: the network made {ours.shape} from LR {lr.shape}, HR is {hr.shape}")
        target = hr.astype(np.float64) / 255.0
        psnr_bicubic = psnr_y(bicubic.astype(np.float64) / 255.0, target, crop=scale)
        psnr_ours = psnr_y(ours.astype(np.float64) / 255.0, target, crop=scale)
        size = min(crop, *hr.shape[:2])
        top, left = hardest_window(hr, bicubic, size, step=max(1, size // 4))
        window = (slice(top, top + size), slice(left, left + size))
        captions = (
            f"bicubic {psnr_bicubic:.2f} dB",
            f"{label} {psnr_ours:.2f} dB ({psnr_ours - psnr_bicubic:+.2f})",
            f"HR ({set_name} #{index + 1})",
        )
        for ax, image, caption in zip(axes[index], (bicubic, ours, hr), captions, strict=True):
            ax.imshow(image[window], interpolation="nearest")
            ax.set_title(caption, fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
    title = f"×{scale} on {set_name}: whole-image Y-PSNR in the captions, crops where bicubic errs most"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def comparison_for_sets(
    forward: Callable[[torch.Tensor], torch.Tensor],
    val_sets: Mapping[str, str],
    scale: int,
    *,
    max_images: int = 3,
) -> np.ndarray | None:
    """:func:`comparison_image` of the first `max_images` images of the first validation set (None without sets)."""
    if not val_sets:
        return None
    name, path = next(iter(val_sets.items()))
    return comparison_image(forward, val_pairs(path, scale)[:max_images], scale, set_name=name)
