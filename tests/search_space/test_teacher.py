"""Tests for the ESRGAN teacher: architecture, the three published key layouts, and safe loading.

No downloads: every checkpoint is built here from a small random RRDBNet and renamed into the
published layouts by :func:`to_layout`, which mirrors how those files are keyed.
"""

from __future__ import annotations

import os
import random
import re
import shlex

import pytest
import torch
from torch import nn

from search_space.teacher import (
    TEACHER_LAYOUTS,
    RRDBNet,
    TeacherWeightsError,
    convert_state_dict,
    load_teacher,
)

NB = 2  # small trunk: a full 23-block forward is too slow on CPU for unit tests

_BLOCK = re.compile(r"^RRDB_trunk\.(\d+)\.RDB([123])\.conv([1-5])\.(weight|bias)$")
_OLD_SINGLE = {
    "conv_first": "model.0",
    "upconv1": "model.3",
    "upconv2": "model.6",
    "HRconv": "model.8",
    "conv_last": "model.10",
}
_BSR_SINGLE = {
    "conv_first": "conv_first",
    "trunk_conv": "conv_body",
    "upconv1": "conv_up1",
    "upconv2": "conv_up2",
    "HRconv": "conv_hr",
    "conv_last": "conv_last",
}


def to_layout(state: dict[str, torch.Tensor], layout: str, nb: int) -> dict[str, torch.Tensor]:
    """Rename our (new ESRGAN) keys into one of the published layouts."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        m = _BLOCK.match(key)
        if layout == "esrgan":
            new = key
        elif layout == "basicsr":
            new = f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}" if m else f"{_BSR_SINGLE[module]}.{param}"
        elif layout == "esrgan-old":
            if m:
                new = f"model.1.sub.{m[1]}.RDB{m[2]}.conv{m[3]}.0.{m[4]}"
            elif module == "trunk_conv":
                new = f"model.1.sub.{nb}.{param}"
            else:
                new = f"{_OLD_SINGLE[module]}.{param}"
        else:
            raise AssertionError(layout)
        out[new] = value.clone()
    return out


@pytest.fixture(scope="module")
def net() -> RRDBNet:
    torch.manual_seed(0)
    return RRDBNet(nb=NB).eval()


@pytest.fixture(scope="module")
def lr_input() -> torch.Tensor:
    return torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def _save(obj: object, path: os.PathLike[str]) -> os.PathLike[str]:
    torch.save(obj, path)
    return path


# --- architecture -------------------------------------------------------------------------------


def test_forward_is_x4(net: RRDBNet, lr_input: torch.Tensor) -> None:
    with torch.no_grad():
        out = net(lr_input)
    assert out.shape == (2, 3, 32, 32)
    assert torch.isfinite(out).all()


def test_full_teacher_parameter_count() -> None:
    # ESRGAN's published RRDBNet(3, 3, 64, 23, gc=32): 16,697,987 parameters (~16.70M).
    n = sum(p.numel() for p in RRDBNet().parameters())
    assert n == 16_697_987


def test_parameter_names_follow_new_esrgan_layout() -> None:
    names = set(RRDBNet(nb=1).state_dict())
    for key in (
        "conv_first.weight",
        "RRDB_trunk.0.RDB3.conv5.bias",
        "trunk_conv.weight",
        "upconv1.weight",
        "upconv2.bias",
        "HRconv.weight",
        "conv_last.bias",
    ):
        assert key in names
    assert len(names) == 2 * (1 + 15 + 5)


def test_to_layout_helper_matches_published_key_counts(net: RRDBNet) -> None:
    state = net.state_dict()
    old = to_layout(state, "esrgan-old", NB)
    assert "model.1.sub.2.weight" in old and "model.1.sub.1.RDB2.conv4.0.weight" in old
    assert "body.1.rdb3.conv5.weight" in to_layout(state, "basicsr", NB)
    assert all(len(to_layout(state, lay, NB)) == len(state) for lay in TEACHER_LAYOUTS)


# --- conversion and round trips -------------------------------------------------------------------


@pytest.mark.parametrize("layout", TEACHER_LAYOUTS)
def test_convert_state_dict_inverts_each_layout(net: RRDBNet, layout: str) -> None:
    state = net.state_dict()
    converted = convert_state_dict(to_layout(state, layout, NB), nb=NB)
    assert converted.keys() == state.keys()
    assert all(torch.equal(converted[k], state[k]) for k in state)


@pytest.mark.parametrize("layout", TEACHER_LAYOUTS)
def test_round_trip_through_file(net: RRDBNet, lr_input: torch.Tensor, tmp_path, layout: str) -> None:
    path = _save(to_layout(net.state_dict(), layout, NB), tmp_path / f"teacher_{layout}.pth")
    teacher = load_teacher(path, nb=NB)
    with torch.no_grad():
        assert torch.equal(teacher(lr_input), net(lr_input))


def test_legacy_torch_save_format(net: RRDBNet, lr_input: torch.Tensor, tmp_path) -> None:
    # The 2018 release predates torch's zip format.
    path = tmp_path / "old.pth"
    torch.save(to_layout(net.state_dict(), "esrgan-old", NB), path, _use_new_zipfile_serialization=False)
    with torch.no_grad():
        assert torch.equal(load_teacher(path, nb=NB)(lr_input), net(lr_input))


def test_basicsr_wrappers_prefer_params_ema(net: RRDBNet, lr_input: torch.Tensor, tmp_path) -> None:
    ema = to_layout(net.state_dict(), "basicsr", NB)
    plain = {k: torch.zeros_like(v) for k, v in ema.items()}
    both = _save({"params": plain, "params_ema": ema}, tmp_path / "both.pth")
    only_params = _save({"params": ema}, tmp_path / "params.pth")
    with torch.no_grad():
        ref = net(lr_input)
        assert torch.equal(load_teacher(both, nb=NB)(lr_input), ref)
        assert torch.equal(load_teacher(only_params, nb=NB)(lr_input), ref)


def test_dataparallel_prefix_is_stripped(net: RRDBNet, tmp_path) -> None:
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    teacher = load_teacher(_save(state, tmp_path / "dp.pth"), nb=NB)
    assert torch.equal(teacher.conv_last.weight, net.conv_last.weight)


def test_loaded_teacher_is_frozen_and_in_eval(net: RRDBNet, lr_input: torch.Tensor, tmp_path) -> None:
    teacher = load_teacher(_save(net.state_dict(), tmp_path / "t.pth"), nb=NB)
    assert not teacher.training
    assert all(not m.training for m in teacher.modules())
    assert all(not p.requires_grad for p in teacher.parameters())
    assert not teacher(lr_input.requires_grad_(False)).requires_grad


# --- errors ---------------------------------------------------------------------------------------


def test_missing_file_says_where_to_get_weights(tmp_path) -> None:
    path = tmp_path / "RRDB_PSNR_x4.pth"
    with pytest.raises(TeacherWeightsError) as exc:
        load_teacher(path)
    msg = str(exc.value)
    assert str(path) in msg and "not found" in msg
    assert "RRDB_ESRGAN_x4.pth" in msg and "xinntao/ESRGAN" in msg and "supervision.teacher" in msg


def test_directory_is_rejected(tmp_path) -> None:
    with pytest.raises(TeacherWeightsError, match="not a regular file"):
        load_teacher(tmp_path)


@pytest.mark.parametrize(
    "content",
    [random.Random(0).randbytes(4096), b"", b"hello, not a checkpoint\n"],
    ids=["random", "empty", "text"],
)
def test_garbage_bytes(tmp_path, content: bytes) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(content)
    with pytest.raises(TeacherWeightsError) as exc:
        load_teacher(path)
    assert "garbage.pth" in str(exc.value)
    assert "not a PyTorch checkpoint" in str(exc.value)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_truncated_checkpoint(net: RRDBNet, tmp_path, zip_format: bool) -> None:
    path = tmp_path / "cut.pth"
    torch.save(net.state_dict(), path, _use_new_zipfile_serialization=zip_format)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TeacherWeightsError, match=r"cut\.pth.*not a readable PyTorch checkpoint.*truncated"):
        load_teacher(path, nb=NB)


class _Payload:
    """Pickles to a call of os.system: unpickling it without weights_only would run a shell command."""

    def __init__(self, marker: os.PathLike[str]) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_malicious_pickle_is_refused_and_payload_does_not_run(net: RRDBNet, tmp_path, zip_format: bool) -> None:
    marker = tmp_path / "pwned"
    state = dict(net.state_dict())
    state["conv_first.weight"] = _Payload(marker)
    path = tmp_path / "evil.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)

    with pytest.raises(TeacherWeightsError) as exc:
        load_teacher(path, nb=NB)
    msg = str(exc.value)
    assert "evil.pth" in msg and "refusing to unpickle arbitrary objects" in msg
    assert not marker.exists(), "the pickle payload ran"


def test_malicious_pickle_control_payload_is_live(tmp_path) -> None:
    # Control: proves the payload used above really executes under an unsafe load.
    marker = tmp_path / "control"
    path = _save({"x": _Payload(marker)}, tmp_path / "control.pth")
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_whole_pickled_module_is_refused(tmp_path) -> None:
    path = _save(RRDBNet(nb=1), tmp_path / "module.pth")
    with pytest.raises(TeacherWeightsError, match=r"module\.pth.*refusing to unpickle arbitrary objects"):
        load_teacher(path, nb=1)


@pytest.mark.parametrize("layout", TEACHER_LAYOUTS)
@pytest.mark.parametrize("requested", [1, 3, 23])
def test_wrong_nb_is_detected(net: RRDBNet, tmp_path, layout: str, requested: int) -> None:
    path = _save(to_layout(net.state_dict(), layout, NB), tmp_path / "nb2.pth")
    with pytest.raises(TeacherWeightsError) as exc:
        load_teacher(path, nb=requested)
    msg = str(exc.value)
    assert "nb2.pth" in msg
    assert f"nb={NB} RRDB blocks but nb={requested} was requested" in msg
    assert repr(layout) in msg
    assert "RRDB_trunk" not in msg and "keys" not in msg  # the block keys are explained by the nb


def test_wrong_nb_still_lists_other_problems(net: RRDBNet, tmp_path) -> None:
    state = to_layout(net.state_dict(), "esrgan-old", NB)
    del state["model.8.bias"]  # HRconv.bias
    path = _save(state, tmp_path / "nb2_broken.pth")
    with pytest.raises(TeacherWeightsError) as exc:
        load_teacher(path, nb=5)
    msg = str(exc.value)
    assert "nb=2 RRDB blocks but nb=5" in msg and "missing keys: HRconv.bias" in msg


def test_wrong_shape_names_key_and_shapes(net: RRDBNet, tmp_path) -> None:
    state = dict(net.state_dict())
    state["RRDB_trunk.1.RDB2.conv3.weight"] = torch.zeros(32, 120, 3, 3)
    path = _save(state, tmp_path / "shape.pth")
    with pytest.raises(TeacherWeightsError) as exc:
        load_teacher(path, nb=NB)
    msg = str(exc.value)
    assert "shape.pth" in msg and "RRDB_trunk.1.RDB2.conv3.weight" in msg
    assert "(32, 128, 3, 3)" in msg and "(32, 120, 3, 3)" in msg


def test_wrong_width_reports_file_sizes(tmp_path) -> None:
    small = RRDBNet(nf=16, nb=NB, gc=8)
    path = _save(to_layout(small.state_dict(), "esrgan-old", NB), tmp_path / "narrow.pth")
    with pytest.raises(TeacherWeightsError) as exc:
        load_teacher(path, nb=NB)
    msg = str(exc.value)
    assert "narrow.pth" in msg and "conv_first.weight" in msg
    assert "(64, 3, 3, 3)" in msg and "(16, 3, 3, 3)" in msg and "nf=16" in msg and "gc=8" in msg
    # and with the right sizes it loads
    assert load_teacher(path, nb=NB, nf=16, gc=8).nf == 16


def test_unrelated_state_dict(tmp_path) -> None:
    other = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 2))
    path = _save(other.state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(TeacherWeightsError) as exc:
        load_teacher(path)
    msg = str(exc.value)
    assert "resnet.pth" in msg and "not an ESRGAN RRDBNet state dict" in msg and "0.weight" in msg


def test_unexpected_and_missing_keys_are_named(net: RRDBNet, tmp_path) -> None:
    state = dict(net.state_dict())
    del state["HRconv.bias"]
    state["extra_head.weight"] = torch.zeros(1)
    path = _save(state, tmp_path / "keys.pth")
    with pytest.raises(TeacherWeightsError) as exc:
        load_teacher(path, nb=NB)
    msg = str(exc.value)
    assert "keys.pth" in msg
    assert "unexpected keys: extra_head.weight" in msg and "missing keys: HRconv.bias" in msg


def test_non_dict_content(tmp_path) -> None:
    path = _save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(TeacherWeightsError, match=r"list\.pth.*contains a list, not a state dict"):
        load_teacher(path)


def test_convert_state_dict_errors_are_value_errors(net: RRDBNet) -> None:
    with pytest.raises(ValueError, match="not a tensor"):
        convert_state_dict({"conv_first.weight": 1.0})
    with pytest.raises(ValueError, match="empty"):
        convert_state_dict({})
    with pytest.raises(ValueError, match="missing keys"):
        convert_state_dict({k: v for k, v in net.state_dict().items() if k != "conv_last.weight"}, nb=NB)
    assert issubclass(TeacherWeightsError, ValueError)
