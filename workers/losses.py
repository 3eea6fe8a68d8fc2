"""Training losses: the content loss L_c and the perceptual loss L_p (method.md §3, "Losses").

Source: AGD ``model_search.py::_criterion`` with ``loss_func='L1'`` and loss weights
``[w_pix, w_gan, w_vgg, w_tv]``:

- L_c = weights ``[1, 0, 0, 0]``: pixel L1 only (:func:`content_loss`).
- L_p = weights ``[1e-2, 0, 1, 0]``: ``0.01 * L1(sr, target) + 1.0 * L1(φ(sr), φ(target))`` with φ the
  frozen ImageNet VGG19 ``features[:35]`` (conv5_4 before ReLU, :mod:`workers.vgg`).

The TV and GAN weights are 0 in every configuration the paper uses, so they are not implemented. The
TrilevelNAS ordering-constraint term (5th weight) belongs to the search objective, not here.
Targets are teacher outputs (no gradient); the target branch of φ runs under ``no_grad``.

A sandwich step compares several outputs with one target: :func:`bind_target` fixes the target once,
so φ(target) is computed once per step instead of once per pass (the same value: a no-grad forward
of the same tensor).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.vgg import load_vgg19_features

__all__ = ["LOSS_KINDS", "PerceptualLoss", "bind_target", "build_loss", "content_loss"]

LOSS_KINDS: tuple[str, ...] = ("content", "perceptual")


def content_loss(sr: Tensor, target: Tensor) -> Tensor:
    """L_c: mean absolute error between ``sr`` and ``target`` (AGD ``loss_func='L1'``, weight 1)."""
    if sr.shape != target.shape:
        raise ValueError(f"content_loss: sr shape {tuple(sr.shape)} != target shape {tuple(target.shape)}")
    return F.l1_loss(sr, target)


class PerceptualLoss(nn.Module):
    """L_p = ``pixel_weight * L1(sr, target) + feature_weight * L1(φ(sr), φ(target))``.

    ``vgg`` is φ (e.g. :func:`workers.vgg.load_vgg19_features`); it is frozen here (no parameter gets
    a gradient) but gradients flow through it back to ``sr``. Inputs are RGB in [0, 1], ``[N, 3, H, W]``.
    """

    def __init__(self, vgg: nn.Module, pixel_weight: float = 1e-2, feature_weight: float = 1.0) -> None:
        super().__init__()
        for p in vgg.parameters():
            p.requires_grad_(False)
        vgg.eval()
        self.vgg = vgg
        self.pixel_weight = float(pixel_weight)
        self.feature_weight = float(feature_weight)

    def forward(self, sr: Tensor, target: Tensor) -> Tensor:
        return self.bind(target)(sr)

    def bind(self, target: Tensor) -> Callable[[Tensor], Tensor]:
        """The loss against `target` as a function of `sr`, with φ(target) computed here, once."""
        with torch.no_grad():
            feat_target = self.vgg(target.detach())

        def loss(sr: Tensor) -> Tensor:
            if sr.shape != target.shape:
                raise ValueError(f"PerceptualLoss: sr shape {tuple(sr.shape)} != target shape {tuple(target.shape)}")
            pixel = F.l1_loss(sr, target)
            feat_sr = self.vgg(sr)
            return self.pixel_weight * pixel + self.feature_weight * F.l1_loss(feat_sr, feat_target)

        return loss

    def extra_repr(self) -> str:
        return f"pixel_weight={self.pixel_weight}, feature_weight={self.feature_weight}"


def bind_target(loss_fn: Callable[[Tensor, Tensor], Tensor], target: Tensor) -> Callable[[Tensor], Tensor]:
    """`loss_fn` against a fixed `target`: what depends on the target alone is computed once here.

    Why: the sandwich runs 3-4 passes per batch against one target; a perceptual loss would run
    VGG19 on that same target in every pass. Losses without a `bind` method are wrapped as they are.
    """
    bind = getattr(loss_fn, "bind", None)
    if bind is not None:
        return bind(target)
    return lambda sr: loss_fn(sr, target)


def build_loss(
    kind: str, vgg_weights: str | os.PathLike[str] | None = None
) -> nn.Module | Callable[[Tensor, Tensor], Tensor]:
    """Return the loss for ``kind``: ``"content"`` → :func:`content_loss`, ``"perceptual"`` → L_p.

    ``vgg_weights`` is the local VGG19 checkpoint for ``"perceptual"`` (``None``: torch.hub cache or
    download, see :func:`workers.vgg.load_vgg19_features`); it is ignored for ``"content"``.
    """
    if kind == "content":
        return content_loss
    if kind == "perceptual":
        return PerceptualLoss(load_vgg19_features(vgg_weights))
    raise ValueError(f"unknown loss kind {kind!r}; allowed: {', '.join(repr(k) for k in LOSS_KINDS)}")
