"""Damaged state never blocks a resume and is never met mid-training.

Real damage on real files: a checkpoint truncated or with a flipped byte after it was registered,
and a Parquet shard truncated or changed after its manifest was written.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from orchestrator.experiment import ExperimentError
from orchestrator.plan import data_facts
from workers.checkpointing import CHECKSUM_FILE, STATE_FILE, CheckpointError, load_state, staged_checkpoint
from workers.shards.format import DataError, read_manifest, verify_shards
from workers.stage_io import InProcessStageIO, checkpoint_names


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", [_truncate, _flip_a_byte], ids=["truncated", "flipped byte"])
def test_a_damaged_checkpoint_is_refused_naming_the_file(tmp_path, damage):
    state = {"weights": torch.arange(4096, dtype=torch.float32), "epoch": 3}
    with staged_checkpoint(state, '{"path": [0, 1]}') as staged:
        shutil.copytree(staged, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / CHECKSUM_FILE).is_file()
    assert torch.equal(load_state(tmp_path / "ckpt")["weights"], state["weights"])
    damage(tmp_path / "ckpt" / STATE_FILE)
    with pytest.raises(CheckpointError, match=rf"{tmp_path}/ckpt/{STATE_FILE}: .*(truncated|SHA-256 differs)"):
        load_state(tmp_path / "ckpt")


@pytest.mark.parametrize("damage", [_truncate, _flip_a_byte], ids=["truncated", "flipped byte"])
def test_resume_falls_back_to_the_checkpoint_before_a_damaged_newest_one(tmp_path, damage, caplog):
    reports = []
    io = InProcessStageIO(str(tmp_path / "run"), {}, 4, on_report=lambda metrics, path: reports.append(path))
    for epoch in range(3):
        io.report({"epoch": epoch}, {"epoch": epoch, "w": torch.full((512,), float(epoch))}, None, f"epoch-{epoch}")
    assert checkpoint_names(str(tmp_path / "run")) == ["epoch-0", "epoch-1", "epoch-2"]
    damage(tmp_path / "run" / "epoch-2" / STATE_FILE)
    with caplog.at_level(logging.WARNING, logger="workers.stage_io"):
        state, path = io.resumed()
    assert state is not None and state["epoch"] == 1 and path == reports[1]
    assert f"checkpoint {reports[2]} is damaged" in caplog.text and f"resuming from {reports[1]} instead" in caplog.text
    # the epoch redone after the fallback replaces the damaged one, and resuming is whole again
    io.report({"epoch": 2}, {"epoch": 2, "w": torch.full((512,), 2.0)}, None, "epoch-2")
    assert io.resumed()[0]["epoch"] == 2


def test_every_damaged_checkpoint_means_the_stage_starts_again(tmp_path, caplog):
    io = InProcessStageIO(str(tmp_path / "run"), {}, 4, on_report=lambda metrics, path: None)
    io.report({}, {"epoch": 0}, None, "epoch-0")
    _truncate(tmp_path / "run" / "epoch-0" / STATE_FILE)
    with caplog.at_level(logging.WARNING, logger="workers.stage_io"):
        assert io.resumed() == (None, None)
    assert "resuming from the start of the stage instead" in caplog.text


@pytest.fixture
def shards(tmp_path, demo_data) -> Path:
    """A private copy of the built-in training shards, to damage."""
    copy = tmp_path / "train"
    shutil.copytree(Path(demo_data) / "train", copy)
    return copy


def test_a_shard_truncated_after_its_manifest_is_named_before_training(shards):
    manifest = read_manifest(str(shards))
    assert all(len(entry["sha256"]) == 64 for entry in manifest.data["shards"])
    verify_shards(manifest)  # whole as written
    shard = Path(manifest.shards[0])
    _truncate(shard)
    with pytest.raises(ExperimentError, match=rf"data.train: {shard}: .* bytes, but _MANIFEST.json lists"):
        data_facts(str(shards), "data.train")


def test_a_shard_changed_in_place_fails_its_digest(shards):
    manifest = read_manifest(str(shards))
    shard = Path(manifest.shards[0])
    _flip_a_byte(shard)
    with pytest.raises(DataError, match=rf"{shard}: SHA-256 .* differs"):
        verify_shards(manifest)
    verify_shards(manifest, digests=False)  # sizes alone cannot see it: that is what the digest is for
