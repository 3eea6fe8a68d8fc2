"""The stage loops in one plain process (`LocalStageIO`, `InProcessStageIO`): pipeline, resume, skip, fine-tuning.

The same loop code runs inside Ray Train (`tests/reliability/test_faulted_sweep.py` covers that, with a real
worker kill); here it runs without Ray, so the resume and fine-tuning logic is tested in seconds.
"""

from __future__ import annotations

import glob
import os
import shutil

import pytest
import torch

from orchestrator.train_run import local_io
from search_space.cost import count
from search_space.genotype import Genotype
from search_space.teacher import RRDBNet
from tests.helpers import tiny_plan
from workers.checkpointing import load_state
from workers.stage_io import InProcessStageIO, LocalStageIO, checkpoint_names
from workers.stage_outputs import DONE_MARKER, read_stage_result
from workers.stages import run_stages
from workers.vgg import VGG19Features

SHORT = (
    "stages.pretrain.epochs=1",
    "stages.pretrain.steps_per_epoch=2",
    "stages.search.epochs=2",
    "stages.search.steps_per_epoch=3",
    "stages.train.epochs=1",
    "stages.train.steps_per_epoch=2",
)


def _arch(checkpoint: str) -> list[torch.Tensor]:
    model = load_state(checkpoint)["model"]
    return [model[k] for k in ("alpha", "width_logits", "path_logits", "frozen_ops", "frozen_path")]


class CrashAfter(LocalStageIO):
    """A process that dies right after reporting the checkpoint `name` (what a killed worker leaves)."""

    def __init__(self, name: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.crash_after = name

    def report(self, metrics, state, genotype_json, dir_name):
        super().report(metrics, state, genotype_json, dir_name)
        if state is not None and dir_name == self.crash_after:
            raise KeyboardInterrupt(f"killed after {dir_name}")


def test_pipeline_with_teacher_in_one_process(tmp_path):
    teacher_file = tmp_path / "teacher.pth"
    torch.save(RRDBNet(nf=8, nb=1, gc=4).state_dict(), teacher_file)
    teacher = (
        "supervision.kind=teacher",
        f"supervision.weights={teacher_file}",
        "supervision.nb=1",
        "supervision.nf=8",
        "supervision.gc=4",
    )
    plan = tiny_plan(str(tmp_path / "runs"), (*SHORT, *teacher, "stages.search.lambda_order=0.01"), trial=0)
    (run,) = plan.runs
    assert run.stages == ("pretrain", "search", "train") and run.workers == 1
    io = local_io(run, 4)
    pretrain, search, trained = run_stages(run.settings, io)
    # every epoch reported once, tagged with its stage; a stage ends on its last epoch's report
    seen = [(r.metrics["stage"], r.metrics["epoch"], r.metrics["stage_finished"]) for r in io.reports]
    assert seen == [
        ("pretrain", 0, True),
        ("search", 0, False),
        ("search", 1, True),
        ("train", 0, True),
    ]
    assert [os.path.basename(r.checkpoint) for r in io.reports] == [
        "pretrain-e0001",
        "search-e0001",
        "search-e0002",
        "train-e0001",
    ]
    assert pretrain.metrics["steps"] == 2 and pretrain.metrics["val_psnr"] > 0
    assert search.metrics["radius"] == pytest.approx(1.0)  # per iteration, reaching radius_end on the last step
    assert search.metrics["frozen_path"] == 1  # one-hot at r = 1, so frozen
    genotype = Genotype.from_dict(search.genotype)
    assert search.metrics["path"] == str(list(genotype.path))
    assert trained.genotype == search.genotype and trained.metrics["phase"] == "content"
    for result in (pretrain, search, trained):
        assert read_stage_result(run.settings.outputs, result.stage) == result


def test_interrupted_search_resumes_to_the_identical_result_in_a_plain_and_in_a_trial_process(tmp_path):
    reference_plan = tiny_plan(str(tmp_path / "a"), SHORT)
    (reference_run,) = reference_plan.runs
    _, reference, _ = run_stages(reference_run.settings, local_io(reference_run, 4))

    plan = tiny_plan(str(tmp_path / "b"), SHORT)
    (run,) = plan.runs
    crashing = local_io(run, 4)
    crashing = CrashAfter("search-e0001", checkpoints=crashing.checkpoints, datasets=crashing.datasets)
    with pytest.raises(KeyboardInterrupt):
        run_stages(run.settings, crashing)
    assert read_stage_result(run.settings.outputs, "pretrain") is not None
    assert read_stage_result(run.settings.outputs, "search") is None
    resumed_io = local_io(run, 4, resume_from=os.path.join(run.settings.checkpoints, "search-e0001"))
    _, resumed, _ = run_stages(run.settings, resumed_io)
    assert [(r.metrics["stage"], r.metrics["epoch"]) for r in resumed_io.reports] == [("search", 1), ("train", 0)]
    for a, b in zip(_arch(resumed.checkpoint), _arch(reference.checkpoint), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert resumed.genotype == reference.genotype

    # the same in a trial's process: no resume point is handed over, the run finds its latest registered
    # checkpoint on the storage path, and a checkpoint left half-copied by the kill is not one of them
    plan = tiny_plan(str(tmp_path / "c"), SHORT)
    (run,) = plan.runs
    reports: list[tuple[str, int, str | None]] = []

    def on_report(metrics, checkpoint):
        reports.append((metrics["stage"], metrics["epoch"], checkpoint and os.path.basename(checkpoint)))
        if checkpoint and checkpoint.endswith("search-e0001") and len(reports) == 2:
            raise KeyboardInterrupt("killed after search-e0001")

    def in_process() -> InProcessStageIO:
        return InProcessStageIO(run.settings.checkpoints, run.settings.datasets, 4, on_report)

    with pytest.raises(KeyboardInterrupt):
        run_stages(run.settings, in_process())
    half_copied = os.path.join(run.settings.checkpoints, "search-e0002")
    os.makedirs(half_copied)
    open(os.path.join(half_copied, "state.pt"), "wb").close()
    _, resumed, _ = run_stages(run.settings, in_process())
    assert reports == [
        ("pretrain", 0, "pretrain-e0001"),
        ("search", 0, "search-e0001"),
        ("search", 1, "search-e0002"),
        ("train", 0, "train-e0001"),
    ]
    assert checkpoint_names(run.settings.checkpoints) == [
        "pretrain-e0001",
        "search-e0001",
        "search-e0002",
        "train-e0001",
    ]
    for a, b in zip(_arch(resumed.checkpoint), _arch(reference.checkpoint), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert resumed.genotype == reference.genotype


def test_finished_stages_are_skipped_and_train_extends_into_finetuning(tmp_path):
    storage = str(tmp_path / "runs")
    plan = tiny_plan(storage, SHORT)
    (run,) = plan.runs
    first = run_stages(run.settings, local_io(run, 4))
    again_io = local_io(run, 4)
    assert run_stages(run.settings, again_io) == first and again_io.reports == []

    # extend the finished train stage by a perceptual fine-tuning phase: it resumes from its checkpoint
    vgg_file = tmp_path / "vgg19.pth"
    torch.save(VGG19Features().state_dict(), vgg_file)
    finetune = (
        "stages.train.finetune={epochs: 1, steps_per_epoch: 1, batch_size: 2, loss: perceptual}",
        f"perceptual.vgg_weights={vgg_file}",
    )
    longer = tiny_plan(storage, (*SHORT, *finetune))
    (longer_run,) = longer.runs
    os.remove(os.path.join(longer_run.settings.outputs, "train", DONE_MARKER))
    io = local_io(longer_run, 4, resume_from=first[2].checkpoint)
    *_, extended = run_stages(longer_run.settings, io)
    assert [(r.metrics["stage"], r.metrics["epoch"], r.metrics["phase"]) for r in io.reports] == [
        ("train", 1, "perceptual")
    ]
    assert load_state(extended.checkpoint)["phase"] == 1 and extended.genotype == first[2].genotype

    # the random baseline of the same trial: the same supernet (pretrain and search are skipped), a random
    # architecture of the space within ±10% of the searched GFLOPs, inherited and trained with the same settings
    randomised = tiny_plan(storage, (*SHORT, "stages.train.random=0"))
    (random_run,) = randomised.runs
    os.remove(os.path.join(random_run.settings.outputs, "train", DONE_MARKER))
    io = local_io(random_run, 4)
    *_, drawn = run_stages(random_run.settings, io)
    assert [r.metrics["stage"] for r in io.reports] == ["train"]
    searched = Genotype.from_dict(first[1].genotype)
    target = count(searched).gmacs
    assert (
        drawn.genotype != first[1].genotype
        and abs(count(Genotype.from_dict(drawn.genotype)).gmacs - target) <= 0.1 * target
    )


def test_paper_scale_search_steps_come_from_the_data_and_the_radius_moves_every_step(tmp_path):
    from orchestrator.experiment import load_experiment, trials
    from orchestrator.plan import plan_trial, resolve_data

    storage = str(tmp_path / "runs")
    overrides = (
        "data.train=demo",
        "data.val={demo-val: demo}",
        "data.test={demo: demo}",
        "supervision.kind=hr",
        "supervision.weights=null",
        "perceptual.vgg_weights=null",
        "stages.search.loss=content",
        "search_space.nf=8",
        "search_space.widths=[8]",
        "search_space.num_cells=1",
        "stages.pretrain.epochs=1",
        "stages.search.epochs=3",
        "stages.search.milestones=[]",
    )
    experiment = load_experiment("table8", "paper", overrides, storage=storage)
    assert experiment.stages.search.steps_per_epoch is None  # the paper presets leave it to the data
    plan = plan_trial(trials(experiment)[0], resolve_data(experiment, storage), storage, "sw")
    search = plan.runs[0].settings.stages[1]
    assert search.optim.steps_per_epoch == 1  # 3 images in χ1 and χ2, batch 3: one step per epoch
    io = local_io(plan.runs[0], 4)
    pretrain_settings = plan.runs[0].settings
    from dataclasses import replace

    run_stages(replace(pretrain_settings, stages=pretrain_settings.stages[:2]), io)
    radii = [r.metrics["radius"] for r in io.reports if r.metrics["stage"] == "search"]
    assert radii == pytest.approx([0.0, 0.5, 1.0])  # r = t/(T-1) over T = 3 steps


def test_dead_data_is_a_clear_error(tmp_path):
    plan = tiny_plan(str(tmp_path / "runs"), SHORT)
    (run,) = plan.runs
    io = local_io(run, 4)
    empty = LocalStageIO(checkpoints=io.checkpoints, datasets={name: [] for name in io.datasets})
    with pytest.raises(ValueError, match="gave this worker no images"):
        run_stages(run.settings, empty)
    shutil.rmtree(run.settings.outputs, ignore_errors=True)
    assert glob.glob(os.path.join(run.settings.checkpoints, "*")) == []


def _searched_gflops(storage: str, target: float) -> tuple[float, list[float]]:
    overrides = (
        *SHORT,
        "stages.search.epochs=4",
        "stages.search.steps_per_epoch=3",
        "stages.search.arch_lr=0.05",
        f"stages.search.flops_target={target}",
        "stages.search.lambda_flops=1.0",
        "stages.search.flops_interval=1",
    )
    plan = tiny_plan(storage, overrides)
    (run,) = plan.runs
    io = local_io(run, 4)
    _, search, _ = run_stages(run.settings, io)
    weights = [r.metrics["lambda_flops"] for r in io.reports if r.metrics["stage"] == "search"]
    return search.metrics["derived_gflops"], weights


def test_a_flops_target_steers_the_search_and_adapts_its_weight(tmp_path):
    low, low_weights = _searched_gflops(str(tmp_path / "low"), 0.05)
    high, high_weights = _searched_gflops(str(tmp_path / "high"), 100.0)
    assert low < high  # two targets far apart: derived networks on the right side of each other
    # AGD's rule every epoch: far above the low target, λ doubles; far below the high one, it halves
    assert low_weights == [1.0, 2.0, 4.0, 8.0] and high_weights == [1.0, 0.5, 0.25, 0.125]


class _ThreadsSeen(Exception):
    pass


def test_the_workers_use_the_threads_they_asked_for(tmp_path):
    """The thread count is set before a stage does any work (checked there: a 2-thread pool on a busy 2-core
    machine stalls, so running the stages to the end would only make this test slow)."""
    plan = tiny_plan(str(tmp_path / "runs"), (*SHORT, "resources.cpus_per_worker=2"))
    (run,) = plan.runs
    assert run.settings.threads == 2
    seen = []

    class Probe(LocalStageIO):
        def resumed(self):  # the first thing a stage loop asks its runtime
            seen.append(torch.get_num_threads())
            raise _ThreadsSeen

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(_ThreadsSeen):
            run_stages(run.settings, Probe(checkpoints=str(tmp_path / "ckpt"), datasets={}))
    finally:
        torch.set_num_threads(before)
    assert seen == [2]


def test_the_stage_loops_batches_at_any_cut_threads_and_finished_on_the_device_are_todays(tmp_path):
    """`data.cut_threads` and crops finished on the device (`finish_crops`, what a GPU run does; here on the CPU
    device) change nothing: the batches are, bit for bit, those one cutting thread finishing them on the CPU
    gives (what the loop always did)."""
    from workers.batches import epoch_generator, patch_batches
    from workers.pipeline import worker_rows
    from workers.stages import StageContext

    def bits(batches) -> list[bytes]:
        return [t.numpy().tobytes() for batch in batches for t in batch]

    io = want = None
    for threads, on_device in ((1, False), (2, True), (1, True)):
        (run,) = tiny_plan(str(tmp_path), (f"data.cut_threads={threads}",)).runs
        settings = run.settings.stages[0]
        assert settings.cut_threads == threads
        role, name = next(iter(settings.datasets.items()))
        if io is None:  # the rows (decoded once) do not depend on the cutting threads
            source = run.settings.datasets[name]
            rows = worker_rows(source.path, 4, source.role)
            io = LocalStageIO(checkpoints=str(tmp_path / "c"), datasets={name: rows})
            want = bits(
                patch_batches(
                    io.rows(name),
                    batch_size=settings.optim.batch_size,
                    patch=settings.patch,
                    scale=4,
                    generator=epoch_generator(settings.seed, 1, 0, 0),
                    steps=settings.optim.steps_per_epoch,
                    name=name,
                    crops_per_image=settings.crops_per_image,
                )
            )
        context = StageContext(run.settings, io)
        assert not context.finish_on_device  # a CPU run finishes on the cutting thread, as always
        context.finish_on_device = on_device
        got = list(context.batches(settings, role, 1, 0, settings.optim))
        assert all(lr.dtype == torch.float32 and target is hr for lr, target, hr in got)  # no teacher: HR targets
        assert bits((lr, hr) for lr, _, hr in got) == want
