"""LR/HR patches per second one worker's data feed produces at paper settings, against what a GPU step consumes.

    python -m bench.data_feed               # 3 DIV2K-sized images, 3 rounds (~3-4 min of one core)
    python -m bench.data_feed --quick       # 1 smaller image, 1 round
    python -m bench.data_feed --threads 1,2,4 --cpus 4   # on a GPU node with idle cores

What a worker does per training crop, measured as process CPU time on one thread (steadier than wall
time on a shared machine), in one run, for each way the data can be prepared and cropped:

- **read + decode** = what a Ray Data task (or the in-memory reader) does per row: `_read_unit` on
  every row group of the shards (Parquet read, page decompression for raw shards, then
  `workers.pipeline.decode_pair`: PNG inflate or a reshape of raw bytes, the MATLAB bicubic when no LR is
  stored);
- **crop** = what the training worker's cutting thread(s) do per batch (random 32×32 LR crops with their
  128×128 HR crops, flips), batch 16, on batches drawn as `workers.batches.patch_batches` draws them.
  Measured twice, batch by batch interleaved on the same draws (thread CPU time): `cut_crops`, flipped, NCHW
  and float on the CPU (**today**, and still what a CPU run does), and `cut_device_crops`, uint8 crops of
  whole pixel rows that a GPU run's stage finishes on its device (`finish_crops`: flips, NCHW, float; not
  counted, it runs on the GPU); `finish_crops` of the second, on the CPU, must be the first bit for bit or
  the run stops.

Rows are 2040×1356 RGB PNGs (DIV2K's typical size; a mosaic of scikit-image's photographs resized
up, since DIV2K is not here), prepared by `trilevel data prepare`'s own code: whole images with the LR
computed on read (the default `data prepare`, "today's code" of issue 24), whole images with stored LR
(`--compute-lr`), and 480/240 sub-images with stored LR (BasicSR's layout), each as PNG and as raw
(`--encoding raw`). Each with k crops per decoded row (`data.crops_per_image`). The raw sub-image shards
are also rewritten with each Parquet codec (none, lz4, zstd) to compare bytes and read time.

A worker's rate at C CPUs with n cutting threads (`data.cut_threads`) is min(C / CPU seconds per crop,
n / crop seconds per crop): decoding runs in Ray Data tasks spread over the worker's CPUs, the crops on
n threads (`workers.prefetch`, `patch_batches(cut_threads=n)`), both off the training thread. Rows "in
memory" are decoded once per trial (`data.cache_mb`), so a pass costs the crops alone. How decoding and
cutting scale with threads in one process is measured at `--threads` (wall time, rounds interleaved):
the n-thread cap assumes linear scaling, which that measurement checks where the cores are idle.

**Consumption**: a train step takes 16 pairs, a search step 6 (χ1 and χ2 batches of 3). The GPU step
times are estimates (no GPU here), the larger of two bounds on an H100 (stated in the output):
- launch-bound: the step's kernel launches (leaf aten ops counted with the torch profiler on the CPU,
  as `bench/step_work.py` counts them) × `--launch-us` µs each (eager PyTorch's per-op host cost);
- compute-bound: the step's multiply-adds × 3 (forward + backward) / `--tflops` achieved TFLOP/s.
`bench/gpu_check.py` measures the real step times on the first GPU node; compare its numbers with these.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import median  # noqa: E402
from workers.batches import epoch_generator, patch_batches  # noqa: E402
from workers.pipeline import (  # noqa: E402
    DeviceCrops,
    _read_unit,
    crop_draws,
    cut_crops,
    cut_device_crops,
    decoded_rows,
    finish_crops,
)
from workers.shards.folders import prepare_dataset  # noqa: E402
from workers.shards.format import read_manifest  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PATCH, SCALE, TRAIN_BATCH, SEARCH_PAIRS = 32, 4, 16, 6
# Adam on CUDA runs foreach (multi-tensor) kernels: a few per group of tensors, not the per-parameter ops the
# CPU profile shows (those are counted apart); 30 per optimizer step is a generous allowance
ADAM_CUDA_LAUNCHES = 30
SUB = {"compute_lr": True, "subimages": (480, 240)}
LAYOUTS = (  # (name, prepare options, crops per decoded row)
    ("whole, LR on read (today)", {}, (1,)),
    ("whole, stored LR", {"compute_lr": True}, (1, 16)),
    ("whole, stored LR, raw", {"compute_lr": True, "encoding": "raw"}, (16,)),
    ("480/240 sub-images, stored LR", SUB, (1, 4, 8, 16)),
    ("480/240 sub-images, stored LR, raw", {**SUB, "encoding": "raw"}, (1, 4, 8, 16)),
)
CODECS = (("none", None), ("lz4", None), ("zstd", 1), ("zstd", 3))  # Parquet page codecs of raw shards compared


def _photograph(width: int, height: int, seed: int) -> np.ndarray:
    """A width×height RGB mosaic of scikit-image's photographs (resized up, bicubic): texture like a photo's."""
    import skimage.data

    names = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry"]
    rng = np.random.default_rng(seed)
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    tiles_x, tiles_y = 3, 2
    for j in range(tiles_y):
        for i in range(tiles_x):
            photo = getattr(skimage.data, names[int(rng.integers(len(names)))])()
            box = (i * width // tiles_x, j * height // tiles_y, (i + 1) * width // tiles_x, (j + 1) * height // tiles_y)
            tile = Image.fromarray(photo).resize((box[2] - box[0], box[3] - box[1]), Image.BICUBIC)
            canvas[box[1] : box[3], box[0] : box[2]] = np.asarray(tile.convert("RGB"))
    return canvas


def photograph_folder(folder: Path, count: int, size: tuple[int, int]) -> Path:
    """`count` DIV2K-sized PNG photographs (mosaics, `_photograph`) in a new HR folder under `folder`."""
    hr = folder / "DIV2K_like_HR"
    hr.mkdir(parents=True)
    for n in range(count):
        Image.fromarray(_photograph(*size, seed=n)).save(hr / f"{n + 1:04d}.png")
    return hr


def _units(path: str) -> list[dict[str, Any]]:
    """Every row group of a data set's shards: what one Ray Data task reads and decodes."""
    import pyarrow.parquet as pq

    m = read_manifest(path)
    out = []
    for shard in m.shards:
        groups = pq.ParquetFile(shard, filesystem=m.filesystem).metadata.num_row_groups
        out += [{"shard": shard, "row_group": g} for g in range(groups)]
    return out


def read_seconds(path: str, encoding: str) -> tuple[float, list[dict[str, Any]]]:
    """Process CPU seconds per row to read and decode every row group of `path` (`_read_unit`), and the rows."""
    units = _units(path)
    start = time.process_time()
    rows = [row for unit in units for row in _read_unit(unit, path, SCALE, None, encoding)]
    return (time.process_time() - start) / len(rows), rows


def _row_batches(n: int, crops: int, steps: int) -> list[list[int]]:
    """Row indices of `steps` batches of 16, drawn as `patch_batches` draws cached rows (k copies of each, mixed)."""
    gen, order, out = torch.Generator().manual_seed(1), [], []
    for _ in range(steps):
        while len(order) < TRAIN_BATCH:
            order += (torch.randperm(n * crops, generator=gen) % n).tolist()
        out.append(order[:TRAIN_BATCH])
        order = order[TRAIN_BATCH:]
    return out


def crop_seconds(rows: list[dict[str, Any]], crops: int) -> dict[str, float]:
    """CPU seconds per pair of today's cut (NCHW float) and of the cut for the device, batch by batch interleaved.

    Both cut the same batches with the same draws (checked: `finish_crops` of the device cut, on the CPU, is the
    float batch bit for bit; the finish itself runs on the GPU in a GPU run and is not counted), each batch
    first by one then by the other, alternating who goes first, so load on the shared machine hits both alike.
    """
    batches = [[rows[i] for i in b] for b in _row_batches(len(rows), crops, max(1, len(rows) * crops // TRAIN_BATCH))]
    spent = {"float": 0.0, "device": 0.0}
    gen = epoch_generator(0, 0)
    cut = {"float": cut_crops, "device": cut_device_crops}
    made = 0
    for n, batch in enumerate(batches):
        draws = crop_draws(len(batch), gen)
        out = {}
        for name in ("float", "device") if n % 2 == 0 else ("device", "float"):
            start = time.thread_time()
            out[name] = cut[name](batch, PATCH, SCALE, draws)
            spent[name] += time.thread_time() - start
        for f, d in zip(out["float"], finish_crops(out["device"], "cpu"), strict=True):
            if not torch.equal(d.view(torch.int32), f.view(torch.int32)):
                raise AssertionError("the crops finished for the device differ from the float crops")
        made += len(batch)
    return {name: seconds / made for name, seconds in spent.items()}


def cpu_seconds_per_crop(path: str, encoding: str, crops: int) -> dict[str, float]:
    """One pass: read and decode every row once (as the feed does), then cut `crops` crops of each in batches of 16."""
    decode, rows = read_seconds(path, encoding)
    crop = crop_seconds(rows, crops)
    return {
        "decode_s_per_row": decode,
        "crop_s_float": crop["float"],
        "crop_s_device": crop["device"],
        # each decoded row serves `crops` crops; the crops' own cost is per crop made
        "s_per_crop_float": decode / crops + crop["float"],
        "s_per_crop_device": decode / crops + crop["device"],
    }


def codec_table(path: str, rounds: int) -> list[dict[str, Any]]:
    """A raw data set's shards rewritten with each Parquet codec (same row groups): MB per row, read + decode ms/row."""
    import pyarrow.parquet as pq

    m = read_manifest(path)
    table = pq.read_table(m.shards[0], filesystem=m.filesystem)
    group = pq.ParquetFile(m.shards[0], filesystem=m.filesystem).metadata.row_group(0).num_rows
    out = []
    for codec, level in CODECS:
        target = Path(path) / f"codec-{codec}-{level}.parquet"
        pq.write_table(table, target, row_group_size=group, compression=codec, compression_level=level,
                       use_dictionary=["image_id", "source"])  # fmt: skip
        units = [{"shard": str(target), "row_group": g} for g in range(pq.ParquetFile(target).metadata.num_row_groups)]
        times = []
        for _ in range(rounds):
            start = time.process_time()
            n = sum(len(_read_unit(unit, path, SCALE, None, "raw")) for unit in units)
            times.append((time.process_time() - start) / n)
        label = codec if level is None else f"{codec} {level}"
        mb = target.stat().st_size / n / 2**20
        native = _stored_share(Path(path) / "native.parquet", codec, level)
        out.append({"codec": label, "mb_per_row": mb, "read_ms_per_row": 1e3 * median(times), "native_share": native})
        target.unlink()
    return out


NATIVE = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")  # photographs at their own resolution


@functools.cache
def _native_photos() -> tuple[np.ndarray, ...]:
    import skimage.data

    return tuple(np.ascontiguousarray(getattr(skimage.data, name)()[..., :3]) for name in NATIVE)


def _stored_share(target: Path, codec: str | None, level: int | None) -> float:
    """Stored bytes / raw bytes of scikit-image's photographs at their own resolution (no upscaling, unlike the
    bench's mosaics, whose smooth upscaled tiles compress far better than photographs do), in `codec`; PNG
    (level 1, as `data prepare` writes it) for codec None."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    photos = _native_photos()
    raw = sum(photo.nbytes for photo in photos)
    if codec is None:
        stored = 0
        for photo in photos:
            buf = io.BytesIO()
            Image.fromarray(photo).save(buf, format="PNG", compress_level=1)
            stored += len(buf.getvalue())
        return stored / raw
    pq.write_table(pa.table({"hr": pa.array([p.tobytes() for p in photos], pa.binary())}), target, compression=codec,
                   compression_level=level)  # fmt: skip
    stored = target.stat().st_size
    target.unlink()
    return stored / raw


def decode_threads(
    raw: list[dict[str, Any]], rounds: int, threads: tuple[int, ...] = (1, 2), encoding: str = "png"
) -> dict[int, dict]:
    """Rows decoded per wall second and CPU seconds per row with each count of decoding threads, rounds interleaved.

    Where the feed decodes: streamed rows in Ray Data tasks (processes, `data.data_cpus` each, as many at
    once as the node has free CPUs); cached rows once per trial (`decoded_rows`). A thread pool shows
    whether decoding (PIL's PNG inflate, numpy's copies, the MATLAB bicubic) runs in parallel at all in one
    process: with the GIL held it would not speed up.
    """
    from concurrent.futures import ThreadPoolExecutor

    from workers.pipeline import _decode_row

    wall: dict[int, list[float]] = {t: [] for t in threads}
    cpu: dict[int, list[float]] = {t: [] for t in threads}
    for r in range(rounds):
        for t in threads if r % 2 == 0 else tuple(reversed(threads)):
            with ThreadPoolExecutor(t) as pool:
                w0, c0 = time.perf_counter(), time.process_time()
                list(pool.map(lambda row: _decode_row(row, SCALE, encoding), raw))
                wall[t].append((time.perf_counter() - w0) / len(raw))
                cpu[t].append((time.process_time() - c0) / len(raw))
    return {t: {"rows_per_wall_s": 1 / median(wall[t]), "cpu_ms_per_row": 1e3 * median(cpu[t])} for t in threads}


def crop_threads(
    rows: list[dict[str, Any]], rounds: int, threads: tuple[int, ...] = (1, 2), for_device: bool = False
) -> dict[int, dict]:
    """Pairs per wall second of `patch_batches` on rows in memory (k = 16, batch 16) at each `cut_threads`.

    Rounds interleaved. The draws stay on the calling thread, the cuts go to the pool (numpy's copies and
    torch's float conversion release the GIL); the batches are the same at any count (tested).
    """
    steps = max(8, len(rows))
    wall: dict[int, list[float]] = {t: [] for t in threads}
    cpu: dict[int, list[float]] = {t: [] for t in threads}
    for r in range(rounds):
        for t in threads if r % 2 == 0 else tuple(reversed(threads)):
            w0, c0 = time.perf_counter(), time.process_time()
            batches = patch_batches(
                rows, batch_size=TRAIN_BATCH, patch=PATCH, scale=SCALE, generator=epoch_generator(0, 0),
                steps=steps, name="bench", crops_per_image=16, cut_threads=t, for_device=for_device,
            )  # fmt: skip
            pairs = sum(batch[0].shape[0] for batch in batches)
            wall[t].append((time.perf_counter() - w0) / pairs)
            cpu[t].append((time.process_time() - c0) / pairs)
    return {t: {"pairs_per_wall_s": 1 / median(wall[t]), "cpu_ms_per_pair": 1e3 * median(cpu[t])} for t in threads}


def gpu_step_estimates(launch_us: float, tflops: float) -> dict[str, Any]:
    """Seconds per train and late-search step on a GPU, from launches and multiply-adds (module docstring)."""
    from bench.step_work import _launches, _setup, count_launches
    from search_space.cost import count
    from search_space.derived import build_network
    from search_space.genotype import load_genotype

    genotype = load_genotype("trilevel-b-psnr")
    net = build_network(genotype)
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    lr = torch.rand(TRAIN_BATCH, 3, PATCH, PATCH)
    hr = torch.rand(TRAIN_BATCH, 3, PATCH * SCALE, PATCH * SCALE)

    def train_step() -> None:
        loss = (net(lr) - hr).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    train_step()  # warm-up: Adam's state exists, as in every later step
    counts = count_launches(train_step)
    macs = count(genotype).gmacs * 1e9 * (PATCH * PATCH) / (256 * 256) * TRAIN_BATCH
    # the batch's finish on the GPU (`finish_crops`, every flip wanted) and its 3 host-to-device copies
    crops = DeviceCrops(
        torch.zeros(TRAIN_BATCH, PATCH, PATCH, 3, dtype=torch.uint8),
        torch.zeros(TRAIN_BATCH, PATCH * SCALE, PATCH * SCALE, 3, dtype=torch.uint8),
        torch.ones(TRAIN_BATCH, 3, dtype=torch.bool),
    )
    finish = count_launches(lambda: finish_crops(crops, "cpu"))["launches"] + 3
    train_launches = counts["launches"] + ADAM_CUDA_LAUNCHES + finish
    train = {
        "launches": train_launches,
        "finish_launches": finish,
        "cpu_optimizer_launches": counts["optimizer_launches"],
        "launch_bound_s": train_launches * launch_us * 1e-6,
        "compute_bound_s": 3 * 2 * macs / (tflops * 1e12),
    }
    search_counts = _launches(_setup("search", "perceptual", 0.95), "search")
    search_launches = search_counts["launches"] + 2 * ADAM_CUDA_LAUNCHES  # the weight and the architecture Adam
    search = {
        "launches": search_launches,
        "cpu_optimizer_launches": search_counts["optimizer_launches"],
        "launch_bound_s": search_launches * launch_us * 1e-6,
    }
    train["step_s"] = max(train["launch_bound_s"], train["compute_bound_s"])
    search["step_s"] = search["launch_bound_s"]  # late search: sparse, one path's cells (launch-bound)
    return {"train": train, "search_late": search, "launch_us": launch_us, "tflops": tflops}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one 1020×680 image, one round (a smoke run)")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="passes per configuration (median CPU time)")
    parser.add_argument("--cpus", type=float, default=4.0, help="CPUs per worker the rate is scaled to")
    parser.add_argument("--launch-us", type=float, default=5.0, help="assumed host cost per kernel launch, µs")
    parser.add_argument("--tflops", type=float, default=40.0, help="assumed achieved TFLOP/s of the train step")
    parser.add_argument(
        "--threads", default="1,2", help="thread counts: cutting threads of the rates, and the scaling rows (1,2,4)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "data_feed.json")
    args = parser.parse_args(argv)
    thread_counts = tuple(int(t) for t in args.threads.split(","))
    torch.set_num_threads(1)
    size, images, rounds = ((1020, 680), 1, 1) if args.quick else ((2040, 1356), args.images, args.rounds)
    gpu = gpu_step_estimates(args.launch_us, args.tflops)
    consumed = {
        "train": TRAIN_BATCH / gpu["train"]["step_s"],
        "search_late": SEARCH_PAIRS / gpu["search_late"]["step_s"],
    }
    rows_out: list[dict[str, Any]] = []
    threads: dict[str, dict] = {}

    def rate(per_pair: float, crop: float, cut_threads: int) -> float:
        # C CPUs share the decoding and cropping; the crops themselves run on `cut_threads` threads
        return min(args.cpus / per_pair, cut_threads / crop)

    def rates(row: dict[str, Any]) -> None:
        row["pairs_per_s_today"] = rate(row["ms_per_crop_float"] / 1e3, row["crop_ms_float"] / 1e3, 1)
        for n in thread_counts:
            row[f"pairs_per_s_device_{n}"] = rate(row["ms_per_crop_device"] / 1e3, row["crop_ms_device"] / 1e3, n)

    with tempfile.TemporaryDirectory() as tmp:
        source = photograph_folder(Path(tmp) / "src", images, size)
        codecs: list[dict[str, Any]] = []
        for name, options, crop_counts in LAYOUTS:
            out = str(Path(tmp) / name.replace("/", "-").replace(" ", "_").replace(",", ""))
            prepare_dataset([str(source)], out, SCALE, workers=1, **options)
            manifest = read_manifest(out)
            decoded_rows(out, SCALE)  # warm-up: imports, first allocations, the page cache
            for crops in crop_counts:
                runs = [cpu_seconds_per_crop(out, manifest.encoding, crops) for _ in range(rounds)]
                m = {key: median([r[key] for r in runs]) for key in runs[0]}
                row = {
                    "layout": name, "crops_per_image": crops, "rows": manifest.rows,
                    "mb_per_row": manifest.data["bytes"] / manifest.rows / 2**20,
                    "decode_ms_per_row": 1e3 * m["decode_s_per_row"],
                    "crop_ms_float": 1e3 * m["crop_s_float"], "crop_ms_device": 1e3 * m["crop_s_device"],
                    "ms_per_crop_float": 1e3 * m["s_per_crop_float"],
                    "ms_per_crop_device": 1e3 * m["s_per_crop_device"],
                }  # fmt: skip
                rates(row)
                rows_out.append(row)
            if options and manifest.encoding == "png":  # decoded once per trial and kept: a pass costs the crops
                last = rows_out[-1]
                row = {**last, "layout": name + ", in memory", "crops_per_image": "any", "decode_ms_per_row": 0.0}
                row.update(ms_per_crop_float=last["crop_ms_float"], ms_per_crop_device=last["crop_ms_device"])
                rates(row)
                rows_out.append(row)
            if "subimages" in options and manifest.encoding == "raw":
                codecs = codec_table(out, max(rounds, 2))
            raw = [r for shard in manifest.shards for r in _shard_rows(shard)]
            pool_rows = raw * -(-16 // len(raw))  # at least 16 rows, so the threads get equal shares
            threads[name] = decode_threads(pool_rows, max(rounds, 2), thread_counts, manifest.encoding)
        in_memory = decoded_rows(out, SCALE)  # the last layout's rows (sub-images), decoded once
        cutting = {
            "float": crop_threads(in_memory, max(rounds, 2), thread_counts),
            "device": crop_threads(in_memory, max(rounds, 2), thread_counts, for_device=True),
        }
    today = rows_out[0]["ms_per_crop_float"]
    for row in rows_out:
        row["x_today"] = today / row["ms_per_crop_device"]
        for step, consumption in consumed.items():
            row[f"headroom_{step}_today"] = row["pairs_per_s_today"] / consumption
            for n in thread_counts:
                row[f"headroom_{step}_device_{n}"] = row[f"pairs_per_s_device_{n}"] / consumption
    report = {"size": list(size), "images": images, "rounds": rounds, "cpus": args.cpus, "gpu": gpu,
              "consumed_pairs_per_s": consumed, "rows": rows_out, "codecs": codecs, "decode_threads": threads,
              "crop_threads": cutting, "load_average": list(os.getloadavg())}  # fmt: skip
    _print(report, args, thread_counts)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    return report


def _shard_rows(shard: str) -> list[dict[str, Any]]:
    """A shard's rows as stored (encoded bytes, height, width): what `decode_threads` decodes."""
    import pyarrow.parquet as pq

    return pq.read_table(shard, columns=["id", "image_id", "hr", "lr", "height", "width"]).to_pylist()


def _print(report: dict[str, Any], args: argparse.Namespace, thread_counts: tuple[int, ...]) -> None:
    gpu, consumed, size, images = report["gpu"], report["consumed_pairs_per_s"], report["size"], report["images"]
    t, s = gpu["train"], gpu["search_late"]
    assumed = f"H100, {args.launch_us:g} µs/launch, {args.tflops:g} TFLOP/s"
    train_line = (
        f"train {t['step_s'] * 1e3:.1f} ms ({t['launches']} launches, {t['finish_launches']} of them the batch's "
        f"finish; compute bound "
        f"{t['compute_bound_s'] * 1e3:.2f} ms) → {consumed['train']:.0f} pairs/s"
    )
    search_line = f"late search {s['step_s'] * 1e3:.1f} ms ({s['launches']} launches) → {consumed['search_late']:.0f}"
    print(f"load average at the end: {report['load_average']}")
    print(f"GPU step estimates ({assumed}): {train_line}; {search_line} pairs/s\n")
    after = " / ".join(f"{n} thr" for n in thread_counts)
    print(
        f"| layout ({images} × {size[0]}×{size[1]}) | k | rows | MB/row | read+decode ms/row | crop ms/pair float → "
        f"device | CPU ms per pair (device) | pairs/s per worker ({args.cpus:g} CPUs): today → device {after} "
        f"| × today | headroom vs train step: today → {after} | vs late search step |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in report["rows"]:
        rates = " / ".join(f"{r[f'pairs_per_s_device_{n}']:,.0f}" for n in thread_counts)
        heads = " / ".join(f"{r[f'headroom_train_device_{n}']:.2f}" for n in thread_counts)
        search = r[f"headroom_search_late_device_{thread_counts[-1]}"]
        print(
            f"| {r['layout']} | {r['crops_per_image']} | {r['rows']} | {r['mb_per_row']:.2f} | "
            f"{r['decode_ms_per_row']:.2f} | {r['crop_ms_float']:.3f} → {r['crop_ms_device']:.3f} | "
            f"{r['ms_per_crop_device']:.3f} | {r['pairs_per_s_today']:,.0f} → {rates} | {r['x_today']:.0f} | "
            f"{r['headroom_train_today']:.2f} → {heads} | {r['headroom_search_late_today']:.1f} → {search:.1f} |"
        )
    if report["codecs"]:
        png = _stored_share(Path("unused"), None, None)
        print(
            "\n| raw 480/240 sub-image shards, Parquet codec | MB per row | read + decode ms per row "
            f"| stored / raw bytes of native photographs (PNG: {png:.2f}) |"
        )
        print("|---|---|---|---|")
        for c in report["codecs"]:
            print(f"| {c['codec']} | {c['mb_per_row']:.3f} | {c['read_ms_per_row']:.2f} | {c['native_share']:.2f} |")
    head = " | ".join(f"{t} thread{'s' if t > 1 else ''}" for t in thread_counts)
    arrow = " → ".join(map(str, thread_counts))
    print(f"\n| in one process, rate per wall s at | {head} | CPU ms per row or pair, {arrow} threads |")
    print("|---|" + "---|" * (len(thread_counts) + 1))
    scaled = {
        f"decoding: {name} (rows/s)": (by, "rows_per_wall_s", "cpu_ms_per_row")
        for name, by in report["decode_threads"].items()
    }
    for kind, by in report["crop_threads"].items():
        scaled[f"cutting in memory, k = 16, {kind} (pairs/s)"] = (by, "pairs_per_wall_s", "cpu_ms_per_pair")
    for label, (by, rate_key, cpu_key) in scaled.items():
        rates = " | ".join(f"{by[t][rate_key]:,.1f}" for t in thread_counts)
        print(f"| {label} | {rates} | {' → '.join(f'{by[t][cpu_key]:.3f}' for t in thread_counts)} |")


if __name__ == "__main__":
    main()
