"""Ray Data pipeline: the search split by image, deterministic aligned crops, reads of real shards."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from workers.imresize import downscale
from workers.pipeline import (
    TRAIN,
    TRAIN_A,
    TRAIN_W,
    VAL,
    collate_crops,
    data_config,
    decoded_rows,
    image_ids,
    random_patch_pairs,
    read_pairs,
    search_datasets,
    split_image_ids,
    split_search,
    val_pairs,
)
from workers.shards.demo import write_demo_dataset
from workers.shards.folders import prepare_dataset
from workers.shards.format import DataError

pytestmark = pytest.mark.xdist_group("local_ray")  # shares the in-process Ray (tests/conftest.py)

# --------------------------------------------------------------------------- the split (pure)


def test_split_image_ids_sorted_halves():
    assert split_image_ids(["d", "b", "a", "c"]) == (["a", "b"], ["c", "d"])


def test_split_image_ids_odd_count_gives_the_extra_image_to_chi2():
    # AGD: split = floor(0.5 * n); indices[:split] train the weights, the rest the architecture.
    assert split_image_ids(["0003", "0001", "0002"]) == (["0001"], ["0002", "0003"])
    assert split_image_ids(["x"]) == ([], ["x"])
    assert split_image_ids([]) == ([], [])


def test_split_image_ids_ignores_duplicates_and_order():
    ids = ["0004", "0001", "0001", "0003", "0002", "0004", "0002"]
    assert split_image_ids(ids) == (["0001", "0002"], ["0003", "0004"])
    rng = np.random.default_rng(0)
    for _ in range(5):
        assert split_image_ids(list(rng.permutation(ids))) == split_image_ids(ids)


# --------------------------------------------------------------------------- crops (pure)


def _blocky_pair(n: int, h: int, w: int, scale: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """LR random, HR = nearest-neighbour upsampling: any aligned crop keeps hr[..., ::s, ::s] == lr."""
    g = torch.Generator().manual_seed(seed)
    lr = torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)
    hr = lr.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    return lr, hr


@pytest.mark.parametrize("augment", [False, True])
def test_random_patch_pairs_are_aligned_scaled_and_in_unit_range(augment):
    lr, hr = _blocky_pair(6, 20, 24, 4)
    lp, hp = random_patch_pairs(lr, hr, 8, 4, torch.Generator().manual_seed(1), augment=augment)
    assert lp.shape == (6, 3, 8, 8) and hp.shape == (6, 3, 32, 32)
    assert lp.dtype == hp.dtype == torch.float32
    assert float(lp.min()) >= 0 and float(lp.max()) <= 1
    torch.testing.assert_close(hp[..., ::4, ::4], lp)  # flips/transpose keep LR and HR aligned


def test_random_patch_pairs_are_deterministic_given_the_generator():
    lr, hr = _blocky_pair(4, 20, 24, 4)
    a = random_patch_pairs(lr, hr, 8, 4, torch.Generator().manual_seed(7))
    b = random_patch_pairs(lr, hr, 8, 4, torch.Generator().manual_seed(7))
    c = random_patch_pairs(lr, hr, 8, 4, torch.Generator().manual_seed(8))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a[0], c[0])


def test_only_horizontal_flips_by_default():
    # A patch the size of the image leaves only the flips random: each output is the image or
    # its mirror image; over 64 samples both occur, and never a vertical flip or transpose.
    lr, hr = _blocky_pair(1, 8, 8, 2)
    lr, hr = lr.expand(64, -1, -1, -1), hr.expand(64, -1, -1, -1)
    lp, _ = random_patch_pairs(lr, hr, 8, 2, torch.Generator().manual_seed(0))
    img = lr[0].float() / 255
    same = [torch.equal(p, img) for p in lp]
    mirrored = [torch.equal(p, img.flip(-1)) for p in lp]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))
    assert any(same) and any(mirrored)
    lp, _ = random_patch_pairs(lr, hr, 8, 2, torch.Generator().manual_seed(0), augment=True)
    assert any(torch.equal(p, img.transpose(-1, -2)) for p in lp)


def test_collate_crops_matches_random_patch_pairs_and_takes_ragged_rows():
    lr, hr = _blocky_pair(3, 20, 24, 4)
    rows = [
        {"id": f"r{i}", "lr": lr[i].permute(1, 2, 0).numpy(), "hr": hr[i].permute(1, 2, 0).numpy()} for i in range(3)
    ]
    got = collate_crops(rows, 8, 4, torch.Generator().manual_seed(3))
    want = random_patch_pairs(lr, hr, 8, 4, torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, want)

    small_lr, small_hr = _blocky_pair(1, 10, 9, 4, seed=5)
    ragged = np.empty(2, dtype=object)  # what iter_batches(batch_format="numpy") gives for ragged images
    ragged[0], ragged[1] = rows[0]["lr"], small_lr[0].permute(1, 2, 0).numpy()
    ragged_hr = np.empty(2, dtype=object)
    ragged_hr[0], ragged_hr[1] = rows[0]["hr"], small_hr[0].permute(1, 2, 0).numpy()
    lp, hp = collate_crops({"lr": ragged, "hr": ragged_hr}, 8, 4, torch.Generator().manual_seed(3))
    assert lp.shape == (2, 3, 8, 8) and hp.shape == (2, 3, 32, 32)
    torch.testing.assert_close(hp[..., ::4, ::4], lp)


@pytest.mark.parametrize("augment", [False, True])
def test_crops_finished_on_the_device_are_the_cpus_float_crops_bit_for_bit(augment):
    """What the stage loop does off the CPU: uint8 NHWC crops of whole pixel rows, flipped, made NCHW and float
    on the device (`finish_crops`, here on the CPU device), are `cut_crops`' batch bit for bit; the float values
    off the CPU come from a table of the CPU's 256 values (CUDA divides by a scalar via its reciprocal)."""
    from workers.pipeline import (
        _to_unit,
        _unit_lookup,
        crop_draws,
        cut_crops,
        cut_device_crops,
        finish_crops,
        unit_float,
    )

    values = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(_unit_lookup(values).view(torch.int32), _to_unit(values).view(torch.int32))
    rng = np.random.default_rng(1)
    rows = [{"id": str(i), "lr": rng.integers(0, 256, (9 + i, 11, 3), dtype=np.uint8)} for i in range(6)]
    rows = [{**row, "hr": rng.integers(0, 256, (4 * row["lr"].shape[0], 44, 3), dtype=np.uint8)} for row in rows]
    draws = crop_draws(len(rows), torch.Generator().manual_seed(2), augment=augment)
    crops = cut_device_crops(rows, 8, 4, draws)
    assert crops.lr.shape == (6, 8, 8, 3) and crops.hr.shape == (6, 32, 32, 3) and crops.flips.shape == (6, 3)
    assert crops.flips[:, 0].any() and (crops.flips[:, 1:].any() if augment else not crops.flips[:, 1:].any())
    for got, want in zip(finish_crops(crops, "cpu"), cut_crops(rows, 8, 4, draws), strict=True):
        assert got.shape == want.shape and got.is_contiguous()
        assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    with pytest.raises(ValueError, match=r"unit_float takes a uint8 batch, got torch\.float32"):
        unit_float(want)
    with pytest.raises(ValueError, match="3: LR int64"):
        cut_device_crops([*rows[:3], {**rows[3], "lr": rows[3]["lr"].astype(np.int64)}], 8, 4, draws[:4])


def test_crops_name_the_row_that_is_too_small():
    lr, hr = _blocky_pair(1, 6, 9, 4)
    rows = {"id": np.array(["tiny"]), "lr": lr.permute(0, 2, 3, 1).numpy(), "hr": hr.permute(0, 2, 3, 1).numpy()}
    with pytest.raises(ValueError, match="tiny: LR image 6x9 is smaller than the patch 8"):
        collate_crops(rows, 8, 4, torch.Generator())
    with pytest.raises(ValueError, match=r"HR \(24, 36\) is not LR 6x9 x2"):
        random_patch_pairs(lr, hr, 4, 2, torch.Generator())


# --------------------------------------------------------------------------- shards on disk


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    write_demo_dataset(str(root))
    return root


@pytest.fixture(scope="module")
def subimage_set(tmp_path_factory) -> Path:
    """5 images cut into 64x64 sub-images (3 or 4 each), no stored LR."""
    root = tmp_path_factory.mktemp("sub")
    src = root / "hr"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(96, 96), (64, 128), (96, 64), (64, 96), (128, 64)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(src / f"img{i}.png")
    prepare_dataset([str(src)], str(root / "out"), subimages=(64, 32), min_size=64, rows_per_shard=5)
    return root / "out"


@pytest.mark.parametrize("augment", [False, True])
def test_batched_crops_are_byte_identical_to_the_per_crop_version_on_real_photos(demo, augment):
    """collate_crops (one uint8 buffer per batch) against main@99bd259's per-crop loop, kept in bench/:
    the same bytes, dtype, shape and strides, and the generator left in the same state after every batch
    (the same draws), on the demo's photographs (several sizes), as row lists and as Ray's numpy batches."""
    from bench.crop_reference import collate_crops_per_crop

    rows = decoded_rows(str(demo / "train"), 4)
    assert len({r["hr"].shape for r in rows}) > 1  # ragged: crops come from images of different sizes
    new_gen, old_gen = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    picks = torch.Generator().manual_seed(5)
    for step in range(24):
        size = 1 + step % 9
        batch = [rows[int(j)] for j in torch.randint(len(rows), (size,), generator=picks)]  # repeats too
        if step % 2:  # what iter_batches(batch_format="numpy") yields: columns, ragged images as object arrays
            columns = {key: np.empty(size, dtype=object) for key in ("lr", "hr")}
            for i, row in enumerate(batch):
                columns["lr"][i], columns["hr"][i] = row["lr"], row["hr"]
            batch = {"id": np.array([row["id"] for row in batch]), **columns}
        got = collate_crops(batch, 32, 4, new_gen, augment=augment)
        want = collate_crops_per_crop(batch, 32, 4, old_gen, augment=augment)
        for g, w in zip(got, want, strict=True):
            assert (g.dtype, g.shape, g.stride()) == (w.dtype, w.shape, w.stride())
            assert g.numpy().tobytes() == w.numpy().tobytes()
        assert torch.equal(new_gen.get_state(), old_gen.get_state())


def test_crops_name_a_row_that_is_not_an_rgb_image_of_the_batchs_dtype():
    lr, hr = _blocky_pair(2, 12, 12, 2)
    rows = [{"id": f"r{i}", "lr": lr[i].permute(1, 2, 0).numpy(), "hr": hr[i].permute(1, 2, 0).numpy()} for i in (0, 1)]
    rows[1] = {"id": "gray", "lr": rows[1]["lr"][..., 0], "hr": rows[1]["hr"][..., 0]}
    with pytest.raises(ValueError, match=r"gray: LR uint8 \(12, 12\) / HR uint8 \(24, 24\) are not HxWx3"):
        collate_crops(rows, 8, 2, torch.Generator())
    with pytest.raises(ValueError, match="empty batch"):
        collate_crops([], 8, 2, torch.Generator())


def test_image_ids_reads_the_column(subimage_set):
    ids = image_ids(str(subimage_set))
    assert sorted(set(ids)) == [f"img{i}" for i in range(5)]
    assert len(ids) == 4 + 3 + 2 + 2 + 3  # all sub-images, over several shards and row groups


def test_val_pairs_loads_whole_images_with_matlab_lr(demo):
    pairs = val_pairs(str(demo / "val"), 4)
    assert [(lr.shape, hr.shape) for lr, hr in pairs] == [((64, 64, 3), (256, 256, 3))] * 2
    for lr, hr in pairs:
        assert lr.dtype == hr.dtype == np.uint8
        np.testing.assert_array_equal(lr, downscale(hr, 4))
    with pytest.raises(DataError, match="prepared for scale 4, not 2"):
        val_pairs(str(demo / "val"), 2)


def test_uris_read_like_paths(demo, subimage_set):
    uri_pairs, path_pairs = val_pairs((demo / "val").as_uri(), 4), val_pairs(str(demo / "val"), 4)
    assert len(uri_pairs) == 2
    for (a_lr, a_hr), (b_lr, b_hr) in zip(uri_pairs, path_pairs, strict=True):
        np.testing.assert_array_equal(a_lr, b_lr)
        np.testing.assert_array_equal(a_hr, b_hr)
    assert image_ids(subimage_set.as_uri()) == image_ids(str(subimage_set))


def test_data_config_splits_only_the_training_sets():
    cfg = data_config()
    assert cfg._datasets_to_split == [TRAIN_W, TRAIN_A, TRAIN] == ["train_w", "train_a", "train"]
    assert VAL not in cfg._datasets_to_split
    assert cfg._get_user_execution_options(TRAIN_W).preserve_order


# --------------------------------------------------------------------------- Ray Data


def test_read_pairs_of_real_photos(ray_session, demo):
    rows = read_pairs(str(demo / "train"), 4).take_all()
    assert sorted(r["id"] for r in rows) == sorted(
        ["astronaut", "hubble_deep_field", "motorcycle_left", "motorcycle_right", "retina", "rocket"]
    )
    for r in rows:
        lr, hr = r["lr"], r["hr"]
        assert lr.dtype == hr.dtype == np.uint8 and lr.shape[2] == 3
        assert (lr.shape[0] * 4, lr.shape[1] * 4) == hr.shape[:2]
    astro = next(r for r in rows if r["id"] == "astronaut")
    np.testing.assert_array_equal(astro["lr"], downscale(astro["hr"], 4))


def test_split_search_keeps_subimages_of_an_image_together(ray_session, subimage_set):
    w, a = split_search(str(subimage_set), 4)
    w_rows, a_rows = w.take_all(), a.take_all()
    w_images, a_images = {r["image_id"] for r in w_rows}, {r["image_id"] for r in a_rows}
    assert (sorted(w_images), sorted(a_images)) == (["img0", "img1"], ["img2", "img3", "img4"])
    assert len(w_rows) + len(a_rows) == len(image_ids(str(subimage_set)))
    assert {r["id"] for r in w_rows}.isdisjoint({r["id"] for r in a_rows})
    assert all(r["lr"].shape == (16, 16, 3) and r["hr"].shape == (64, 64, 3) for r in w_rows + a_rows)

    # the same images prepared as raw shards (`--encoding raw`) stream the same rows with the same pixels
    raw = prepare_dataset([str(subimage_set.parent / "hr")], str(subimage_set.parent / "raw"), subimages=(64, 32),
                          min_size=64, rows_per_shard=5, encoding="raw")  # fmt: skip
    assert raw.rows == len(w_rows) + len(a_rows)
    raw_w, _ = split_search(str(subimage_set.parent / "raw"), 4)
    by_id = {r["id"]: r for r in raw_w.take_all()}
    assert sorted(by_id) == sorted(r["id"] for r in w_rows)
    for r in w_rows:
        np.testing.assert_array_equal(by_id[r["id"]]["hr"], r["hr"])
        np.testing.assert_array_equal(by_id[r["id"]]["lr"], r["lr"])


def test_ray_batches_of_ragged_images_collate(ray_session, demo):
    g = torch.Generator().manual_seed(0)
    sets = search_datasets(str(demo / "train"), str(demo / "val"), 4)
    assert set(sets) == {TRAIN_W, TRAIN_A, VAL}
    n = 0
    for batch in sets[TRAIN_W].iter_batches(batch_size=3, batch_format="numpy"):
        lp, hp = collate_crops(batch, 32, 4, g)
        assert lp.shape == (len(batch["id"]), 3, 32, 32) and hp.shape == (len(batch["id"]), 3, 128, 128)
        n += len(batch["id"])
    assert n == 3


def test_no_op_needs_a_whole_cpu(ray_session, subimage_set):
    """With 1.75 of the 2 CPUs held (a Tune trial + a Train worker), the pipeline still runs."""
    import ray

    @ray.remote(num_cpus=1.75)
    class Hog:
        def ready(self) -> bool:
            return True

    hog = Hog.remote()
    try:
        ray.get(hog.ready.remote(), timeout=60)
        w, _ = split_search(str(subimage_set), 4)
        result: list = []
        # A daemon thread, so a deadlock fails this test instead of hanging the session.
        reader = threading.Thread(target=lambda: result.append(w.take_all()), daemon=True)
        reader.start()
        reader.join(timeout=90)
        assert result, "Ray Data did not finish with 0.25 CPU free: some op requests a whole CPU"
        assert len(result[0]) == 7
    finally:
        ray.kill(hog)


def test_read_pairs_rejects_whole_cpus_and_wrong_scale(demo):
    with pytest.raises(ValueError, match="fraction of a CPU"):
        read_pairs(str(demo / "val"), 4, num_cpus=1)
    with pytest.raises(DataError, match="prepared for scale 4, not 3"):
        read_pairs(str(demo / "val"), 3)


def test_split_search_needs_two_images(tmp_path):
    src = tmp_path / "hr"
    src.mkdir()
    Image.fromarray(np.zeros((128, 128, 3), np.uint8)).save(src / "only.png")
    prepare_dataset([str(src)], str(tmp_path / "out"))
    with pytest.raises(DataError, match=r"holds 1 image.*the search split needs at least 2"):
        split_search(str(tmp_path / "out"), 4)
