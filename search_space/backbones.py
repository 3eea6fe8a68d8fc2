"""The fixed layers around the searched cells, for backbones A (AGD's) and B (ours), method.md §1, §4.

- Stem (both): conv 3×3, 3→nf, with bias, no activation.
- "1"-layer: A = UpConv (nearest ×2 → conv 3×3 with bias → LeakyReLU 0.2); B = plain conv 3×3
  with bias and no activation at LR resolution (ambiguity 11: kept linear).
- Head: A = HRconv (conv 3×3 + LeakyReLU) → conv_last nf→3, at HR (ambiguity 3: HRconv included,
  its FLOPs are in the paper's 117.39 G); B = conv_last nf→3·s² → PixelShuffle(s).
- Output of both: (tanh(x) + 1) / 2, an image in [0, 1].

Supernet and derived network build these with the same names, so inheriting them is a state-dict
copy.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["BACKBONES", "Head", "UpLayer", "make_stem", "required_ups"]

BACKBONES: tuple[str, ...] = ("A", "B")


def _check_backbone(backbone: str) -> None:
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")


def required_ups(backbone: str, scale: int) -> int | None:
    """Number of "1"-layers a complete path needs: log2(scale) for A, any number (None) for B."""
    _check_backbone(backbone)
    if backbone == "B":
        return None
    ups = round(math.log2(scale))
    if 2**ups != scale:
        raise ValueError(f"backbone A upsamples by ×2 steps; scale must be a power of 2, got {scale}")
    return ups


def make_stem(nf: int) -> nn.Conv2d:
    return nn.Conv2d(3, nf, 3, padding=1, bias=True)


class UpLayer(nn.Module):
    """A "1" of the path: UpConv (A) or a linear conv 3×3 at LR (B)."""

    def __init__(self, backbone: str, nf: int) -> None:
        super().__init__()
        _check_backbone(backbone)
        self.upsample = backbone == "A"
        self.conv = nn.Conv2d(nf, nf, 3, padding=1, bias=True)
        self.act = nn.LeakyReLU(0.2) if self.upsample else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if self.upsample:
            x = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.act(self.conv(x))


class Head(nn.Module):
    """From the chosen node's features to the SR image in [0, 1]."""

    def __init__(self, backbone: str, nf: int, scale: int) -> None:
        super().__init__()
        _check_backbone(backbone)
        if backbone == "A":
            self.hr_conv: nn.Module = nn.Sequential(nn.Conv2d(nf, nf, 3, padding=1, bias=True), nn.LeakyReLU(0.2))
            self.conv_last = nn.Conv2d(nf, 3, 3, padding=1, bias=True)
            self.shuffle: nn.Module = nn.Identity()
        else:
            self.hr_conv = nn.Identity()
            self.conv_last = nn.Conv2d(nf, 3 * scale * scale, 3, padding=1, bias=True)
            self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x: Tensor) -> Tensor:
        x = self.shuffle(self.conv_last(self.hr_conv(x)))
        return (torch.tanh(x) + 1.0) / 2.0
