"""VGG19 feature extractor for the perceptual loss, defined here because torchvision is not a dependency.

Why this shape (method.md §3, "Losses"; AGD ``util_gan/vgg_feature.py``): the perceptual loss φ is
torchvision's ImageNet VGG19 ``features[:35]``, i.e. everything up to and including conv5_4 but
*before* its ReLU (``before_act=True`` in the ESRGAN/AGD extractor), with ImageNet mean/std
normalisation applied to images in [0, 1].

The module layout copies torchvision's ``vgg19().features`` exactly (``features.0.weight``,
``features.2.weight``, ... with convolutions at indices 0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25,
28, 30, 32, 34), so the official checkpoint ``vgg19-dcbb9e9d.pth`` loads by name without any key
remapping. Its ``classifier.*`` keys are ignored. The normalisation constants are non-persistent
buffers, so the state dict holds exactly torchvision's ``features.*`` keys.

Weights come from a local file when one is given, else from torch.hub's cache / torchvision's URL.
Offline without a file, :class:`VGGWeightsUnavailableError` says how to supply the checkpoint.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VGG19_CONV_INDICES",
    "VGG19_URL",
    "VGG19Features",
    "VGGWeightsUnavailableError",
    "load_vgg19_features",
]

#: torchvision's published ImageNet VGG19 checkpoint (``VGG19_Weights.IMAGENET1K_V1``).
VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# torchvision cfg "E": numbers are conv output channels, "M" is a 2x2 max-pool.
_VGG19_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)  # fmt: skip
#: ``features[:35]`` stops here: conv5_4 (index 34) without its ReLU (35) and last pool (36).
_N_LAYERS = 35
#: Indices of the conv layers kept in ``features[:35]`` (same as torchvision).
VGG19_CONV_INDICES: tuple[int, ...] = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)


class VGGWeightsUnavailableError(FileNotFoundError, RuntimeError):
    """The ImageNet VGG19 checkpoint could neither be read from disk nor downloaded.

    Subclasses both ``FileNotFoundError`` and ``RuntimeError`` so callers may catch either.
    """


def _make_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 3
    for v in _VGG19_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            assert isinstance(v, int)
            layers.append(nn.Conv2d(in_ch, v, kernel_size=3, padding=1))
            layers.append(nn.ReLU(inplace=True))
            in_ch = v
    return nn.Sequential(*layers[:_N_LAYERS])


class VGG19Features(nn.Module):
    """torchvision ``vgg19().features[:35]`` (ends at conv5_4, pre-ReLU) with ImageNet normalisation.

    Input: RGB images in [0, 1], shape ``[N, 3, H, W]``. Output: ``[N, 512, H/16, W/16]``.
    After :func:`load_vgg19_features` the module is frozen and stays in eval mode (``train()`` is a
    no-op), so a parent module switching to training mode cannot change it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = _make_features()
        # Non-persistent: the state dict keeps exactly torchvision's `features.*` keys.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._frozen = False

    def forward(self, x: Tensor) -> Tensor:
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return self.features(x)

    def freeze(self) -> VGG19Features:
        """Disable gradients for all parameters and lock the module in eval mode."""
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)
        self._frozen = True
        return self

    def train(self, mode: bool = True) -> VGG19Features:
        return super().train(False if self._frozen else mode)


def _features_state_dict(state: Mapping[str, object], source: str) -> dict[str, Tensor]:
    """Keep the ``features.N.*`` entries with N < 35 (drops ``classifier.*`` and the unused tail)."""
    if not isinstance(state, Mapping):
        raise ValueError(f"VGG19 checkpoint {source} is not a state dict (got {type(state).__name__})")
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "features" and parts[1].isdigit() and int(parts[1]) < _N_LAYERS:
            if not isinstance(value, Tensor):
                raise ValueError(f"VGG19 checkpoint {source}: {key} is not a tensor")
            out[key] = value
    if not out:
        raise ValueError(
            f"VGG19 checkpoint {source} has no 'features.N.*' keys; expected torchvision's "
            f"vgg19-dcbb9e9d.pth layout (features.* and classifier.*)"
        )
    return out


def _download_state_dict(timeout_s: float) -> dict[str, Tensor]:
    """torch.hub cache or download; a short socket timeout so an offline machine fails instead of hanging.

    ``socket.setdefaulttimeout`` is process-global, so it is restored right after the call.
    """
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        return torch.hub.load_state_dict_from_url(
            VGG19_URL, map_location="cpu", progress=False, check_hash=True, weights_only=True
        )
    except Exception as exc:
        raise VGGWeightsUnavailableError(
            f"Could not obtain the ImageNet VGG19 weights for the perceptual loss: neither cached in "
            f"{hub_dir} nor downloadable from {VGG19_URL} ({type(exc).__name__}: {exc}). "
            f"To provide them offline: download {VGG19_URL} on a machine with internet, then either "
            f"pass its path as `perceptual.vgg_weights` in the experiment config, or place the file "
            f"as {hub_dir / 'vgg19-dcbb9e9d.pth'} (torch.hub's checkpoint dir, $TORCH_HOME/hub/checkpoints/)."
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)


def load_vgg19_features(
    weights: str | os.PathLike[str] | None = None, *, download_timeout_s: float = 30.0
) -> VGG19Features:
    """Build the frozen, eval-mode VGG19 ``features[:35]`` extractor with ImageNet weights.

    Args:
        weights: path to a torchvision-layout VGG19 checkpoint (``vgg19-dcbb9e9d.pth``: ``features.*``
            plus ``classifier.*`` keys; the latter are ignored). ``None`` uses torch.hub's cache
            (``$TORCH_HOME/hub/checkpoints/``) or downloads :data:`VGG19_URL`.
        download_timeout_s: socket timeout while downloading, so an offline machine fails fast.

    Raises:
        VGGWeightsUnavailableError: the file does not exist, or (``weights=None``) the checkpoint is
            not cached and cannot be downloaded. The message says how to supply it.
        ValueError: the file is not a torchvision VGG19 checkpoint (missing keys or wrong shapes).

    The file is always read with ``torch.load(weights_only=True)``.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise VGGWeightsUnavailableError(
                f"VGG19 weights file not found: {path}. Download {VGG19_URL} on a machine with "
                f"internet and pass its path as `perceptual.vgg_weights` in the experiment config."
            )
        source = str(path)
        raw = torch.load(path, map_location="cpu", weights_only=True)
    else:
        source = VGG19_URL
        raw = _download_state_dict(download_timeout_s)

    state = _features_state_dict(raw, source)
    model = VGG19Features()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(f"VGG19 checkpoint {source} lacks keys {missing}")
    bad = [
        f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise ValueError(f"VGG19 checkpoint {source} has wrong shapes: {bad}")
    model.load_state_dict(state, strict=True)
    return model.freeze()
