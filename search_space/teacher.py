"""The frozen ESRGAN teacher (RRDBNet, x4) that supervises the search and the final training.

Why this module exists: TrilevelNAS distils from a pretrained ESRGAN generator (``RRDB_PSNR_x4.pth``
for PSNR-oriented models, ``RRDB_ESRGAN_x4.pth`` for visualization-oriented ones; method.md §3
"Teachers"). Those files were published over several years in three incompatible key layouts:

* ``"esrgan-old"``: the original 2018 release, saved from a ``nn.Sequential`` ("model.0.weight",
  "model.1.sub.N.RDB1.conv1.0.weight", ...);
* ``"esrgan"``: the same weights re-keyed by the official ESRGAN repo for its ``RRDBNet_arch.py``
  ("conv_first", "RRDB_trunk.N.RDB1.conv1", "trunk_conv", "upconv1", "upconv2", "HRconv", "conv_last");
* ``"basicsr"``: BasicSR / Real-ESRGAN ("conv_first", "body.N.rdb1.conv1", "conv_body", "conv_up1",
  "conv_up2", "conv_hr", "conv_last"), possibly wrapped as ``{"params": ...}`` / ``{"params_ema": ...}``.

We keep one architecture (parameter names in the "esrgan" layout, which is the one the teacher
checkpoints in the TrilevelNAS/AGD code use) and convert the others on load, so every experiment
config can point ``supervision.teacher`` at whichever file the user has.

Loading is also a security boundary: a ``.pth`` is a pickle, and a pickle can run arbitrary code.
We therefore always load with ``weights_only=True`` and turn every failure into a
:class:`TeacherWeightsError` that names the file and says what is wrong, because a teacher that is
silently mis-loaded (wrong blocks, wrong layout) would quietly ruin a multi-day search.

Pure PyTorch: no Ray or MLflow import here.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "TEACHER_LAYOUTS",
    "RRDBNet",
    "TeacherWeightsError",
    "convert_state_dict",
    "load_teacher",
]

logger = logging.getLogger(__name__)

#: The published key layouts :func:`convert_state_dict` understands (see the module docstring).
TEACHER_LAYOUTS: tuple[str, ...] = ("esrgan-old", "esrgan", "basicsr")

_LRELU_SLOPE = 0.2
_RESIDUAL_SCALE = 0.2

_WHERE_TO_GET = (
    "The pretrained ESRGAN teachers RRDB_PSNR_x4.pth (PSNR-oriented) and RRDB_ESRGAN_x4.pth "
    "(visualization-oriented) are published with the official ESRGAN code, "
    "https://github.com/xinntao/ESRGAN (see its README, 'Quick Test': Google Drive / Baidu Drive "
    "links to the models/ folder). Download one and set its path in the experiment's "
    "supervision.teacher field."
)


class TeacherWeightsError(ValueError):
    """The teacher checkpoint is missing, unreadable, unsafe, or not an ESRGAN RRDBNet of the expected shape.

    A ``ValueError`` subclass so callers validating a whole experiment config can catch one type.
    """


# --------------------------------------------------------------------------------------------------
# Architecture
# --------------------------------------------------------------------------------------------------


class ResidualDenseBlock5C(nn.Module):
    """Residual dense block with 5 convs (ESRGAN's ``ResidualDenseBlock_5C``).

    Each conv sees the block input concatenated with all previous growth features (dense
    connectivity); the output is scaled by 0.2 before the residual add, which ESRGAN uses to keep
    the very deep trunk stable without batch norm.
    """

    def __init__(self, nf: int = 64, gc: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(nf, gc, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf + gc, gc, 3, 1, 1)
        self.conv3 = nn.Conv2d(nf + 2 * gc, gc, 3, 1, 1)
        self.conv4 = nn.Conv2d(nf + 3 * gc, gc, 3, 1, 1)
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(F.leaky_relu(conv(torch.cat(feats, dim=1)), _LRELU_SLOPE))
        out = self.conv5(torch.cat(feats, dim=1))
        return x + _RESIDUAL_SCALE * out


class RRDB(nn.Module):
    """Residual-in-residual dense block: three :class:`ResidualDenseBlock5C` plus a scaled skip."""

    def __init__(self, nf: int = 64, gc: int = 32) -> None:
        super().__init__()
        self.RDB1 = ResidualDenseBlock5C(nf, gc)
        self.RDB2 = ResidualDenseBlock5C(nf, gc)
        self.RDB3 = ResidualDenseBlock5C(nf, gc)

    def forward(self, x: Tensor) -> Tensor:
        out = self.RDB3(self.RDB2(self.RDB1(x)))
        return x + _RESIDUAL_SCALE * out


class RRDBNet(nn.Module):
    """ESRGAN's x4 generator, with parameter names in the "new" official ESRGAN layout.

    conv_first -> ``nb`` RRDBs -> trunk_conv, plus a global residual from conv_first; then two
    (nearest x2 -> conv -> LeakyReLU) upsamplings, HRconv -> LeakyReLU, conv_last. No output
    activation (no tanh): outputs are nominally in [0, 1] but are not clamped, as in ESRGAN.

    It has no batch norm or dropout, so train/eval mode does not change its outputs; the teacher is
    still put in eval mode by :func:`load_teacher` for clarity. Weights use PyTorch's default init:
    this class exists to host pretrained weights, not to be trained from scratch here.
    """

    def __init__(self, in_nc: int = 3, out_nc: int = 3, nf: int = 64, nb: int = 23, gc: int = 32) -> None:
        super().__init__()
        if min(in_nc, out_nc, nf, gc) < 1 or nb < 0:
            raise ValueError(f"invalid RRDBNet sizes: in_nc={in_nc} out_nc={out_nc} nf={nf} nb={nb} gc={gc}")
        self.in_nc, self.out_nc, self.nf, self.nb, self.gc = in_nc, out_nc, nf, nb, gc
        self.conv_first = nn.Conv2d(in_nc, nf, 3, 1, 1)
        self.RRDB_trunk = nn.Sequential(*(RRDB(nf, gc) for _ in range(nb)))
        self.trunk_conv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.upconv1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.upconv2 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.HRconv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, out_nc, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Super-resolve ``x`` (N, in_nc, H, W) to (N, out_nc, 4H, 4W)."""
        fea = self.conv_first(x)
        fea = fea + self.trunk_conv(self.RRDB_trunk(fea))
        for upconv in (self.upconv1, self.upconv2):
            fea = F.leaky_relu(upconv(F.interpolate(fea, scale_factor=2, mode="nearest")), _LRELU_SLOPE)
        return self.conv_last(F.leaky_relu(self.HRconv(fea), _LRELU_SLOPE))


# --------------------------------------------------------------------------------------------------
# Key-layout conversion
# --------------------------------------------------------------------------------------------------

_PARAM = r"(weight|bias)"
_OUR_BLOCK = re.compile(rf"^RRDB_trunk\.(\d+)\.RDB([123])\.conv([1-5])\.{_PARAM}$")
_OLD_BLOCK = re.compile(rf"^model\.1\.sub\.(\d+)\.RDB([123])\.conv([1-5])\.0\.{_PARAM}$")
_BSR_BLOCK = re.compile(rf"^body\.(\d+)\.rdb([123])\.conv([1-5])\.{_PARAM}$")

# Prefixes whose index counts RRDB blocks, per layout (used to detect a file's nb).
_NB_PATTERNS: dict[str, re.Pattern[str]] = {
    "esrgan-old": re.compile(r"^model\.1\.sub\.(\d+)\.RDB"),
    "esrgan": re.compile(r"^RRDB_trunk\.(\d+)\."),
    "basicsr": re.compile(r"^body\.(\d+)\."),
}

_OUR_SINGLE = ("conv_first", "trunk_conv", "upconv1", "upconv2", "HRconv", "conv_last")
_BSR_SINGLE = {
    "conv_first": "conv_first",
    "conv_body": "trunk_conv",
    "conv_up1": "upconv1",
    "conv_up2": "upconv2",
    "conv_hr": "HRconv",
    "conv_last": "conv_last",
}


def _old_single(nb_file: int) -> dict[str, str]:
    # In the 2018 Sequential, model.1 is a ShortcutBlock whose .sub holds the nb RRDBs followed by
    # the trunk conv (index nb); model.2/4/7/9 are parameter-free (upsample, lrelu).
    return {
        "model.0": "conv_first",
        f"model.1.sub.{nb_file}": "trunk_conv",
        "model.3": "upconv1",
        "model.6": "upconv2",
        "model.8": "HRconv",
        "model.10": "conv_last",
    }


def _split_param(key: str) -> tuple[str, str] | None:
    module, _, param = key.rpartition(".")
    return (module, param) if param in ("weight", "bias") and module else None


def _renamer(layout: str, nb_file: int) -> Callable[[str], str | None]:
    """Return a function mapping a key of ``layout`` to our key, or ``None`` if it is not an RRDBNet key."""
    if layout == "esrgan":

        def rename(key: str) -> str | None:
            split = _split_param(key)
            if (split and split[0] in _OUR_SINGLE) or _OUR_BLOCK.match(key):
                return key
            return None

    elif layout == "basicsr":

        def rename(key: str) -> str | None:
            split = _split_param(key)
            if split and split[0] in _BSR_SINGLE:
                return f"{_BSR_SINGLE[split[0]]}.{split[1]}"
            m = _BSR_BLOCK.match(key)
            return f"RRDB_trunk.{m[1]}.RDB{m[2]}.conv{m[3]}.{m[4]}" if m else None

    elif layout == "esrgan-old":
        single = _old_single(nb_file)

        def rename(key: str) -> str | None:
            split = _split_param(key)
            if split and split[0] in single:
                return f"{single[split[0]]}.{split[1]}"
            m = _OLD_BLOCK.match(key)
            return f"RRDB_trunk.{m[1]}.RDB{m[2]}.conv{m[3]}.{m[4]}" if m else None

    else:  # pragma: no cover - guarded by TEACHER_LAYOUTS
        raise ValueError(f"unknown layout {layout!r}; expected one of {TEACHER_LAYOUTS}")
    return rename


def _detect_nb(keys: Iterable[str], layout: str) -> int:
    """Number of RRDB blocks a state dict of ``layout`` holds: highest block index + 1 (0 if none)."""
    pattern = _NB_PATTERNS[layout]
    indices = [int(m[1]) for k in keys if (m := pattern.match(k))]
    return max(indices) + 1 if indices else 0


def _expected_keys(nb: int) -> list[str]:
    """Parameter names of ``RRDBNet(nb=nb)``, in module order, without instantiating it."""
    keys = [f"conv_first.{p}" for p in ("weight", "bias")]
    for i in range(nb):
        for j in (1, 2, 3):
            for c in range(1, 6):
                keys += [f"RRDB_trunk.{i}.RDB{j}.conv{c}.{p}" for p in ("weight", "bias")]
    for name in _OUR_SINGLE[1:]:
        keys += [f"{name}.{p}" for p in ("weight", "bias")]
    return keys


def _block_index(key: str) -> int:
    """RRDB index of one of our keys (``-1`` for keys outside the trunk)."""
    m = _OUR_BLOCK.match(key)
    return int(m[1]) if m else -1


def _preview(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} (+{len(keys) - limit} more)" if len(keys) > limit else shown


def convert_state_dict(state: Mapping[str, Tensor], nb: int = 23) -> dict[str, Tensor]:
    """Rename a teacher state dict from any of :data:`TEACHER_LAYOUTS` to :class:`RRDBNet`'s names.

    Why: the official checkpoints exist in three key layouts (module docstring); converting here
    lets one architecture serve them all. The layout is detected as the one that recognises the most
    keys; a DataParallel ``module.`` prefix is stripped. The file's own number of RRDB blocks is
    detected from its keys (in the old layout the trunk conv's index depends on it).

    Raises ``ValueError`` naming the detected layout and the offending keys when the dict holds
    non-tensors, has a different number of blocks than ``nb``, has unknown keys, or lacks keys.
    Shapes are not checked here (that needs nf/gc; :func:`load_teacher` does it).
    """
    if not isinstance(state, Mapping):
        raise ValueError(f"expected a state dict (mapping of name -> tensor), got {type(state).__name__}")
    cleaned: dict[str, Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise ValueError(f"state dict key {key!r} is a {type(key).__name__}, not a string")
        if not isinstance(value, Tensor):
            raise ValueError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor")
        cleaned[key.removeprefix("module.")] = value
    if not cleaned:
        raise ValueError("the state dict is empty")

    best: tuple[int, str, int, dict[str, str], list[str]] | None = None
    for layout in ("esrgan", "basicsr", "esrgan-old"):  # tie-break: prefer our own layout
        nb_file = _detect_nb(cleaned, layout)
        rename = _renamer(layout, nb_file)
        mapped: dict[str, str] = {}
        unknown: list[str] = []
        for key in cleaned:
            new = rename(key)
            if new is None:
                unknown.append(key)
            else:
                mapped[key] = new
        if best is None or len(mapped) > best[0]:
            best = (len(mapped), layout, nb_file, mapped, unknown)
    assert best is not None
    n_mapped, layout, nb_file, mapped, unknown = best
    if n_mapped == 0:
        raise ValueError(
            "not an ESRGAN RRDBNet state dict: none of its keys matches any known layout "
            f"{TEACHER_LAYOUTS} (first keys: {_preview(list(cleaned))})"
        )

    converted = {new: cleaned[old] for old, new in mapped.items()}
    expected = _expected_keys(nb)
    expected_set = set(expected)
    unexpected = unknown + [old for old, new in mapped.items() if new not in expected_set]
    missing = [k for k in expected if k not in converted]
    problems = []
    if nb_file != nb:
        problems.append(
            f"the file holds nb={nb_file} RRDB blocks but nb={nb} was requested "
            f"(pass nb={nb_file}, or use a checkpoint with {nb} blocks)"
        )
        # Keys of the blocks beyond the smaller trunk are explained by that; list only the rest.
        extra = {old for old, new in mapped.items() if _block_index(new) >= min(nb, nb_file)}
        unexpected = [k for k in unexpected if k not in extra]
        missing = [k for k in missing if _block_index(k) < min(nb, nb_file)]
    if unexpected:
        problems.append(f"unexpected keys: {_preview(unexpected)}")
    if missing:
        problems.append(f"missing keys: {_preview(missing)}")
    if problems:
        raise ValueError(f"wrong architecture (detected layout {layout!r}): " + "; ".join(problems))
    return converted


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------

# torch.save's legacy (pre-1.6) format starts with a pickled magic number: PROTO n, LONG1 10 bytes.
_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_REFUSAL_DETAIL = re.compile(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) ([\w.]+)")


def _format_problem(path: Path) -> str | None:
    """Cheap format sniff, so garbage is reported as "not a checkpoint" rather than as unsafe.

    Returns ``None`` for a torch.save zip archive or a legacy torch pickle, else what is wrong.
    """
    with path.open("rb") as fh:
        head = fh.read(14)
    if zipfile.is_zipfile(path):
        return None
    if head[:4] == b"PK\x03\x04":
        return "not a readable PyTorch checkpoint (corrupt or truncated?): damaged zip archive"
    if len(head) == 14 and head[0] == 0x80 and head[2:4] == b"\x8a\x0a" and head[4:] == _LEGACY_MAGIC:
        return None
    return "not a PyTorch checkpoint (neither a torch.save zip archive nor a legacy torch pickle)"


def _fail(path: Path, problem: str) -> TeacherWeightsError:
    return TeacherWeightsError(f"teacher weights {path}: {problem}")


def _refusal(path: Path, err: BaseException) -> TeacherWeightsError:
    detail = _REFUSAL_DETAIL.search(str(err))
    why = f" (it references {detail[1]})" if detail else ""
    return _fail(
        path,
        "refusing to unpickle arbitrary objects: the file contains more than plain tensors and "
        f"torch.load(weights_only=True) rejected it{why}. If it is a whole pickled model, re-save its "
        "state_dict() from a trusted environment.",
    )


def _torch_load(path: Path) -> object:
    try:
        problem = _format_problem(path)
        if problem is not None:
            raise _fail(path, problem)
        return torch.load(path, map_location="cpu", weights_only=True)
    except TeacherWeightsError:
        raise
    except pickle.UnpicklingError as err:
        raise _refusal(path, err) from err
    except RuntimeError as err:
        if "weights only" in str(err).lower() or "weights_only" in str(err):
            raise _refusal(path, err) from err
        raise _fail(path, f"not a readable PyTorch checkpoint (corrupt or truncated?): {err}") from err
    except OSError as err:
        raise _fail(path, f"cannot read the file: {err}") from err
    except Exception as err:  # EOFError, KeyError, ... from a damaged legacy pickle
        raise _fail(
            path, f"not a readable PyTorch checkpoint (corrupt or truncated?): {type(err).__name__}: {err}"
        ) from err


def _unwrap(path: Path, obj: object) -> Mapping[str, Tensor]:
    """Return the state dict inside ``obj``: plain, or BasicSR's {"params_ema"/"params": ...} wrapper."""
    if not isinstance(obj, Mapping):
        raise _fail(path, f"contains a {type(obj).__name__}, not a state dict")
    for wrapper in ("params_ema", "params"):  # the EMA weights are the ones BasicSR evaluates
        inner = obj.get(wrapper)
        if isinstance(inner, Mapping):
            return inner
    return obj


def _shape_hint(state: Mapping[str, Tensor]) -> str:
    """Describe the sizes the file was built with, to make a shape mismatch actionable."""
    found = []
    first = state.get("conv_first.weight")
    if first is not None and first.dim() == 4:
        found += [f"in_nc={first.shape[1]}", f"nf={first.shape[0]}"]
    growth = state.get("RRDB_trunk.0.RDB1.conv1.weight")
    if growth is not None and growth.dim() >= 1:
        found.append(f"gc={growth.shape[0]}")
    last = state.get("conv_last.weight")
    if last is not None and last.dim() >= 1:
        found.append(f"out_nc={last.shape[0]}")
    return f" (the file looks like {', '.join(found)})" if found else ""


def load_teacher(path: str | os.PathLike[str], nb: int = 23, nf: int = 64, gc: int = 32) -> RRDBNet:
    """Load a pretrained ESRGAN teacher, frozen (``requires_grad=False``) and in eval mode.

    Why frozen: the teacher only provides targets; its weights must never receive gradients or be
    touched by an optimizer that is handed ``model.parameters()`` by mistake.

    Accepts any of :data:`TEACHER_LAYOUTS`, plain or wrapped as BasicSR's ``{"params_ema": ...}`` /
    ``{"params": ...}`` (EMA preferred). Loads with ``weights_only=True`` only. Every failure
    (missing file, not a checkpoint, unsafe pickle, wrong layout / number of blocks / shapes) raises
    :class:`TeacherWeightsError` naming the file and the problem.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise _fail(p, f"file not found. {_WHERE_TO_GET}")
    if not p.is_file():
        raise _fail(p, "is not a regular file")

    state = _unwrap(p, _torch_load(p))
    try:
        converted = convert_state_dict(state, nb=nb)
    except ValueError as err:
        raise _fail(p, str(err)) from err

    model = RRDBNet(nf=nf, nb=nb, gc=gc)
    for key, param in model.state_dict().items():
        found = converted[key]
        if found.shape != param.shape:
            raise _fail(
                p,
                f"shape mismatch at {key}: expected {tuple(param.shape)} for "
                f"RRDBNet(nf={nf}, nb={nb}, gc={gc}), found {tuple(found.shape)}{_shape_hint(converted)}",
            )
        if not found.is_floating_point():
            raise _fail(p, f"{key} has dtype {found.dtype}, expected a floating-point tensor")
    model.load_state_dict(converted, strict=True)
    model.requires_grad_(False)
    model.eval()
    logger.info("loaded teacher %s (nb=%d, nf=%d, gc=%d)", p, nb, nf, gc)
    return model
