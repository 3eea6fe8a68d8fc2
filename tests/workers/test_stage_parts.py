"""Stage machinery without Ray: settings, seeded streams, checkpoints, collectives, validation."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from workers.batches import epoch_generator
from workers.checkpointing import CheckpointError, load_state, staged_checkpoint
from workers.distributed import all_ranks_agree, average_gradients, rank_spread
from workers.validation import evaluate_pairs


def test_epoch_generators_are_reproducible_and_distinct():
    draw = lambda *key: torch.rand(4, generator=epoch_generator(*key))  # noqa: E731
    torch.testing.assert_close(draw(1, 2, 0), draw(1, 2, 0))
    assert not torch.equal(draw(1, 2, 0), draw(1, 3, 0))
    assert not torch.equal(draw(1, 2, 0), draw(1, 2, 1))
    assert not torch.equal(draw(1, 2, 0, 0), draw(1, 2, 0, 1))


def test_checkpoint_round_trip(tmp_path):
    state = {"model": {"w": torch.arange(3.0)}, "epoch": 2, "optimizer": {"lr": 0.1}}
    with staged_checkpoint(state, '{"g": 1}') as directory:
        loaded = load_state(directory)
        assert os.path.isfile(os.path.join(directory, "genotype.json"))
    assert loaded["epoch"] == 2 and torch.equal(loaded["model"]["w"], torch.arange(3.0))
    assert not os.path.exists(directory)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch " + os.environ["TRILEVEL_PWNED"],))


def test_malicious_checkpoint_is_refused_and_does_not_run(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("TRILEVEL_PWNED", str(marker))
    torch.save({"model": _Payload()}, tmp_path / "state.pt")
    with pytest.raises(CheckpointError, match="refusing to unpickle arbitrary objects"):
        load_state(tmp_path)
    assert not marker.exists()


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint state here"):
        load_state(tmp_path)
    (tmp_path / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"state\.pt"):
        load_state(tmp_path)


def _collectives(rank: int, rendezvous: str, results) -> None:
    # a file rendezvous: no port to pick, so none another process can take first
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        p = torch.nn.Parameter(torch.zeros(3))
        q = torch.nn.Parameter(torch.zeros(2))
        p.grad = torch.full((3,), float(rank + 1))  # rank 0: 1, rank 1: 2
        if rank == 0:
            q.grad = torch.ones(2) * 4.0  # rank 1 never used q: its grad counts as zeros
        average_gradients([p, q])
        same = rank_spread([torch.ones(2)])
        differ = rank_spread([torch.full((2,), float(rank))])
        results[rank] = (p.grad.tolist(), q.grad.tolist(), same, differ, all_ranks_agree(rank == 0))
    finally:
        dist.destroy_process_group()


def test_collectives_on_two_real_gloo_processes(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_collectives, args=(str(tmp_path / "rendezvous"), results), nprocs=2, join=True)
    for rank in (0, 1):
        p_grad, q_grad, same, differ, agreed = results[rank]
        assert p_grad == [1.5, 1.5, 1.5]
        assert q_grad == [2.0, 2.0]
        assert same == 0.0 and differ == 1.0
        assert agreed is False


def test_single_process_collectives_are_no_ops():
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.ones(2)
    average_gradients([p])
    assert p.grad.tolist() == [1.0, 1.0]
    assert all_ranks_agree(True) and rank_spread([p]) == 0.0


def test_validation_scores_a_known_forward():
    rng = np.random.default_rng(0)
    hr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    lr = hr[::4, ::4]
    exact = torch.from_numpy(hr).permute(2, 0, 1)[None].float() / 255
    perfect = evaluate_pairs(lambda x: exact, [(lr, hr)], scale=4)
    assert perfect["val_psnr"] == float("inf") and perfect["val_ssim"] == pytest.approx(1.0)
    blurry = evaluate_pairs(lambda x: torch.nn.functional.interpolate(x, scale_factor=4), [(lr, hr)], scale=4)
    assert 0 < blurry["val_psnr"] < 30
