"""Smoke test of the search-step benchmark's step function (no timing assertions)."""

from __future__ import annotations

import math

import pytest
import torch

from bench.search_step import make_batch, make_optimizers, make_supernet, search_step


@pytest.fixture
def one_thread():
    """One intra-op thread: on a loaded 2-core box a 2-thread pool stalls on every tiny op (~50x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_search_step_runs_sparse_and_dense_and_updates_parameters(one_thread):
    losses = {}
    for sparse in (True, False):
        net = make_supernet(sparse=sparse, logits="random", seed=0, nf=16, num_cells=3)
        net.set_radius(0.5)
        arch_opt, weight_opt = make_optimizers(net)
        batch = make_batch(patch=8, batch=1, seed=1)
        before = {name: p.detach().clone() for name, p in net.named_parameters()}

        result = search_step(net, arch_opt, weight_opt, batch, torch.Generator().manual_seed(2))

        assert math.isfinite(result.arch_loss) and math.isfinite(result.weight_loss)
        assert result.arch_seconds > 0 and result.weight_seconds > 0
        changed = {name for name, p in net.named_parameters() if not torch.equal(p, before[name])}
        assert {"alpha", "width_logits", "path_logits"} <= changed, "the architecture step moved no logits"
        assert {"stem.weight", "head.conv_last.weight"} <= changed, "the weight step moved no weights"
        losses[sparse] = (result.arch_loss, result.weight_loss)
    # Same seeds: sparse execution only skips exactly-zero terms, so the losses agree.
    assert losses[True] == losses[False] or all(
        math.isclose(s, d, rel_tol=1e-5) for s, d in zip(losses[True], losses[False], strict=True)
    )


def test_gpu_check_runs_at_tiny_shapes_and_prints_every_row(one_thread, capsys):
    from bench.gpu_check import main

    report = main(["--quick", "--steps", "1"])
    table = capsys.readouterr().out
    for row in ("torch / CUDA", "peak", "pretrain step", "search step", "train step", "data headroom"):
        assert row in table, row
    assert report["pretrain_s"] > 0 and report["search_late_s"] > 0 and report["train_s"] > 0
    assert report["data_pairs_per_s"] > 0 and report["data_headroom"] > 0
    default, recommended = report["data"].values()  # raw sub-images with stored LR cost far less CPU per pair
    assert recommended["cpu_s_per_pair"] < default["cpu_s_per_pair"] / 4, report["data"]


def test_data_feed_cuts_and_decodes_a_few_small_rows(one_thread, tmp_path):
    """bench/data_feed.py's measurements on small rows: the float and device cuts (which the bench checks give the
    same values, else it raises), reading and decoding PNG and raw shards, the codec rewrite, decoding on threads."""
    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image

    from bench.data_feed import codec_table, crop_seconds, decode_threads, read_seconds
    from workers.shards.folders import prepare_dataset

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (128 + 4 * i, 136, 3), dtype=np.uint8)).save(src / f"{i}.png")
    rows = {}
    for encoding in ("png", "raw"):
        out = str(tmp_path / encoding)
        prepare_dataset([str(src)], out, subimages=(128, 64), compute_lr=True, encoding=encoding, workers=1)
        seconds, rows[encoding] = read_seconds(out, encoding)
        assert seconds > 0 and len(rows[encoding]) == 6  # 2 + 4 BasicSR crops
    cut = crop_seconds(rows["raw"], crops=4)
    assert cut["float"] > 0 and cut["device"] > 0
    codecs = codec_table(str(tmp_path / "raw"), rounds=1)
    assert [c["codec"] for c in codecs] == ["none", "lz4", "zstd 1", "zstd 3"] and all(
        c["mb_per_row"] > 0 for c in codecs
    )

    stored = pq.read_table(next((tmp_path / "raw").glob("*.parquet"))).to_pylist()
    threads = decode_threads(stored, rounds=1, encoding="raw")
    assert set(threads) == {1, 2} and all(t["rows_per_wall_s"] > 0 for t in threads.values())
