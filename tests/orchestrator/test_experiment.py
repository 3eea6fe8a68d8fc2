"""Experiment schema, presets, overrides, sweep grids and the per-stage configs they produce."""

from __future__ import annotations

import pytest

from orchestrator.experiment import (
    ExperimentError,
    load_experiment,
    preset_names,
    trials,
)
from orchestrator.plan import DataFacts, ResolvedData, plan_trial
from workers.settings import STAGES

FACTS = DataFacts(
    path="x",
    scale=4,
    rows=3450,
    rows_w=1725,
    rows_a=1725,
    images=3450,
    images_w=1725,
    images_a=1725,
    bytes=10**10,
    fingerprint="f",
)

PRESETS = ["aim", "backbones", "fig1", "lambda-search", "psnr-b", "table7", "table8", "table9", "vis-a", "vis-b"]


def test_presets_ship_every_paper_setup():
    assert preset_names() == PRESETS


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("scale", ["tiny", "small", "paper"])
def test_every_preset_validates_and_yields_a_typed_plan(name, scale):
    experiment = load_experiment(name, scale)
    data = ResolvedData(train=dict.fromkeys(STAGES, FACTS), val={"v": "y"}, test={"t": "z"})
    for trial in trials(experiment):
        plan = plan_trial(trial, data, "/storage", "sw")
        stages = [s for run in plan.runs for s in run.settings.stages]
        assert [s.stage for s in stages] == list(STAGES)
        for settings in stages:
            spec = getattr(trial.experiment.stages, settings.stage)
            assert settings.optim.epochs == spec.epochs and settings.optim.lr == spec.lr
            assert settings.optim.steps_per_epoch >= 1 and settings.supernet == trial.experiment.supernet_config()


def test_paper_scale_uses_the_papers_hyperparameters():
    vis = load_experiment("vis-a", "paper")
    assert vis.search_space.backbone == "A" and vis.stages.search.lambda_order == 0.1
    assert vis.stages.pretrain.epochs == 100 and vis.stages.pretrain.milestones == [25, 50, 75]
    assert vis.stages.search.arch_lr == 3e-4 and vis.stages.search.arch_betas == (0.5, 0.999)
    assert vis.stages.train.epochs == 900 and vis.stages.train.batch_size == 16
    assert vis.stages.train.finetune is not None and vis.stages.train.finetune.epochs == 1800
    assert vis.supervision.kind == "teacher" and vis.supervision.weights.endswith("RRDB_ESRGAN_x4.pth")
    psnr = load_experiment("psnr-b", "paper")
    assert psnr.search_space.backbone == "B" and psnr.stages.train.finetune is None
    assert psnr.supervision.weights.endswith("RRDB_PSNR_x4.pth")
    aim = load_experiment("aim", "paper")
    assert aim.stages.train.epochs == 300 and aim.stages.train.milestones == [75, 150, 225]
    # Table 4: searched on DIV2K + Flickr2K, trained on DIV2K 120x120 sub-images
    assert aim.stage_data("search") == aim.stage_data("pretrain") == "data/div2k-flickr2k"
    assert aim.stage_data("train") == "data/div2k-subimages-120"


def test_ablation_grids():
    assert [t.trial_id for t in trials(load_experiment("table8"))] == [
        "lambda_order=0.0",
        "lambda_order=0.01",
        "lambda_order=0.1",
    ]
    table9 = {t.trial_id: t.experiment for t in trials(load_experiment("table9", "paper"))}
    assert table9["levels=bilevel"].supernet_config().bilevel_path == (0, 0, 0, 0, 0, 1, 1)
    tiny9 = {t.trial_id: t.experiment for t in trials(load_experiment("table9"))}
    assert tiny9["levels=bilevel"].supernet_config().bilevel_path == (0, 0, 0, 1, 1)  # AGD's path on 3 cells
    small9 = load_experiment("table9", "small", ["search_space.num_cells=3"])  # the path follows num_cells
    assert trials(small9)[0].experiment.supernet_config().bilevel_path == (0, 0, 0, 1, 1)
    with pytest.raises(ExperimentError, match=r"search_space.fixed_path: path \[0, 0, 0, 0, 1, 1\] is not in the "
                       r"search space .*; the supernet has num_cells=3, num_ups=2, backbone A"):  # fmt: skip
        trials(
            load_experiment("table9", "small", ["search_space.num_cells=3", "search_space.fixed_path=[0,0,0,0,1,1]"])
        )
    assert table9["levels=trilevel"].search_space.levels == "trilevel"
    fig1 = [t.experiment.stages.train.from_search for t in trials(load_experiment("fig1"))]
    assert fig1 == [True, False]


def test_overrides_and_yaml_files_extending_a_preset(tmp_path):
    experiment = load_experiment("table8", "tiny", ["stages.search.epochs=7", "seed=11"], name="mine")
    assert experiment.stages.search.epochs == 7 and experiment.seed == 11 and experiment.name == "mine"
    path = tmp_path / "exp.yaml"
    path.write_text("extends: psnr-b\nname: custom\nsearch_space: {combiner: softmax}\n")
    custom = load_experiment(path, "tiny")
    assert custom.search_space.combiner == "softmax" and custom.search_space.backbone == "B"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["search_space.backbone=C"], r"search_space.backbone: Input should be 'A' or 'B' \(got 'C'\)"),
        (["stages.search.lr=-1"], r"stages.search.lr: Input should be greater than 0 \(got -1\)"),
        (["stages.search.epochz=3"], r"stages.search.epochz: Extra inputs are not permitted"),
        (["supervision.kind=teacher", "supervision.weights=null"], r"supervision: a teacher needs weights"),
        (["search_space.widths=[24, 48]"], r"search_space.widths: .*ending at nf=16"),
        (["sweep={stages.search.nope: [1]}"], r"sweep.stages.search.nope: no field"),
        (["resources.workers.search=0"], r"workers.search must be >= 1, got 0"),
        (["stages.search.radius_end=-0.5"], r"stages.search.radius_end"),
    ],
)
def test_errors_name_the_field(overrides, message):
    with pytest.raises(ExperimentError, match=message):
        load_experiment("table8", "tiny", overrides)


def test_bad_sources(tmp_path):
    with pytest.raises(ExperimentError, match=r"unknown experiment 'nope': presets are aim, backbones"):
        load_experiment("nope")
    with pytest.raises(ExperimentError, match=r"scale must be one of tiny, small, paper, got 'huge'"):
        load_experiment("table8", "huge")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ExperimentError, match=r"bad.yaml: not valid YAML"):
        load_experiment(bad)
    with pytest.raises(ExperimentError, match=r"override 'oops': expected FIELD=VALUE"):
        load_experiment("table8", overrides=["oops"])


@pytest.mark.parametrize(
    ("overrides", "in_trial", "reservation"),
    [
        ((), [True], 0.5),  # the usual plan: one run, in the trial's process, which reserves its CPUs
        (("resources.workers.pretrain=2",), [False, True], 0.5),  # a 2-worker pretrain is a TorchTrainer run
        (("resources.workers={pretrain: 2, search: 2, train: 2}",), [False], 0.01),  # the trial only waits
        (("resources.gpus_per_worker=1",), [False], 0.01),  # GPU runs go to Ray Train's workers
        (("resources.single_worker_in_trial=false",), [False], 0.01),
    ],
)
def test_one_worker_cpu_runs_run_in_the_trial_which_reserves_their_cpus(overrides, in_trial, reservation):
    experiment = load_experiment("table8", "tiny", (*overrides, "resources.cpus_per_worker=0.5", "sweep={}"))
    (trial,) = trials(experiment)
    data = ResolvedData(train=dict.fromkeys(STAGES, FACTS), val={"v": "y"}, test={"t": "z"})
    plan = plan_trial(trial, data, "/storage", "sw")
    assert [run.in_process for run in plan.runs] == in_trial
    assert experiment.resources.trial_reservation() == reservation


def test_presets_select_on_one_set_and_report_on_another():
    vis = load_experiment("table8", "paper")
    assert vis.data.val == {"DIV2K": "data/div2k-val"}
    assert vis.data.test == {"Set5": "data/set5", "Set14": "data/set14"}
    aim = load_experiment("aim", "paper")  # Table 6 reports DIV2K-val: a child's sets replace its parent's
    assert aim.data.test == {"DIV2K-val": "data/div2k-val"} and set(aim.data.val) == {"Set5", "Set14"}
    for scale in ("tiny", "small"):
        demo = load_experiment("table7", scale).data
        assert demo.val == {"demo-val": "demo"} and demo.test == {"demo": "demo"}


def test_a_test_set_that_is_a_val_set_is_refused(tmp_path):
    with pytest.raises(ExperimentError, match=r"data.test.Set5: 'Set5' is also a validation set \(data.val.Set5\)"):
        load_experiment("table8", "paper", ["data.val.Set5=data/set5"])
    with pytest.raises(ExperimentError, match=r"data.test.Set5: data/div2k-val is also data.val.DIV2K"):
        load_experiment("table8", "paper", ["data.test.Set5=data/div2k-val"])
    with pytest.raises(ExperimentError, match=r"data.test: needs at least one test set"):
        load_experiment("table8", "paper", ["data.test={}"])


def test_a_copy_of_the_val_shards_as_test_set_is_refused(demo_data, tmp_path):
    """Another folder holding the same shards is the same set: refused when the data are resolved."""
    import shutil

    from orchestrator.plan import demo_part, resolve_data

    copy = tmp_path / "copy-of-val"
    shutil.copytree(f"{demo_data}/val", copy)
    sets = [f"data.train={demo_data}/train", f"data.val.demo-val={demo_data}/val", f"data.test.demo={copy}"]
    experiment = load_experiment("table8", "tiny", sets)
    with pytest.raises(ExperimentError, match=rf"data.test.demo: {copy} holds the same shards as data.val.demo-val"):
        resolve_data(experiment, str(tmp_path / "runs"))
    sets = [f"data.train={demo_data}/train", f"data.val.demo-val={demo_data}/val", f"data.test.demo={demo_data}/test"]
    resolved = resolve_data(load_experiment("table8", "tiny", sets), str(tmp_path / "runs"))  # different shards
    assert (resolved.val, resolved.test) == ({"demo-val": f"{demo_data}/val"}, {"demo": f"{demo_data}/test"})
    # "demo" means the built-in set's own part in each field
    assert [demo_part(f) for f in ("data.val.x", "data.test.x", "data.train", "stages.search.data")] == [
        "val", "test", "train", "train",
    ]  # fmt: skip


def test_seeds_repeat_every_arm_as_the_last_axis():
    from orchestrator.experiment import with_seeds

    seeded = with_seeds(load_experiment("table7", "tiny"), 3)
    grid = trials(seeded)
    assert [t.trial_id for t in grid][:4] == [
        "combiner=softmax,seed=0", "combiner=softmax,seed=1", "combiner=softmax,seed=2", "combiner=sparsestmax,seed=0",
    ]  # fmt: skip
    assert len(grid) == 6 and [t.experiment.seed for t in grid] == [0, 1, 2] * 2
    with pytest.raises(ExperimentError, match="already sweeps seed"):
        with_seeds(seeded, 2)
    with pytest.raises(ExperimentError, match="--seeds must be at least 1"):
        with_seeds(load_experiment("table7", "tiny"), 0)


def test_random_baseline_sits_beside_every_arm_before_the_seeds():
    from orchestrator.experiment import with_random, with_seeds

    grid = trials(with_random(with_seeds(load_experiment("table9", "tiny"), 2), 2))
    assert [t.trial_id for t in grid][:6] == [
        "levels=bilevel,random=None,seed=0", "levels=bilevel,random=None,seed=1", "levels=bilevel,random=0,seed=0",
        "levels=bilevel,random=0,seed=1", "levels=bilevel,random=1,seed=0", "levels=bilevel,random=1,seed=1",
    ]  # fmt: skip
    assert [t.experiment.stages.train.random for t in grid[:6]] == [None, None, 0, 0, 1, 1]
    with pytest.raises(ExperimentError, match="--random must be at least 1"):
        with_random(load_experiment("table9", "tiny"), 0)


def test_crops_per_image_multiply_a_passs_steps_and_reach_the_stage_settings():
    """3450 rows, paper batches: a pass is ⌈3450/16⌉ = 216 train steps; 4 crops per decoded row make it 863."""
    base = load_experiment("psnr-b", "paper", ["sweep={}"])
    four = load_experiment("psnr-b", "paper", ["sweep={}", "data.crops_per_image=4"])
    data = ResolvedData(train=dict.fromkeys(STAGES, FACTS), val={"v": "y"}, test={"t": "z"})
    for experiment, crops, train_steps, search_steps in ((base, 1, 216, 575), (four, 4, 863, 2300)):
        (trial,) = trials(experiment)
        settings = {s.stage: s for run in plan_trial(trial, data, "/storage", "sw").runs for s in run.settings.stages}
        assert settings["train"].optim.steps_per_epoch == train_steps  # ⌈3450 × k / 16⌉
        assert settings["search"].optim.steps_per_epoch == search_steps  # ⌈1725 × k / 3⌉ (χ1 and χ2 alike)
        assert all(s.crops_per_image == crops for s in settings.values())
    with pytest.raises(ExperimentError, match="crops_per_image"):
        load_experiment("psnr-b", "paper", ["data.crops_per_image=0"])
