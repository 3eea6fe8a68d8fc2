"""The trial's evaluate step (`orchestrator.trial._evaluate`) without Ray: what it logs, read back through MLflow's API.

A train-stage checkpoint of a tiny derived network is evaluated on the built-in test photographs (never
the validation ones, which only select); the trial run must then hold the network's and bicubic's PSNR,
every test image's scores as a table (also kept on the storage path), the comparison picture, the
genotype and a model whose signature takes any image size, in an experiment the UI opens on runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from mlflow.models import Model
from PIL import Image

from orchestrator.experiment import load_experiment
from orchestrator.plan import ResolvedData, TrialPlan
from orchestrator.tracking import Tracker
from orchestrator.trial import PER_IMAGE_FILE, TrialContext, _evaluate
from search_space.derived import build_network
from search_space.genotype import Genotype, OpChoice
from workers.shards.demo import DEMO_TEST
from workers.stage_outputs import StageResult

TINY = Genotype(
    backbone="B",
    path=(0,),
    cells=((OpChoice("conv3x3", 8),) * 5,),
    nf=8,
    scale=4,
    name="tiny",
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_evaluate_logs_baselines_picture_and_a_servable_model(demo_data, tmp_path):
    checkpoint = tmp_path / "checkpoint_000001"
    checkpoint.mkdir()
    torch.manual_seed(0)
    torch.save({"model": build_network(TINY).state_dict(), "epoch": 1}, checkpoint / "state.pt")
    (checkpoint / "genotype.json").write_text(TINY.to_json())

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "trilevel", retries=1, artifact_location=str(tmp_path / "artifacts"))
    sweep_run = tracker.sweep_run("sw")
    trial_run = tracker.trial_run(sweep_run, "sw", "default", params={}, tags={})
    experiment = load_experiment("table8", "tiny", ["stages.val_max_images=2", "sweep={}"])
    context = TrialContext(
        sweep="sw",
        sweep_run_id=sweep_run,
        storage=str(tmp_path / "runs"),
        tracking_uri=uri,
        mlflow_experiment="trilevel",
        experiment=experiment,
        data=ResolvedData(train={}, val={"demo-val": f"{demo_data}/val"}, test={"demo": f"{demo_data}/test"}),
        registered_model="sw-sr",
    )
    assert experiment.supervision.kind == "hr"
    plan = TrialPlan(
        trial_id="default",
        axes={},
        experiment=experiment,
        outputs=str(tmp_path / "runs"),
        runs=(),
        val={"demo-val": f"{demo_data}/val"},
        test={"demo": f"{demo_data}/test"},
    )
    trained = StageResult("train", str(checkpoint), None, {}, None)
    final = _evaluate(tracker, context, plan, trial_run, trained)
    assert tracker.pending == 0

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("trilevel")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    metrics = client.get_run(trial_run).data.metrics
    assert metrics["psnr_bicubic/demo"] == pytest.approx(final["psnr_bicubic/demo"])
    assert 20 < metrics["psnr_bicubic/demo"] < 32  # the ten demo test crops, MATLAB bicubic ×4
    assert {"psnr/demo", "ssim/demo", "ssim_bicubic/demo", "params_m", "gflops"} <= set(metrics)
    assert not any("teacher" in key for key in metrics)  # HR supervision: no teacher row

    artifacts = {f.path for f in client.list_artifacts(trial_run)}
    assert {"comparison.png", "genotype.json", "genotype.md", PER_IMAGE_FILE} <= artifacts
    table = json.loads(Path(client.download_artifacts(trial_run, PER_IMAGE_FILE, str(tmp_path / "dl"))).read_text())
    stored = json.loads((tmp_path / "runs" / "sw" / "stages" / "default" / PER_IMAGE_FILE).read_text())
    assert table["columns"] == stored["columns"] == ["set", "image_id", "network", "psnr", "ssim"]
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    for logged, kept in zip(rows, stored["rows"], strict=True):  # MLflow's table keeps 10 decimals
        assert [logged[k] for k in ("set", "image_id", "network")] == [kept[k] for k in ("set", "image_id", "network")]
        assert logged["psnr"] == pytest.approx(kept["psnr"], abs=1e-9)
    assert len(rows) == 2 * len(DEMO_TEST)  # ours and bicubic, every test image
    assert {r["image_id"] for r in rows} == {f"{name}_c256" for name in DEMO_TEST}  # test only, no val crop
    bicubic = [r["psnr"] for r in rows if r["network"] == "bicubic"]
    assert metrics["psnr_bicubic/demo"] == pytest.approx(sum(bicubic) / len(bicubic))
    picture = client.download_artifacts(trial_run, "comparison.png", str(tmp_path / "dl"))
    with Image.open(picture) as image:
        assert image.format == "PNG" and image.mode == "RGB" and image.height > image.width / 2  # two rows of crops

    outputs = client.get_run(trial_run).outputs.model_outputs
    models = {(logged := client.get_logged_model(o.model_id)).name: logged for o in outputs}
    assert set(models) == {"model", "image-model"}  # tensors in/out, and PNG in/out
    mlmodel = Model.load(models["model"].artifact_location)
    assert tuple(mlmodel.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 3, -1, -1)
    assert Model.load(models["image-model"].artifact_location).flavors["python_function"]["config"] == {"io": "png"}
    champion = client.get_model_version_by_alias("sw-sr", "champion")  # the only trial: the best one
    assert champion.source == models["image-model"].artifact_location and champion.run_id == trial_run
    assert float(champion.tags["trilevel.score"]) == pytest.approx(final["psnr/demo"])
