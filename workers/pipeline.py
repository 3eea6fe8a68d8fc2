"""Ray Data side of training: read prepared shards into LR/HR pairs, split them for the search, crop.

Why this split of work: reading, PNG decoding and the MATLAB bicubic are the heavy, stateless part,
so Ray Data runs them in parallel next to training (every op asks for a fraction of a CPU, so a Tune
trial + a Train worker + Data tasks fit on a 2-CPU machine without deadlock). The random 32x32 crop
and flip stay in the training worker (``collate_crops`` / ``random_patch_pairs``): they must be
epoch-aware and resumable, so they draw from a ``torch.Generator`` the stage loop seeds with
(seed, epoch, rank).

Dataset names handed to ``TorchTrainer(datasets=...)``:

- ``"train_w"`` (``TRAIN_W``): chi_1, the first half of the sorted image ids; trains the weights.
- ``"train_a"`` (``TRAIN_A``): chi_2, the second half; trains the architecture.
- ``"train"`` (``TRAIN``): all training images (final training of a derived network).
- ``"val"`` (``VAL``): validation images, whole, never split across workers.

``data_config()`` splits only the training sets (``train_w``, ``train_a``, ``train``) across
workers.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import torch

from workers.imresize import downscale
from workers.shards.encoding import decode_image
from workers.shards.format import DataError, Manifest, read_manifest
from workers.storage import resolve_uri

if TYPE_CHECKING:
    import ray.data
    import ray.train

__all__ = [
    "DEFAULT_NUM_CPUS",
    "TRAIN",
    "TRAIN_A",
    "TRAIN_W",
    "VAL",
    "DeviceCrops",
    "collate_crops",
    "crop_draws",
    "cut_crops",
    "cut_device_crops",
    "data_config",
    "decode_pair",
    "decoded_rows",
    "finish_crops",
    "image_ids",
    "random_patch_pairs",
    "read_pairs",
    "role_ids",
    "search_datasets",
    "split_image_ids",
    "split_search",
    "unit_float",
    "val_pairs",
    "worker_rows",
]

TRAIN_W = "train_w"
TRAIN_A = "train_a"
TRAIN = "train"
VAL = "val"
DEFAULT_NUM_CPUS = 0.25


# --------------------------------------------------------------------------- decoding


def decode_pair(row: Mapping[str, Any], scale: int, encoding: str = "png") -> tuple[np.ndarray, np.ndarray]:
    """(LR, HR) uint8 HxWx3 arrays of one shard row; LR made by MATLAB bicubic when not stored.

    `encoding` is the data set's (`Manifest.encoding`): png, or raw bytes of the row's ``height`` x
    ``width`` (LR: / `scale`), the same pixels (`workers.shards.encoding`). A value that does not decode
    is a `DataError` naming the row and the field.
    """
    rid = row.get("id")
    hr_shape = (int(row["height"]), int(row["width"])) if row.get("height") is not None else None
    hr = decode_image(row["hr"], encoding, hr_shape, f"row {rid}, field hr")
    if row.get("lr") is None:
        return downscale(hr, scale), hr
    lr_shape = (hr.shape[0] // scale, hr.shape[1] // scale) if encoding == "raw" else None
    lr = decode_image(row["lr"], encoding, lr_shape, f"row {rid}, field lr")
    if (lr.shape[0] * scale, lr.shape[1] * scale) != hr.shape[:2]:
        raise DataError(f"row {rid}: LR {lr.shape[:2]} x{scale} does not match HR {hr.shape[:2]}")
    return lr, hr


def _decode_row(row: dict[str, Any], scale: int, encoding: str = "png") -> dict[str, Any]:
    lr, hr = decode_pair(row, scale, encoding)
    return {"id": row["id"], "image_id": row["image_id"], "lr": lr, "hr": hr}


# the columns a reader reads: height and width are what a raw image's bytes are reshaped to
_READ_COLUMNS = ["id", "image_id", "hr", "lr", "height", "width"]


def _manifest(path: str, scale: int) -> Manifest:
    m = read_manifest(path)
    if m.scale != scale:
        raise DataError(f"{path} was prepared for scale {m.scale}, not {scale}: prepare it for x{scale}")
    return m


# --------------------------------------------------------------------------- Ray Data


def _row_groups(m: Manifest) -> list[tuple[str, int, list[str]]]:
    """(shard, row group, image ids in it) for every row group, from the image_id column alone."""
    out = []
    for shard in m.shards:
        with pq.ParquetFile(shard, filesystem=m.filesystem) as pf:
            ids = [str(v) for v in pf.read(columns=["image_id"]).column("image_id").to_pylist()]
            sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
        start = 0
        for g, n in enumerate(sizes):
            out.append((shard, g, ids[start : start + n]))
            start += n
    return out


def _read_unit(
    unit: dict[str, Any], uri: str, scale: int, ids: frozenset[str] | None, encoding: str = "png"
) -> list[dict[str, Any]]:
    """Read one row group of a shard, keep the wanted image ids, decode them (runs in a Ray task)."""
    fs, _ = resolve_uri(uri)
    with pq.ParquetFile(unit["shard"], filesystem=fs) as pf:
        table = pf.read_row_group(int(unit["row_group"]), columns=_READ_COLUMNS)
    if ids is not None:
        table = table.filter(pc.is_in(table.column("image_id"), value_set=pa.array(sorted(ids), pa.string())))
    try:
        return [_decode_row(row, scale, encoding) for row in table.to_pylist()]
    except DataError as err:
        raise DataError(f"{unit['shard']}: {err}") from None


def read_pairs(
    path: str,
    scale: int,
    *,
    ids: Iterable[str] | None = None,
    num_cpus: float = DEFAULT_NUM_CPUS,
) -> ray.data.Dataset:
    """Rows ``{"id", "image_id", "lr": uint8 hxwx3, "hr": uint8 (h*scale)x(w*scale)x3}`` of a data set.

    ``ids`` keeps only rows whose ``image_id`` is in it; row groups without any are not even read,
    and rows are filtered before decoding. One Ray Data op reads + decodes one Parquet row group
    per task, in shard order, and requests ``num_cpus`` (a fraction of a CPU).

    Why not ``ray.data.read_parquet``: in Ray 2.60 it adds a ``ListFiles`` task that always asks
    for a whole CPU, which deadlocks a 2-CPU Tune trial + Train worker; the manifest already lists
    the shards, so no listing is needed.
    """
    import ray.data

    if not 0 < num_cpus < 1:
        raise ValueError(f"num_cpus must be a fraction of a CPU (0 < num_cpus < 1), got {num_cpus}")
    m = _manifest(path, scale)
    wanted = frozenset(ids) if ids is not None else None
    units = [
        {"shard": shard, "row_group": g}
        for shard, g, group_ids in _row_groups(m)
        if wanted is None or not wanted.isdisjoint(group_ids)
    ]
    if not units:
        raise DataError(f"{path}: no rows match the requested image ids")
    ds = ray.data.from_items(units, override_num_blocks=len(units))
    kwargs = {"uri": path, "scale": scale, "ids": wanted, "encoding": m.encoding}
    return ds.flat_map(_read_unit, fn_kwargs=kwargs, num_cpus=num_cpus)


def image_ids(path: str) -> list[str]:
    """The ``image_id`` column of a data set, read alone with pyarrow (cheap: no image bytes)."""
    return [i for _, _, ids in _row_groups(read_manifest(path)) for i in ids]


def split_image_ids(ids: Iterable[str]) -> tuple[list[str], list[str]]:
    """Deterministic 50/50 split by image: sorted distinct ids, first floor(n/2) -> chi_1, rest -> chi_2.

    The same as AGD's ``train_portion=0.5`` on a sorted file list; sub-images share their
    ``image_id``, so they always land on the same side. Input order and duplicates do not matter.
    """
    uniq = sorted(set(ids))
    half = len(uniq) // 2
    return uniq[:half], uniq[half:]


def split_search(
    path: str, scale: int, *, num_cpus: float = DEFAULT_NUM_CPUS
) -> tuple[ray.data.Dataset, ray.data.Dataset]:
    """(chi_1 for the weights, chi_2 for the architecture) pair datasets of one training data set."""
    w_ids, a_ids = split_image_ids(image_ids(path))
    if not w_ids or not a_ids:
        raise DataError(f"{path} holds {len(w_ids) + len(a_ids)} image(s); the search split needs at least 2")
    return (
        read_pairs(path, scale, ids=w_ids, num_cpus=num_cpus),
        read_pairs(path, scale, ids=a_ids, num_cpus=num_cpus),
    )


def search_datasets(
    train: str, val: str | None, scale: int, *, num_cpus: float = DEFAULT_NUM_CPUS
) -> dict[str, ray.data.Dataset]:
    """``{"train_w", "train_a"[, "val"]}`` for ``TorchTrainer(datasets=..., dataset_config=data_config())``."""
    w, a = split_search(train, scale, num_cpus=num_cpus)
    out = {TRAIN_W: w, TRAIN_A: a}
    if val is not None:
        out[VAL] = read_pairs(val, scale, num_cpus=num_cpus)
    return out


def data_config(
    split: Sequence[str] = (TRAIN_W, TRAIN_A, TRAIN), *, preserve_order: bool = True
) -> ray.train.DataConfig:
    """Ray Train ``DataConfig`` that splits the training sets named in ``split`` across workers.

    Any other dataset (``val``) reaches every worker whole. ``preserve_order`` keeps the row order
    deterministic (on top of Train's default ingest options), so a seeded crop generator sees the
    same images in the same order on a resume.
    """
    import ray.train

    with warnings.catch_warnings():  # Ray's own default options copy a deprecated field
        warnings.simplefilter("ignore", DeprecationWarning)
        options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = preserve_order
    return ray.train.DataConfig(datasets_to_split=list(split), execution_options=options)


def decoded_rows(path: str, scale: int, ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Rows ``{"id", "image_id", "lr", "hr"}`` of a (small) data set, decoded, sorted by row id; no Ray.

    ``ids`` keeps only rows of those image ids. What Ray Data would stream, held in one list: for
    validation sets and for running stage loops in a plain process (`workers.stage_io.LocalStageIO`).
    """
    m = _manifest(path, scale)
    table = pads.dataset(list(m.shards), filesystem=m.filesystem, format="parquet").to_table(columns=_READ_COLUMNS)
    if ids is not None:
        table = table.filter(pc.is_in(table.column("image_id"), value_set=pa.array(sorted(set(ids)), pa.string())))
    rows = sorted(table.to_pylist(), key=lambda r: r["id"])
    try:
        return [_decode_row(r, scale, m.encoding) for r in rows]
    except DataError as err:
        raise DataError(f"{path}: {err}") from None


def role_ids(path: str, role: str) -> list[str] | None:
    """Image ids of a training role: w = χ1, a = χ2 (the search split), all = None (every row)."""
    if role == "all":
        return None
    if role not in ("w", "a"):
        raise ValueError(f"role must be w, a or all, got {role!r}")
    chi1, chi2 = split_image_ids(image_ids(path))
    return chi1 if role == "w" else chi2


def worker_rows(path: str, scale: int, role: str, rank: int = 0, world: int = 1) -> list[dict[str, Any]]:
    """This worker's equal share of a role's rows, decoded (what `streaming_split(equal=True)` would give)."""
    rows = decoded_rows(path, scale, role_ids(path, role))
    share = len(rows) // world
    return rows[rank * share : (rank + 1) * share]


def val_pairs(path: str, scale: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """All (LR, HR) uint8 HxWx3 pairs of a (small) data set, sorted by row id; no Ray involved."""
    return [(row["lr"], row["hr"]) for row in decoded_rows(path, scale)]


# --------------------------------------------------------------------------- crops (training worker)


def _draws(n: int, augment: bool, generator: torch.Generator) -> list[list[float]]:
    """Per sample uniforms: (y, x, hflip[, vflip, rot90]); one call so batch and rows agree.

    Drawn as one float64 tensor (the generator's draws are those of every earlier version) and
    handed on as Python floats: the same doubles, without a tensor op per comparison.
    """
    return torch.rand((n, 5 if augment else 3), generator=generator, dtype=torch.float64).tolist()


def _offset(
    lr_hw: Sequence[int], hr_hw: Sequence[int], patch: int, scale: int, u: Sequence[float], name: str
) -> tuple[int, int]:
    """Top-left LR corner of the crop drawn by uniforms ``u``, after checking the pair's sizes."""
    h, w = int(lr_hw[0]), int(lr_hw[1])
    if h < patch or w < patch:
        raise ValueError(f"{name}: LR image {h}x{w} is smaller than the patch {patch}")
    if (int(hr_hw[0]), int(hr_hw[1])) != (h * scale, w * scale):
        raise ValueError(f"{name}: HR {tuple(hr_hw)} is not LR {h}x{w} x{scale}")
    y = min(int(u[0] * (h - patch + 1)), h - patch)
    x = min(int(u[1] * (w - patch + 1)), w - patch)
    return y, x


def _flips(lp: torch.Tensor, hp: torch.Tensor, u: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal flip, then (with augment) vertical flip and transpose, of one CHW pair."""
    if u[2] < 0.5:
        lp, hp = lp.flip(-1), hp.flip(-1)
    if len(u) > 3:
        if u[3] < 0.5:
            lp, hp = lp.flip(-2), hp.flip(-2)
        if u[4] < 0.5:
            lp, hp = lp.transpose(-1, -2), hp.transpose(-1, -2)
    return lp, hp


def _chw_view(image: np.ndarray, y: int, x: int, size: int, u: Sequence[float]) -> np.ndarray:
    """The size×size crop at (y, x) of an HWC image, flipped as `_flips` flips, as a CHW numpy view (no copy).

    Flips are reversed strides and the transpose swapped axes, so the one copy into the batch buffer
    does them: hflip reverses W, vflip reverses H, then the transpose makes (C, W, H).
    """
    view = image[y : y + size, x : x + size]
    if u[2] < 0.5:
        view = view[:, ::-1]
    if len(u) > 3:
        if u[3] < 0.5:
            view = view[::-1]
        if u[4] < 0.5:
            return view.transpose(2, 1, 0)
    return view.transpose(2, 0, 1)


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


# The 256 floats `_to_unit` maps uint8 values to, computed once on the CPU; per device, a copy there.
_UNIT_TABLE = _to_unit(torch.arange(256, dtype=torch.uint8))
_unit_tables: dict[torch.device, torch.Tensor] = {}


def unit_float(x: torch.Tensor) -> torch.Tensor:
    """A uint8 batch as float in [0, 1] on its own device, the values `_to_unit` gives on the CPU, bit for bit.

    Why a table and not ``x.float() / 255`` on the device: CUDA divides by a CPU scalar as a multiplication
    by its reciprocal (`div_true_kernel_cuda`), which rounds 126 of the 256 values differently from the
    CPU's division; a lookup of the CPU's own values cannot differ. Lets the cutting thread ship uint8
    batches (a quarter of the bytes, no conversion on the CPU) with the same float values on the device.
    """
    if x.dtype != torch.uint8:
        raise ValueError(f"unit_float takes a uint8 batch, got {x.dtype}")
    if x.device.type == "cpu":
        return _to_unit(x)  # the CPU's own division (~15x cheaper there than the lookup, the same values)
    return _unit_lookup(x)


def _unit_lookup(x: torch.Tensor) -> torch.Tensor:
    """`unit_float` by a lookup in the table of the CPU's 256 values, on `x`'s device."""
    table = _unit_tables.get(x.device)
    if table is None:
        table = _unit_tables.setdefault(x.device, _UNIT_TABLE.to(x.device))
    return table[x.long()]


def random_patch_pairs(
    lr: torch.Tensor,
    hr: torch.Tensor,
    patch: int,
    scale: int,
    generator: torch.Generator,
    *,
    augment: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random aligned crops of a batch: LR ``[N,3,p,p]`` and HR ``[N,3,p*s,p*s]``, float in [0, 1].

    ``lr``/``hr`` are ``[N,3,h,w]``/``[N,3,h*s,w*s]``, uint8 (divided by 255) or float in [0, 1].
    Each sample gets its own offset and a random horizontal flip (the paper's only augmentation);
    ``augment=True`` adds BasicSR's vertical flip and transpose (90° rotation). Deterministic
    given ``generator``; the same draws as ``collate_crops`` on the same rows.
    """
    if lr.ndim != 4 or hr.ndim != 4:
        raise ValueError(f"expected NCHW batches, got LR {tuple(lr.shape)} and HR {tuple(hr.shape)}")
    u = _draws(lr.shape[0], augment, generator)
    out_lr, out_hr = [], []
    for i in range(lr.shape[0]):
        y, x = _offset(lr.shape[-2:], hr.shape[-2:], patch, scale, u[i], f"sample {i}")
        lp = lr[i, :, y : y + patch, x : x + patch]
        hp = hr[i, :, y * scale : (y + patch) * scale, x * scale : (x + patch) * scale]
        lp, hp = _flips(lp, hp, u[i])
        out_lr.append(lp)
        out_hr.append(hp)
    return _to_unit(torch.stack(out_lr)), _to_unit(torch.stack(out_hr))


def _flip_flags(u: Sequence[float]) -> tuple[bool, bool, bool]:
    """(horizontal flip, vertical flip, transpose) of the crop drawn by uniforms `u`, as `_flips` decides them."""
    augment = len(u) > 3
    return u[2] < 0.5, augment and u[3] < 0.5, augment and u[4] < 0.5


def _column(batch: Mapping[str, Any] | Sequence[Mapping[str, Any]], key: str) -> list[np.ndarray]:
    if isinstance(batch, Mapping):
        return list(batch[key])  # a stacked N,h,w,3 array or an object array of ragged HxWx3 arrays
    return [row[key] for row in batch]


def _ids(batch: Mapping[str, Any] | Sequence[Mapping[str, Any]], n: int) -> list[str]:
    """Row names for error messages: the ``id`` column when present."""
    if isinstance(batch, Mapping):
        return [str(v) for v in batch["id"]] if "id" in batch else [f"row {i}" for i in range(n)]
    return [str(row.get("id", f"row {i}")) for i, row in enumerate(batch)]


def crop_draws(n: int, generator: torch.Generator, *, augment: bool = False) -> list[list[float]]:
    """The uniforms of n crops (offsets, flips) from `generator`: what `collate_crops` draws for a batch of n rows."""
    return _draws(n, augment, generator)


def collate_crops(
    batch_rows: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    patch: int,
    scale: int,
    generator: torch.Generator,
    *,
    augment: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop each row of a ``read_pairs`` batch (images of any sizes), then stack: like ``random_patch_pairs``.

    ``batch_rows`` is what ``iter_batches(batch_format="numpy")`` yields (a dict of columns;
    ragged images come as an object array of HxWx3 arrays) or a list of row dicts. The same as
    `cut_crops` with `crop_draws` of the batch's size.
    """
    n = len(_column(batch_rows, "lr"))
    if not n:
        raise ValueError("collate_crops got an empty batch: no rows to crop")
    return cut_crops(batch_rows, patch, scale, crop_draws(n, generator, augment=augment))


def _batch_rows(
    batch_rows: Mapping[str, Any] | Sequence[Mapping[str, Any]], draws: Sequence[Sequence[float]], cut: str
) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """A batch's LR and HR rows and their names, checked to match `draws` one for one (`cut` names the caller)."""
    lrs, hrs = _column(batch_rows, "lr"), _column(batch_rows, "hr")
    if not lrs or len(draws) != len(lrs):
        raise ValueError(f"{cut} got {len(lrs)} rows and {len(draws)} draws: one draw per row, at least one row")
    return lrs, hrs, _ids(batch_rows, len(lrs))


def cut_crops(
    batch_rows: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    patch: int,
    scale: int,
    draws: Sequence[Sequence[float]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The crops of a batch given their draws (`crop_draws`): LR ``[N,3,p,p]``, HR ``[N,3,p*s,p*s]``, float in [0, 1].

    Why apart from the draws: drawing is sequential (one generator), cutting is not, so cuts of later
    batches can run on other threads while the draws stay in order (`workers.batches.patch_batches`).
    Why it is built this way: this runs for every training pair. Each crop, with its flips, is one
    strided numpy copy straight into the batch's NCHW buffer of the rows' dtype (uint8), and the batch
    becomes float once; one tensor per crop, flipped, stacked and converted (main before) took ~1.5x the
    CPU (`bench/data_feed.py`). The bytes are those of the per-crop version (`bench/crop_reference.py`,
    tested equal).
    """
    lrs, hrs, ids = _batch_rows(batch_rows, draws, "cut_crops")
    big = patch * scale
    out_lr = np.empty((len(lrs), 3, patch, patch), dtype=np.asarray(lrs[0]).dtype)
    out_hr = np.empty((len(hrs), 3, big, big), dtype=np.asarray(hrs[0]).dtype)
    for i, (lr, hr) in enumerate(zip(lrs, hrs, strict=True)):  # inline, not a helper: it runs for every pair
        lr, hr = np.asarray(lr), np.asarray(hr)
        if (lr.dtype, hr.dtype, lr.shape[2:], hr.shape[2:]) != (out_lr.dtype, out_hr.dtype, (3,), (3,)):
            raise ValueError(
                f"{ids[i]}: LR {lr.dtype} {lr.shape} / HR {hr.dtype} {hr.shape} are not HxWx3 images of the batch's "
                f"dtypes ({out_lr.dtype} / {out_hr.dtype})"
            )
        y, x = _offset(lr.shape[:2], hr.shape[:2], patch, scale, draws[i], ids[i])
        out_lr[i] = _chw_view(lr, y, x, patch, draws[i])
        out_hr[i] = _chw_view(hr, y * scale, x * scale, big, draws[i])
    return _to_unit(torch.from_numpy(out_lr)), _to_unit(torch.from_numpy(out_hr))


class DeviceCrops(NamedTuple):
    """A batch's crops as the CPU cuts them for the training device to finish (`finish_crops`).

    Unflipped uint8 NHWC crops (each a copy of whole pixel rows) and each crop's flips: the flips, the
    channel de-interleave to NCHW and the float conversion, ~70 % of `cut_crops`' CPU, are left to the device.
    """

    lr: torch.Tensor  # [N, p, p, 3] uint8
    hr: torch.Tensor  # [N, p*s, p*s, 3] uint8
    flips: torch.Tensor  # [N, 3] bool: horizontal flip, vertical flip, transpose


def cut_device_crops(
    batch_rows: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    patch: int,
    scale: int,
    draws: Sequence[Sequence[float]],
) -> DeviceCrops:
    """The crops of a batch given their draws, as `cut_crops` cuts them but left for `finish_crops` on the device.

    Why: on one thread the cut caps a worker's feed, and most of its CPU is the strided HWC → CHW copy
    and the conversion (`bench/data_feed.py`); copying whole pixel rows is ~3x cheaper, and a GPU does the
    rest of a batch in a few kernels. `finish_crops` of this is `cut_crops` of the same draws, bit for bit.
    """
    lrs, hrs, ids = _batch_rows(batch_rows, draws, "cut_device_crops")
    big = patch * scale
    out_lr = np.empty((len(lrs), patch, patch, 3), dtype=np.uint8)
    out_hr = np.empty((len(hrs), big, big, 3), dtype=np.uint8)
    flips = np.empty((len(lrs), 3), dtype=bool)
    for i, (lr, hr) in enumerate(zip(lrs, hrs, strict=True)):
        lr, hr = np.asarray(lr), np.asarray(hr)
        if (lr.dtype, hr.dtype, lr.shape[2:], hr.shape[2:]) != (np.uint8, np.uint8, (3,), (3,)):
            raise ValueError(
                f"{ids[i]}: LR {lr.dtype} {lr.shape} / HR {hr.dtype} {hr.shape} are not uint8 HxWx3 images"
            )
        y, x = _offset(lr.shape[:2], hr.shape[:2], patch, scale, draws[i], ids[i])
        out_lr[i] = lr[y : y + patch, x : x + patch]
        out_hr[i] = hr[y * scale : y * scale + big, x * scale : x * scale + big]
        flips[i] = _flip_flags(draws[i])
    return DeviceCrops(torch.from_numpy(out_lr), torch.from_numpy(out_hr), torch.from_numpy(flips))


def finish_crops(crops: DeviceCrops, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """LR ``[N,3,p,p]`` and HR float batches on `device` from `cut_device_crops`: `cut_crops`' values, bit for bit.

    Flips, transposes and the NCHW permutation only move bytes, selected per crop with ``torch.where``; the
    float values come from `unit_float` (a table of the CPU's values off the CPU). Which flips any crop needs
    is read from the CPU copy of the flags, so the device is never synchronised.
    """
    device = torch.device(device)
    wanted = crops.flips.any(dim=0).tolist()  # on the CPU: which of the three moves any crop of the batch needs
    masks = crops.flips.to(device).view(-1, 3, 1, 1, 1)
    out = []
    for batch in (crops.lr, crops.hr):
        x = batch.to(device)
        for k, move in enumerate((lambda t: t.flip(2), lambda t: t.flip(1), lambda t: t.transpose(1, 2))):
            if wanted[k]:
                x = torch.where(masks[:, k], move(x), x)
        out.append(unit_float(x.permute(0, 3, 1, 2).contiguous()))
    return out[0], out[1]
