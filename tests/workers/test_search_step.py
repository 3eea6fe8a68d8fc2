"""One search step: sandwich gradients with one graph alive, SSN freezing, radius schedule, FLOPs steering."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from search_space.supernet import Supernet, SupernetConfig
from workers.batches import patch_batches
from workers.losses import content_loss
from workers.search_step import (
    PRETRAIN_WIDTHS,
    SEARCH_FIXED_WIDTHS,
    FlopsController,
    arch_step,
    radius_at,
    sandwich_backward,
)

SMALL = SupernetConfig(backbone="B", nf=8, widths=(4, 8), num_cells=3, num_ups=2)


def _batch(seed: int = 0, size: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, size, size, generator=g), torch.rand(2, 3, 4 * size, 4 * size, generator=g)


def _grads(net: Supernet) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in net.parameters()]


@pytest.mark.parametrize("widths", [PRETRAIN_WIDTHS, ("gumbel", *SEARCH_FIXED_WIDTHS)])
def test_backward_per_pass_equals_one_backward_of_the_sum(widths):
    lr, hr = _batch()
    torch.manual_seed(0)
    net = Supernet(SMALL)
    net.set_radius(0.3)
    with torch.no_grad():
        net.alpha.normal_()

    def passes(generator_seed: int):
        gen = torch.Generator().manual_seed(generator_seed)
        return [net.sample_widths(w, gen) if w in ("gumbel", "random") else w for w in widths]

    net.zero_grad()
    samples = passes(1)
    total = sum(content_loss(net(lr, w), hr) for w in samples)
    total.backward()
    summed = _grads(net)

    net.zero_grad()
    value = sandwich_backward(net, lr, hr, passes(1), content_loss, None)
    per_pass = _grads(net)
    assert value == pytest.approx(float(total.detach()), rel=1e-6)
    for a, b in zip(per_pass, summed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("share", [0.5, 1.0])
def test_recomputed_cells_give_the_same_gradients_bit_for_bit(share):
    """Activation checkpointing is a memory knob only: the same sandwich step, the same numbers."""
    lr, hr = _batch()
    grads = []
    for recompute in (0.0, share):
        torch.manual_seed(0)
        net = Supernet(dataclasses.replace(SMALL, recompute_cells=recompute, sparse_execution=False))
        net.set_radius(0.3)
        with torch.no_grad():
            net.alpha.normal_()
        gen = torch.Generator().manual_seed(1)
        widths = [net.sample_widths("gumbel", gen), *SEARCH_FIXED_WIDTHS]
        net.zero_grad()
        sandwich_backward(net, lr, hr, widths, content_loss, None)
        grads.append(_grads(net))
    assert sum(net._recomputed) == round(share * len(net.cells))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_radius_reaches_the_end_on_the_last_step():
    assert [radius_at(t, 5, 0.0, 1.0) for t in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert radius_at(0, 1, 0.0, 1.0) == 1.0
    assert radius_at(9, 5, 0.2, 1.0) == 1.0


def _decided_net(lead: float = 1.0) -> tuple[Supernet, int]:
    """A supernet at r = 1 whose path is one-hot on a deep leaf that leads every other node by `lead`."""
    torch.manual_seed(0)
    net = Supernet(SMALL)
    leaf = net.tree.index_of((0, 0, 0, 1, 1))
    with torch.no_grad():
        net.path_logits.zero_()
        net.path_logits[leaf] = lead
        net.alpha.normal_()
        net.width_logits.normal_()
    net.set_radius(1.0)
    return net, leaf


def _drift(freeze: bool, steps: int) -> tuple[int, int, Supernet]:
    net, _ = _decided_net()
    before = net.tree.index_of(net.derive().path)
    arch_opt = torch.optim.Adam(net.arch_parameters(), lr=1e-2, betas=(0.5, 0.999))
    flops = FlopsController(1e-20, None, (0.5, 2.0), 20)
    full_paths = net.tree.full_paths
    lr, hr = _batch(1, 4)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        arch_step(net, arch_opt, lr, hr, content_loss, gen, flops, 0.1, full_paths, freeze)
    return before, net.tree.index_of(net.derive().path), net


def test_ssn_freeze_keeps_a_decided_path_through_thousands_of_arch_steps():
    # The drift, scaled: at r = 1 the loss gives a one-hot path zero gradient, but the ordering
    # penalty keeps pushing the leaf down and the root up; Adam makes that a full lr step each time,
    # whatever λ is. The paper's arch lr 3e-4 loses a lead of 1.0 in ~1,750 steps; lr 1e-2 in ~50.
    before, after, net = _drift(freeze=True, steps=120)
    assert after == before
    assert net.frozen_counts()["frozen_path"] == 1
    assert net.frozen_counts()["frozen_ops"] == net.frozen_ops.numel()  # every op row is one-hot at r = 1
    # without the freeze the same steps flip the derived path to a shallower node
    before_unfrozen, after_unfrozen, _ = _drift(freeze=False, steps=120)
    assert before_unfrozen == before and after_unfrozen != before


def test_frozen_rows_do_not_move_at_all():
    net, _ = _decided_net()
    arch_opt = torch.optim.Adam(net.arch_parameters(), lr=3e-3, betas=(0.5, 0.999))
    flops = FlopsController(1e-3, 1.0, (0.5, 2.0), 1)  # a FLOPs penalty pushing every row, too
    lr, hr = _batch(2, 4)
    gen = torch.Generator().manual_seed(0)
    arch_step(net, arch_opt, lr, hr, content_loss, gen, flops, 0.1, net.tree.full_paths)  # freezes
    arch = {"alpha", "width_logits", "path_logits"}
    frozen = {name: p.detach().clone() for name, p in net.named_parameters() if name in arch}
    for _ in range(20):
        arch_step(net, arch_opt, lr, hr, content_loss, gen, flops, 0.1, net.tree.full_paths)
    for param, mask in net.frozen_masks():
        name = next(n for n, p in net.named_parameters() if p is param)
        assert torch.equal(param.detach()[mask], frozen[name][mask]), name


def test_frozen_rows_are_part_of_the_checkpoint():
    net, _ = _decided_net()
    net.freeze_decided()
    restored = Supernet(SMALL)
    restored.load_state_dict(net.state_dict())
    assert restored.frozen_counts() == net.frozen_counts() and restored.frozen_counts()["frozen_path"] == 1


def test_width_rows_are_never_frozen_whatever_the_combiner():
    """Widths are Gumbel-sampled and derived by argmax: a one-hot sparsestmax of their logits decides nothing."""
    net, _ = _decided_net()  # r = 1: every sparsestmax row, widths' included, would be one-hot
    net.freeze_decided()
    assert net.frozen_counts()["frozen_widths"] == 0 and net.frozen_counts()["frozen_ops"] > 0
    before = net.width_logits.detach().clone()
    arch_opt = torch.optim.Adam(net.arch_parameters(), lr=1e-2, betas=(0.5, 0.999))
    lr, hr = _batch(1, 4)
    gen = torch.Generator().manual_seed(0)
    arch_step(net, arch_opt, lr, hr, content_loss, gen, FlopsController(1e-20, None, (0.5, 2.0), 20), 0.1,
              net.tree.full_paths)  # fmt: skip
    assert not torch.equal(net.width_logits.detach(), before)  # they keep learning, as in a softmax arm


def test_softmax_never_freezes():
    net = Supernet(SupernetConfig(backbone="B", nf=8, widths=(4, 8), num_cells=2, num_ups=1, combiner="softmax"))
    with torch.no_grad():
        net.alpha.normal_(std=10)
    net.set_radius(1.0)
    assert net.freeze_decided() == {"frozen_ops": 0, "frozen_widths": 0, "frozen_path": 0}


def test_flops_controller_doubles_above_the_band_and_halves_below():
    flops = FlopsController(0.1, 10.0, (0.5, 2.0), 2)
    flops.adapt(0, 100.0)  # not the end of an interval
    assert flops.weight == 0.1
    flops.adapt(1, 100.0)
    assert flops.weight == 0.2
    flops.adapt(3, 1.0)
    assert flops.weight == 0.1
    flops.adapt(5, 10.0)  # inside the band
    assert flops.weight == 0.1
    fixed = FlopsController(1e-20, None, (0.5, 2.0), 1)
    fixed.adapt(0, 1e9)
    assert fixed.weight == 1e-20


def test_cached_rows_fill_every_batch_deterministically():
    rows = [
        {"lr": torch.randint(0, 255, (20, 20, 3), dtype=torch.uint8).numpy(), "hr": None, "id": str(i)}
        for i in range(3)
    ]
    for row in rows:
        row["hr"] = row["lr"].repeat(4, axis=0).repeat(4, axis=1)

    def draw(seed: int) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        batches = patch_batches(rows, batch_size=8, patch=8, scale=4, generator=gen, steps=3, name="t")
        return [lr for lr, _ in batches]

    first = draw(0)
    assert len(first) == 3 and all(b.shape == (8, 3, 8, 8) for b in first)
    assert all(torch.equal(a, b) for a, b in zip(first, draw(0), strict=True))
    assert not torch.equal(first[0], draw(1)[0])


def _constant_rows(n: int) -> list[dict]:
    """Rows whose every pixel is the row's index: a crop says which row it was cut from."""
    rows = []
    for i in range(n):
        lr = torch.full((12, 14, 3), i, dtype=torch.uint8).numpy()
        rows.append({"lr": lr, "hr": lr.repeat(4, axis=0).repeat(4, axis=1), "id": str(i)})
    return rows


def test_several_crops_per_cached_row_are_spread_over_batches():
    """k = 3: an epoch's 15 crops of 5 rows are every row 3 times, mixed over the batches, each crop of its row."""
    rows = _constant_rows(5)
    gen = torch.Generator().manual_seed(0)
    batches = patch_batches(rows, batch_size=5, patch=8, scale=4, generator=gen, steps=3, name="t", crops_per_image=3)
    drawn: list[int] = []
    for lr, hr in batches:
        assert lr.shape == (5, 3, 8, 8) and hr.shape == (5, 3, 32, 32)
        assert torch.equal((hr[:, :, ::4, ::4] * 255).round(), (lr * 255).round())  # LR and HR of one row, aligned
        drawn += (lr[:, 0, 0, 0] * 255).round().long().tolist()
    assert sorted(drawn) == sorted(list(range(5)) * 3), drawn
    assert any(len(set(drawn[i : i + 5])) > 2 for i in (0, 5, 10))  # batches mix rows, not 2 rows cut 3 times


def test_streamed_rows_wait_in_a_pool_and_each_is_drawn_k_times_in_distinct_batches():
    from workers.batches import _pooled

    gen = torch.Generator().manual_seed(0)
    batches = list(_pooled(iter(range(10)), batch_size=4, k=3, generator=gen))
    drawn = [row for batch in batches for row in batch]
    assert sorted(drawn) == sorted(list(range(10)) * 3)  # every row exactly k times: 30 crops from 10 decodes
    assert [len(batch) for batch in batches] == [4] * 7 + [2]  # ⌈10 × 3 / 4⌉ batches, as the plan counts
    assert all(len(set(batch)) == 4 for batch in batches[:3])  # while rows come: a row's crops in distinct batches
    assert max(batches[0]) <= 7  # the first batch draws from the pool of 2 × batch rows, not beyond


def test_one_crop_per_row_draws_what_it_always_did():
    rows = _constant_rows(4)

    def draw(**k: int) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(3)
        return [
            lr for lr, _ in patch_batches(rows, batch_size=3, patch=8, scale=4, generator=gen, steps=3, name="t", **k)
        ]

    assert all(torch.equal(a, b) for a, b in zip(draw(), draw(crops_per_image=1), strict=True))
    with pytest.raises(ValueError, match=r"data\.crops_per_image must be >= 1, got 0"):
        draw(crops_per_image=0)


def test_batches_cut_on_several_threads_are_the_same_bytes_in_the_same_order():
    """Rows and draws are taken in order on the calling thread, only the cuts run on the pool."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(7):  # ragged random images: any misplaced crop or flip changes bytes
        lr = rng.integers(0, 256, (12 + i, 14, 3), dtype=np.uint8)
        rows.append({"id": str(i), "lr": lr, "hr": lr.repeat(4, axis=0).repeat(4, axis=1)})

    def cut(threads: int, steps: int = 9, **options) -> list[bytes]:
        gen = torch.Generator().manual_seed(4)
        batches = patch_batches(
            rows, batch_size=5, patch=8, scale=4, generator=gen, steps=steps, name="t", cut_threads=threads, **options
        )
        return [lr.numpy().tobytes() + hr.numpy().tobytes() for lr, hr in batches]

    assert cut(3) == cut(1)
    assert cut(2, crops_per_image=3) == cut(1, crops_per_image=3)
    early = patch_batches(rows, batch_size=5, patch=8, scale=4, generator=torch.Generator(), steps=50, name="t",
                          cut_threads=3)  # fmt: skip
    assert next(early)[0].shape == (5, 3, 8, 8)
    early.close()  # a loop that stops early: the pool's cuts not started are dropped, its threads end
    rows[3] = {"id": "tiny", "lr": rows[3]["lr"][:6], "hr": rows[3]["hr"][:24]}
    with pytest.raises(ValueError, match="tiny: LR image 6x14 is smaller than the patch 8"):
        cut(3)
    with pytest.raises(ValueError, match="cut_threads must be >= 1, got 0"):
        cut(0)


def test_a_ray_data_batch_is_cut_into_rows_for_several_crops():
    """What `iter_batches(batch_format="numpy")` yields for ragged images: columns, images as an object array."""
    from workers.batches import _row_list

    images = [row["lr"] for row in _constant_rows(2)]
    column = np.empty(2, dtype=object)
    column[:] = images
    rows = _row_list({"id": np.array(["a", "b"]), "lr": column, "hr": column})
    assert [r["id"] for r in rows] == ["a", "b"] and rows[1]["lr"] is images[1]
