"""Tests for workers.vgg (torchvision-compatible VGG19 features[:35]) and workers.losses (L_c, L_p).

The VGG weights are random tensors saved in torchvision's checkpoint layout, so no download is needed.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workers.losses import PerceptualLoss, build_loss, content_loss
from workers.vgg import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VGG19_CONV_INDICES,
    VGG19Features,
    VGGWeightsUnavailableError,
    load_vgg19_features,
)

# torchvision vgg19().features conv layers: index -> (in, out) channels.
_TV_CONVS = dict(
    zip(
        (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34),
        [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256)] + [(256, 256)] * 3 + [(256, 512)] + [(512, 512)] * 7,
        strict=True,
    )
)
_POOLS_BEFORE = (4, 9, 18, 27)  # max-pools inside features[:35]


def _fake_torchvision_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """torchvision vgg19 layout with random values; classifier tensors shrunk (the loader ignores them)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for idx, (cin, cout) in _TV_CONVS.items():
        std = (2.0 / (9 * cin)) ** 0.5
        sd[f"features.{idx}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * std
        sd[f"features.{idx}.bias"] = torch.randn(cout, generator=g) * 0.01
    for idx in (0, 3, 6):
        sd[f"classifier.{idx}.weight"] = torch.randn(8, 8, generator=g)
        sd[f"classifier.{idx}.bias"] = torch.randn(8, generator=g)
    return sd


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    sd = _fake_torchvision_state_dict()
    path = tmp_path_factory.mktemp("vgg") / "vgg19-dcbb9e9d.pth"
    torch.save(sd, path)
    return path, sd


@pytest.fixture(scope="module")
def vgg(weights_file: tuple[Path, dict[str, torch.Tensor]]) -> VGG19Features:
    return load_vgg19_features(weights_file[0])


def _reference_features(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Independent functional VGG19 features[:35]: normalise, convs + ReLU, pools, no ReLU at the end."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    h = (x - mean) / std
    for idx in sorted(_TV_CONVS):
        if idx - 1 in _POOLS_BEFORE:  # convs 5, 10, 19, 28 follow a pool
            h = F.max_pool2d(h, 2)
        h = F.conv2d(h, sd[f"features.{idx}.weight"], sd[f"features.{idx}.bias"], padding=1)
        if idx != 34:
            h = F.relu(h)
    return h


# --------------------------------------------------------------------------------------------- VGG


def test_vgg_layout_matches_torchvision() -> None:
    model = VGG19Features()
    assert len(model.features) == 35
    convs = [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
    assert tuple(convs) == VGG19_CONV_INDICES == tuple(_TV_CONVS)
    pools = [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
    assert tuple(pools) == _POOLS_BEFORE
    expected = {f"features.{i}.{p}" for i in _TV_CONVS for p in ("weight", "bias")}
    assert set(model.state_dict()) == expected
    for idx, (cin, cout) in _TV_CONVS.items():
        assert model.state_dict()[f"features.{idx}.weight"].shape == (cout, cin, 3, 3)
    # Ends at conv5_4, before its ReLU.
    assert isinstance(model.features[-1], nn.Conv2d)
    assert isinstance(model.features[-2], nn.ReLU)


def test_vgg_loads_torchvision_checkpoint(vgg: VGG19Features, weights_file) -> None:
    _, sd = weights_file
    for key, value in vgg.state_dict().items():
        assert torch.equal(value, sd[key]), key
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = vgg(x)
    assert out.shape == (2, 512, 2, 2)
    torch.testing.assert_close(out, _reference_features(sd, x), rtol=1e-4, atol=1e-4)
    assert (out < 0).any(), "last layer is a conv without ReLU, so negatives must survive"


def test_vgg_is_frozen_and_stays_eval(vgg: VGG19Features) -> None:
    assert not vgg.training
    assert all(not p.requires_grad for p in vgg.parameters())
    vgg.train()
    assert not vgg.training
    parent = nn.Sequential(vgg)
    parent.train()
    assert not vgg.training


def test_vgg_missing_file_raises_clear_error(tmp_path: Path) -> None:
    with pytest.raises(VGGWeightsUnavailableError, match=r"perceptual\.vgg_weights") as info:
        load_vgg19_features(tmp_path / "nope.pth")
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value, RuntimeError)


def test_vgg_rejects_non_vgg_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "bad.pth"
    torch.save({"classifier.0.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ValueError, match=r"features\.N"):
        load_vgg19_features(path)
    sd = _fake_torchvision_state_dict()
    del sd["features.34.bias"]
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"features\.34\.bias"):
        load_vgg19_features(path)


def _online() -> bool:
    try:
        with socket.create_connection(("download.pytorch.org", 443), timeout=2):
            return True
    except OSError:
        return False


def test_vgg_offline_without_file_raises_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if _online():
        pytest.skip("network reachable: would download the real 548 MB checkpoint")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(VGGWeightsUnavailableError) as info:
        load_vgg19_features(None, download_timeout_s=5.0)
    msg = str(info.value)
    assert "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth" in msg
    assert "perceptual.vgg_weights" in msg
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints") in msg
    assert socket.getdefaulttimeout() is None  # restored


def test_vgg_uses_torch_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weights_file) -> None:
    """A checkpoint placed in $TORCH_HOME/hub/checkpoints/ is used without any network access."""
    path, sd = weights_file
    ckpt_dir = tmp_path / "torch_home" / "hub" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    (ckpt_dir / "vgg19-dcbb9e9d.pth").symlink_to(path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    model = load_vgg19_features(None)
    assert torch.equal(model.features[34].weight, sd["features.34.weight"])


# ------------------------------------------------------------------------------------------ losses


def test_content_loss_hand_value() -> None:
    sr = torch.tensor([[[[0.0, 0.5], [1.0, 0.25]]]])
    target = torch.tensor([[[[0.5, 0.5], [0.0, 0.75]]]])
    # |diffs| = 0.5, 0, 1, 0.5 -> mean 0.5
    assert content_loss(sr, target).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"\(1, 1, 2, 2\).*\(1, 1, 1, 2\)"):
        content_loss(sr, target[..., :1, :])


def test_perceptual_loss_matches_independent_computation(vgg: VGG19Features, weights_file) -> None:
    _, sd = weights_file
    g = torch.Generator().manual_seed(1)
    sr = torch.rand(2, 3, 32, 32, generator=g)
    target = torch.rand(2, 3, 32, 32, generator=g)
    loss_fn = PerceptualLoss(vgg)
    got = loss_fn(sr, target)
    pix = (sr - target).abs().mean()
    feat = (_reference_features(sd, sr) - _reference_features(sd, target)).abs().mean()
    expected = 0.01 * pix + 1.0 * feat
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # custom weights
    got2 = PerceptualLoss(vgg, pixel_weight=0.5, feature_weight=2.0)(sr, target)
    torch.testing.assert_close(got2, 0.5 * pix + 2.0 * feat, rtol=1e-4, atol=1e-5)


def test_perceptual_loss_gradients_reach_sr_not_vgg(vgg: VGG19Features) -> None:
    loss_fn = PerceptualLoss(vgg)
    loss_fn.train()
    assert not loss_fn.vgg.training
    sr = torch.rand(1, 3, 32, 32, requires_grad=True)
    target = torch.rand(1, 3, 32, 32)
    loss_fn(sr, target).backward()
    assert sr.grad is not None and sr.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in vgg.parameters())


def test_perceptual_loss_freezes_a_given_module() -> None:
    stub = nn.Conv2d(3, 4, 3, padding=1)
    loss_fn = PerceptualLoss(stub)
    assert all(not p.requires_grad for p in stub.parameters())
    sr = torch.rand(1, 3, 8, 8, requires_grad=True)
    target = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        expected = 0.01 * (sr - target).abs().mean() + (stub(sr) - stub(target)).abs().mean()
    got = loss_fn(sr, target)
    torch.testing.assert_close(got, expected)


def test_build_loss(weights_file) -> None:
    assert build_loss("content") is content_loss
    loss = build_loss("perceptual", vgg_weights=weights_file[0])
    assert isinstance(loss, PerceptualLoss)
    assert isinstance(loss.vgg, VGG19Features)
    assert (loss.pixel_weight, loss.feature_weight) == (1e-2, 1.0)
    with pytest.raises(ValueError, match=r"'gan'.*'content'.*'perceptual'"):
        build_loss("gan")
