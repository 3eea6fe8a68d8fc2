"""Model upload (orchestrator.tracking.models, .champion) through a Tracker, against MLflow on SQLite.

A logged model is weights (safetensors) + genotype JSON + the ``search_space`` code, loaded by MLflow's
pyfunc through ``search_space.serving``: no file of it is a pickle.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from orchestrator.tracking.champion import CHAMPION_ALIAS, Score
from search_space.derived import build_network
from search_space.genotype import Genotype, OpChoice

GENOTYPE = Genotype(backbone="B", path=(0,), cells=((OpChoice("conv3x3", 8),) * 5,), nf=8, scale=4, name="tiny")
EXAMPLE = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)  # what a trial logs with


def _net(seed: int = 0):
    torch.manual_seed(seed)
    return build_network(GENOTYPE).eval()


def _png(height: int, width: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _no_pickles(directory: str) -> None:
    """No file of the model is a pickle (protocol 2+ pickles start with 0x80) or a torch.save archive."""
    for path in Path(directory).rglob("*"):
        if path.is_file():
            head = path.read_bytes()[:4]
            assert not head.startswith(b"\x80") and head != b"PK\x03\x04", f"{path} looks pickled"


def test_tensor_model_round_trips_through_pyfunc_at_any_size(tracker, client):
    import mlflow.pyfunc
    from mlflow.models import Model

    run = tracker.sweep_run("sw")
    net = _net()
    net.train()
    model_id = tracker.log_model(run, net, input_example=EXAMPLE, name="derived", registered_model_name="tiny-sr")
    assert model_id is not None and net.training  # mode restored

    logged = client.get_logged_model(model_id)
    assert logged.source_run_id == run and logged.name == "derived" and str(logged.status).endswith("READY")
    assert [o.model_id for o in client.get_run(run).outputs.model_outputs] == [model_id]
    _no_pickles(logged.artifact_location)
    mlmodel = Model.load(logged.artifact_location)
    assert (mlmodel.model_id, mlmodel.run_id) == (model_id, run)
    assert mlmodel.flavors["python_function"]["loader_module"] == "search_space.serving"
    assert set(mlmodel.flavors) == {"python_function", "trilevel"}  # no pytorch (pickle/pt2) flavour
    assert tuple(mlmodel.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 3, -1, -1)  # any size
    assert tuple(mlmodel.signature.outputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 3, -1, -1)
    assert (Path(logged.artifact_location) / "code" / "search_space" / "serving.py").is_file()  # ships its code
    requirements = (Path(logged.artifact_location) / "requirements.txt").read_text()
    assert "safetensors==" in requirements and "cloudpickle" not in requirements

    served = mlflow.pyfunc.load_model(logged.artifact_location)
    net.eval()
    for height, width in ((20, 28), (37, 23)):
        image = np.random.default_rng(height).random((1, 3, height, width), dtype=np.float32)
        out = served.predict(image)
        assert out.shape == (1, 3, 4 * height, 4 * width)
        with torch.no_grad():
            np.testing.assert_allclose(out, net(torch.from_numpy(image)).numpy(), atol=1e-6)
    version = client.get_model_version("tiny-sr", "1")  # no score given: registered as asked
    assert (version.source, version.run_id) == (logged.artifact_location, run)
    assert '"version": 1' in client.get_logged_model(model_id).tags["mlflow.modelVersions"]


def test_image_model_takes_png_bytes_of_any_size_and_returns_x4_png(tracker, client):
    import mlflow.pyfunc

    from search_space.serving import png_to_png

    run = tracker.sweep_run("sw")
    net = _net()
    model_id = tracker.log_model(run, net, input_example=EXAMPLE, name="image-model", io="png")
    location = client.get_logged_model(model_id).artifact_location
    _no_pickles(location)
    served = mlflow.pyfunc.load_model(location)
    images = [_png(9, 13, 1), _png(16, 5, 2)]
    out = served.predict({"image": images})  # MLflow turns it into the signature's table
    for encoded, result in zip(images, (row["image"] for row in out), strict=True):
        lr, sr = Image.open(io.BytesIO(encoded)), Image.open(io.BytesIO(result))
        assert sr.format == "PNG" and sr.mode == "RGB" and sr.size == (4 * lr.size[0], 4 * lr.size[1])
        assert result == png_to_png(net, encoded)
    with pytest.raises(ValueError, match=r"image\[0\]: not an image Pillow can read"):
        served.predict({"image": [b"not a png"]})


def test_log_model_refuses_a_module_without_genotype(tracker):
    with pytest.raises(TypeError, match="needs a DerivedNetwork"):
        tracker.log_model(tracker.sweep_run("sw"), torch.nn.Conv2d(3, 3, 3), input_example=EXAMPLE)


def test_champion_alias_follows_the_best_trial_and_only_better_ones_register(tracker, client):
    """Scores as best:SWEEP ranks them: PSNR on the first set (0.01 dB), then fewer GFLOPs."""
    sweep = tracker.sweep_run("sw")
    net = _net()
    logged = {}
    for trial, psnr, gflops in (("a", 28.00, 0.5), ("b", 27.50, 0.1), ("c", 28.30, 0.5), ("d", 28.301, 0.2)):
        run = tracker.trial_run(sweep, "sw", trial, params={}, tags={})
        metrics = {"psnr/Set14": 1.0, "psnr/Set5": psnr, "gflops": gflops, "psnr_bicubic/Set5": 26.0}
        score = Score.of_metrics(metrics, trial, "sw")
        assert score is not None and score.key == "psnr/Set5"  # Set5 before Set14, as the report orders sets
        assert Score.from_dict(score.to_dict()) == score  # what a queue kept on storage holds
        logged[trial] = tracker.log_model(
            run,
            net,
            input_example=EXAMPLE,
            name="image-model",
            io="png",
            registered_model_name="ranked-sr",
            score=score,
        )
        champion = client.get_model_version_by_alias("ranked-sr", CHAMPION_ALIAS)
        assert champion.tags["trilevel.trial"] == {"a": "a", "b": "a", "c": "c", "d": "d"}[trial]
    versions = client.search_model_versions("name = 'ranked-sr'")
    assert sorted(v.tags["trilevel.trial"] for v in versions) == ["a", "c", "d"]  # b was worse: not registered
    # d ties c at 0.01 dB with fewer GFLOPs
    assert champion.source == client.get_logged_model(logged["d"]).artifact_location


def test_a_sweeps_end_puts_a_raced_alias_back_on_the_best_version(tracker, client, unreachable, caplog):
    """Two trials that finish at once can leave the worse one as champion; the driver settles it at the end."""
    from mlflow import MlflowClient

    from orchestrator.tracking.champion import settle_champion_quietly

    sweep = tracker.sweep_run("sw")
    net = _net()
    for trial, psnr in (("low", 27.0), ("high", 28.0)):
        run = tracker.trial_run(sweep, "sw", trial, params={}, tags={})
        tracker.log_model(
            run, net, input_example=EXAMPLE, io="png", registered_model_name="raced-sr", score=Score("psnr/x", psnr)
        )
    client.set_registered_model_alias("raced-sr", CHAMPION_ALIAS, "1")  # what a lost race leaves: the worse one
    settle_champion_quietly(client, "raced-sr")
    assert str(client.get_model_version_by_alias("raced-sr", CHAMPION_ALIAS).version) == "2"
    settle_champion_quietly(MlflowClient(tracking_uri=unreachable, registry_uri=unreachable), "raced-sr")
    assert "could not check its alias champion" in caplog.text  # an outage at the end: a warning, no error
