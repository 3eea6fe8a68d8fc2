"""Driver-side glue of a Train run: the SIGINT handler a main-thread fit() leaves, the coordinator started early."""

from __future__ import annotations

import signal

import pytest

from orchestrator.train_run import _restore_sigint, start_train_coordinator


def test_the_sigint_handler_a_fit_installs_is_put_back():
    """Ray Train's handler closes over the run's controller; left installed, it keeps that controller (and its
    data coordinators, which hold CPUs) alive until the next main-thread fit. This hung the test suite."""

    def ours(signum, frame):
        pass

    def rays(signum, frame):  # what TorchTrainer.fit() installs in the main thread
        pass

    previous = signal.signal(signal.SIGINT, ours)
    try:
        with _restore_sigint():
            signal.signal(signal.SIGINT, rays)
        assert signal.getsignal(signal.SIGINT) is ours
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.xdist_group("local_ray")  # shares the in-process Ray (tests/conftest.py)
def test_the_train_coordinator_is_up_before_any_train_run(ray_session):
    """Each Train run's controller asks this detached actor for resources, waiting 5 s twice when it is not up
    yet. Started by the sweep driver, it must exist under the name Ray Train looks up (a canary for Ray upgrades)."""
    start_train_coordinator()
    actor = ray_session.get_actor("AutoscalingCoordinator", namespace="AutoscalingCoordinator")
    assert ray_session.get(actor.__ray_ready__.remote(), timeout=120) is True


@pytest.mark.xdist_group("local_ray")  # shares the in-process Ray (tests/conftest.py)
def test_a_run_in_the_trial_process_streams_large_sets_in_the_same_order_every_pass(ray_session, tmp_path):
    """Sets too large to decode in memory reach an in-process run as Ray Data iterators, as a Train worker's
    shards would: the same rows as decoding them, in the same order on every pass (a resume's crops depend
    on it)."""
    from orchestrator.train_run import build_datasets
    from tests.helpers import tiny_plan
    from workers.pipeline import worker_rows
    from workers.stage_io import InProcessStageIO

    plan = tiny_plan(str(tmp_path / "runs"), ("data.cache_mb=0",))
    (run,) = plan.runs
    assert run.in_process and run.settings.streamed  # nothing is decoded in memory
    name = run.settings.streamed[0]
    streamed = build_datasets(run, 4, 0.25)
    io = InProcessStageIO(run.settings.checkpoints, run.settings.datasets, 4, lambda m, c: None, streamed)
    passes = [
        [row_id for batch in io.rows(name).iter_batches(batch_size=2, batch_format="numpy") for row_id in batch["id"]]
        for _ in range(2)
    ]
    source = run.settings.datasets[name]
    assert passes[0] == passes[1]
    assert sorted(passes[0]) == sorted(row["id"] for row in worker_rows(source.path, 4, source.role))

    # Cropping the stream: the batched cuts, on one thread or two, are the bytes main@99bd259's per-crop
    # collate cut from the same Ray batches with the same generator (bench/crop_reference.py).
    from bench.crop_reference import collate_crops_per_crop
    from workers.batches import epoch_generator, patch_batches

    steps = -(-len(passes[0]) // 2) + 1  # one pass and the first batch of the next
    gen = epoch_generator(0, 0)
    ray_batches = [b for _ in range(2) for b in io.rows(name).iter_batches(batch_size=2, batch_format="numpy")]
    want = [collate_crops_per_crop(batch, 16, 4, gen) for batch in ray_batches[:steps]]
    for threads in (1, 2):
        got = patch_batches(io.rows(name), batch_size=2, patch=16, scale=4, generator=epoch_generator(0, 0),
                            steps=steps, name=name, cut_threads=threads)  # fmt: skip
        assert [(lr.numpy().tobytes(), hr.numpy().tobytes()) for lr, hr in got] == [
            (lr.numpy().tobytes(), hr.numpy().tobytes()) for lr, hr in want
        ]
