"""The stage store without Ray: keys hold what a stage reads (and only that), stored stages are checked, claims exclude.

What is measured here rather than assumed: pretraining is the same bit for bit under softmax,
sparsemax and sparsestmax (the keys then share it), and differs for the bilevel (fixed-path) space.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from orchestrator.train_run import local_io
from tests.helpers import tiny_plan
from workers.checkpointing import load_state
from workers.stage_outputs import StageResult
from workers.stage_store import (
    StageKey,
    code_version,
    entry_dir,
    lookup,
    publish,
    stage_key,
    stage_key_inputs,
    try_claim,
)
from workers.stage_store.claims import CLAIM_FILE, Claim, ClaimHeld
from workers.stages import run_stages

ONE_STEP = ("stages.pretrain.epochs=1", "stages.pretrain.steps_per_epoch=1", "search_space.num_cells=1")


@pytest.fixture
def data(demo_data: str) -> tuple[str, ...]:
    """The session's demo data set, so a plan does not write its own."""
    return (
        f"data.train={demo_data}/train",
        f"data.val={{demo-val: {demo_data}/val}}",
        f"data.test={{demo: {demo_data}/test}}",
    )


def _keys(storage: str, data: tuple[str, ...], *overrides: str, trial: int = 0) -> dict[str, StageKey]:
    (run,) = tiny_plan(storage, (*data, *overrides), trial=trial).runs
    return run.settings.store.keys


def test_pretrain_key_ignores_what_pretraining_does_not_read(tmp_path, data):
    storage = str(tmp_path / "runs")
    first, second = _keys(storage, data, trial=0), _keys(storage, data, trial=2)  # table8: λ_order 0 and 0.1
    assert first["pretrain"].inputs["stage"] == "pretrain"
    assert first["pretrain"].key == second["pretrain"].key
    assert first["search"].key != second["search"].key and first["train"].key != second["train"].key
    assert "search" not in first["pretrain"].inputs and first["search"].inputs["upstream"] == first["pretrain"].key
    neutral = _keys(storage, data, "search_space.recompute_cells=0.5", "resources.max_concurrent_trials=1")
    assert {s: k.key for s, k in neutral.items()} == {s: k.key for s, k in first.items()}
    softmax = _keys(storage, data, "search_space.combiner=softmax")
    assert softmax["pretrain"].key == first["pretrain"].key and softmax["search"].key != first["search"].key
    bilevel = _keys(storage, data, "search_space.levels=bilevel", "search_space.fixed_path=[0,0,1,1]")
    assert bilevel["pretrain"].key != first["pretrain"].key
    for changed in ("seed=1", "stages.pretrain.lr=0.002", "stages.patch=20", "stages.val_max_images=2"):
        assert _keys(storage, data, changed)["pretrain"].key != first["pretrain"].key, changed


def _pretrained(storage: Path, data: tuple[str, ...], *overrides: str) -> dict[str, torch.Tensor]:
    no_val = (data[0], "data.val={}", data[2])  # weights only: no validation pass
    (run,) = tiny_plan(str(storage), (*no_val, *ONE_STEP, *overrides), sweep="-".join(overrides) or "base").runs
    settings = dataclasses.replace(run.settings, stages=run.settings.stages[:1], store=None)
    (result,) = run_stages(settings, local_io(dataclasses.replace(run, settings=settings), 4))
    return load_state(result.checkpoint)["model"]


def test_pretraining_is_the_same_under_every_combiner_and_differs_for_a_fixed_path(tmp_path, data):
    """Measured, as the keys assume: the same weights bit for bit after a pretrain step, whatever the combiner."""
    base = _pretrained(tmp_path, data, "search_space.combiner=sparsestmax")
    softmax = _pretrained(tmp_path, data, "search_space.combiner=softmax")
    assert base.keys() == softmax.keys()
    assert all(torch.equal(base[name], softmax[name]) for name in base)
    bilevel = _pretrained(tmp_path, data, "search_space.levels=bilevel", "search_space.fixed_path=[0,1,1]")
    assert any(not torch.equal(base[name], bilevel[name]) for name in base if "cells" in name or "stem" in name)


def _stored(tmp_path: Path, inputs: dict | None = None) -> tuple[str, StageKey, StageResult]:
    storage = str(tmp_path / "runs")
    checkpoint = tmp_path / "run" / "pretrain-e0001"
    checkpoint.mkdir(parents=True)
    torch.save({"model": {"w": torch.arange(4.0)}}, checkpoint / "state.pt")
    inputs = inputs or {
        "stage": "pretrain",
        "seed": 0,
        "data": {"w": "fingerprint-1"},
        "code": "v1",
        "betas": (0.5, 0.9),
    }
    key = StageKey("pretrain", stage_key(inputs), inputs)
    result = StageResult("pretrain", str(checkpoint), None, {"loss": 1.0}, None, [{"epoch": 0.0}])
    publish(storage, key, result, {"sweep": "s", "trial": "t"})
    return storage, key, result


def test_a_stored_stage_is_reused_by_reference(tmp_path):
    storage, key, result = _stored(tmp_path)
    stored = lookup(storage, key)
    # the same checkpoint path (a reference, not a copy); the inputs' tuples came back from JSON as lists
    assert stored is not None and stored.result == result
    assert stored.computed_by["trial"] == "t"


def test_a_corrupted_stored_stage_is_not_reused(tmp_path):
    storage, key, result = _stored(tmp_path)
    state = Path(result.checkpoint) / "state.pt"
    data = bytearray(state.read_bytes())
    data[-10] ^= 0xFF  # same size, other content
    state.write_bytes(bytes(data))
    assert lookup(storage, key) is None
    state.unlink()
    assert lookup(storage, key) is None


def test_a_changed_data_fingerprint_or_code_version_is_another_key_and_differing_inputs_are_refused(tmp_path):
    storage, key, _ = _stored(tmp_path)
    for changed in ({"data": {"w": "fp-2"}}, {"code": "v2"}):
        other = key.inputs | changed
        assert stage_key(other) != key.key
        assert lookup(storage, StageKey("pretrain", stage_key(other), other)) is None
    # the same key with other inputs (a collision, or an edited entry): never reused
    assert lookup(storage, StageKey("pretrain", key.key, key.inputs | {"code": "v2"})) is None


def test_the_plan_keys_hold_the_data_fingerprint_and_the_code_version(tmp_path, data):
    keys = _keys(str(tmp_path / "runs"), data)
    pretrain = keys["pretrain"].inputs
    assert pretrain["code"] == code_version() and set(pretrain["data"]) == {"w"}
    assert set(keys["search"].inputs["data"]) == {"w", "a"}
    changed = dict(pretrain, data={"w": "another data set"})
    assert stage_key(changed) != keys["pretrain"].key
    assert stage_key((stage_key_inputs.__defaults__ and pretrain) or pretrain) == keys["pretrain"].key


def test_one_claim_at_a_time_a_stale_one_is_taken_over(tmp_path):
    entry = str(tmp_path / "entry")
    first = try_claim(entry, "sweep/a")
    assert isinstance(first, Claim)
    held = try_claim(entry, "sweep/b")
    assert isinstance(held, ClaimHeld) and held.owner == "sweep/a"
    retry = try_claim(entry, "sweep/a")  # the same trial again (its earlier process died): takes over at once
    assert isinstance(retry, Claim) and retry.token != first.token
    first.release()  # no longer the holder: releasing does nothing
    assert json.loads((tmp_path / "entry" / CLAIM_FILE).read_text())["token"] == retry.token
    time.sleep(0.3)
    taken = try_claim(entry, "sweep/b", stale_s=0.2)  # no heartbeat for 0.2 s: stale
    assert isinstance(taken, Claim)
    taken.release()
    assert not (tmp_path / "entry" / CLAIM_FILE).exists()


def test_concurrent_claims_give_one_holder(tmp_path):
    """Eight claimants released at once (threads: the exclusive create is the filesystem's, not the process's)."""
    entry = entry_dir(str(tmp_path / "runs"), "pretrain", "k" * 32)
    barrier = threading.Barrier(8)

    def claim(owner: str) -> bool:
        barrier.wait()
        return isinstance(try_claim(entry, owner), Claim)

    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(claim, [f"sweep/t{i}" for i in range(8)]))
    assert sum(won) == 1, won
