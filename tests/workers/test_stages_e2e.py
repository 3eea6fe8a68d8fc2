"""pretrain → search → derive → train as real TorchTrainer runs on the built-in data (CPU, gloo).

Kept few and tiny: every TorchTrainer run costs ~25 s of fixed overhead on 2 cores.
"""

from __future__ import annotations

import glob
import json
import os
import shutil

import pytest
import torch

from search_space.genotype import Genotype
from search_space.teacher import RRDBNet
from tests.faults import KillWhen
from workers.checkpointing import load_state
from workers.stage_runner import DONE_MARKER, run_stage, stage_datasets
from workers.vgg import VGG19Features

TINY_SUPERNET = {"nf": 16, "widths": [8, 12, 16], "num_cells": 3}


def _common(demo_data: str) -> dict:
    return {
        "seed": 3,
        "batch_size": 2,
        "patch": 16,
        "supernet": TINY_SUPERNET,
        "val_path": os.path.join(demo_data, "val"),
        "val_max_images": 1,
    }


def _run(stage: str, config: dict, name: str, storage: str, demo_data: str, workers: int = 1):
    datasets = stage_datasets(stage, os.path.join(demo_data, "train"), 4)
    return run_stage(stage, config, name=name, storage_path=storage, datasets=datasets, num_workers=workers)


def _registered_checkpoints(run_dir: str) -> int:
    """Checkpoints Ray Train has registered (a directory on disk alone may not be registered yet)."""
    try:
        with open(os.path.join(run_dir, "checkpoint_manager_snapshot.json")) as f:
            return len(json.load(f)["checkpoint_results"])
    except (OSError, ValueError, KeyError):
        return 0


def _arch(checkpoint: str) -> list[torch.Tensor]:
    model = load_state(checkpoint)["model"]
    return [model[k] for k in ("alpha", "width_logits", "path_logits")]


@pytest.mark.usefixtures("ray_session")
def test_one_worker_pipeline_with_teacher_resume_and_finetune(demo_data, tmp_path):
    storage = str(tmp_path / "runs")
    common = _common(demo_data)
    teacher_file = tmp_path / "teacher.pth"
    torch.save(RRDBNet(nf=8, nb=1, gc=4).state_dict(), teacher_file)
    vgg_file = tmp_path / "vgg19.pth"
    torch.save(VGG19Features().state_dict(), vgg_file)

    # pretrain, distilling from a (small, random) RRDBNet teacher loaded from a weights file
    teacher = {"kind": "teacher", "weights": str(teacher_file), "nb": 1, "nf": 8, "gc": 4}
    pretrain = _run(
        "pretrain",
        common | {"optim": {"epochs": 1, "steps_per_epoch": 2}, "supervision": teacher},
        "sw/t/pretrain",
        storage,
        demo_data,
    )
    assert pretrain.metrics["steps"] == 2 and pretrain.metrics["val_psnr"] > 0
    # extend the finished pretrain by an epoch: it resumes from its checkpoint at epoch 1
    os.remove(os.path.join(storage, "sw/t/pretrain", DONE_MARKER))
    longer = common | {"optim": {"epochs": 2, "steps_per_epoch": 2}, "supervision": teacher}
    extended_pretrain = _run("pretrain", longer, "sw/t/pretrain", storage, demo_data)
    assert extended_pretrain.metrics["epoch"] == 1 and load_state(extended_pretrain.checkpoint)["epoch"] == 2
    assert len([p for p in glob.glob(os.path.join(storage, "sw/t/pretrain", "checkpoint_2*"))]) == 2

    # search, uninterrupted: 2 epochs
    search_config = common | {"init_from": pretrain.checkpoint, "lambda_order": 0.01, "lambda_flops": 1e-20}
    two_epochs = search_config | {"optim": {"epochs": 2, "steps_per_epoch": 4}}
    search = _run("search", two_epochs, "sw/t/search", storage, demo_data)
    genotype = Genotype.from_dict(search.genotype)
    assert search.metrics["epoch"] == 1 and search.metrics["radius"] == pytest.approx(
        0.875
    )  # (1 + 3/4) / 2: per-step linear
    assert search.metrics["path"] == str(list(genotype.path))

    # the same search, its Train worker process killed after the first checkpoint: the stage
    # restarts the worker (FailureConfig) and resumes from that checkpoint to the identical result
    run_dir = os.path.join(storage, "sw/r/search")
    checkpoints = lambda: [p for p in glob.glob(os.path.join(run_dir, "checkpoint_2*")) if os.path.isdir(p)]  # noqa: E731
    killer = KillWhen(lambda: _registered_checkpoints(run_dir) == 1, "ray::RayTrainWorker")
    killer.start()
    datasets = stage_datasets("search", os.path.join(demo_data, "train"), 4)
    resumed = run_stage(
        "search", two_epochs, name="sw/r/search", storage_path=storage, datasets=datasets, max_failures=1
    )
    killer.join(timeout=5)
    assert killer.killed_pid is not None, "the worker was never killed"
    # a kill between writing a checkpoint and registering it costs that epoch (redone), never more
    assert _registered_checkpoints(run_dir) == 2 and len(checkpoints()) in (2, 3)
    assert resumed.metrics["epoch"] == 1
    for a, b in zip(_arch(resumed.checkpoint), _arch(search.checkpoint), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert resumed.genotype == search.genotype

    # a finished stage is skipped, not repeated
    again = _run("search", two_epochs, "sw/t/search", storage, demo_data)
    assert again.skipped and again.checkpoint == search.checkpoint

    # train from search (content), then extend the same run with a perceptual fine-tuning phase
    train_config = common | {"init_from": search.checkpoint, "optim": {"epochs": 1, "steps_per_epoch": 2}}
    trained = _run("train", train_config, "sw/t/train", storage, demo_data)
    assert trained.metrics["phase"] == "content" and trained.genotype == search.genotype
    shutil.copy(os.path.join(storage, "sw/t/train", DONE_MARKER), tmp_path / "marker")
    os.remove(os.path.join(storage, "sw/t/train", DONE_MARKER))
    finetune = {"epochs": 1, "steps_per_epoch": 1, "loss": "perceptual"}
    extended = _run(
        "train", train_config | {"finetune": finetune, "vgg_weights": str(vgg_file)}, "sw/t/train", storage, demo_data
    )
    assert extended.metrics["epoch"] == 1 and extended.metrics["phase"] == "perceptual"
    assert load_state(extended.checkpoint)["phase"] == 1


@pytest.mark.usefixtures("ray_session")
def test_two_workers_agree_through_the_whole_pipeline(demo_data, tmp_path):
    storage = str(tmp_path / "runs")
    common = _common(demo_data) | {"batch_size": 1}
    pretrain = _run(
        "pretrain",
        common | {"optim": {"epochs": 1, "steps_per_epoch": 1}},
        "w2/pretrain",
        storage,
        demo_data,
        workers=2,
    )
    search = _run(
        "search",
        common | {"init_from": pretrain.checkpoint, "optim": {"epochs": 1, "steps_per_epoch": 2}},
        "w2/search",
        storage,
        demo_data,
        workers=2,
    )
    assert search.metrics["steps"] == 2
    assert search.metrics["arch_rank_spread"] == 0.0
    assert search.metrics["weight_rank_spread"] == 0.0
    train = _run(
        "train",
        common | {"init_from": search.checkpoint, "optim": {"epochs": 1, "steps_per_epoch": 1}},
        "w2/train",
        storage,
        demo_data,
        workers=2,
    )
    assert train.metrics["steps"] == 1 and train.genotype == search.genotype
