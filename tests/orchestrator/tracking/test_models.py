"""Model upload (orchestrator.tracking.models) through a Tracker, against MLflow on SQLite."""

from __future__ import annotations

import numpy as np
import torch


def test_log_model_with_signature_round_trips(tracker, client):
    import mlflow.pytorch
    from mlflow.models import Model

    run = tracker.sweep_run("sw")
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 3, 3, padding=1)
    net.train()
    example = np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)
    model_id = tracker.log_model(run, net, input_example=example, name="derived", registered_model_name="tiny-sr")
    assert model_id is not None and net.training  # mode restored

    logged = client.get_logged_model(model_id)
    assert logged.source_run_id == run and logged.name == "derived" and str(logged.status).endswith("READY")
    assert [o.model_id for o in client.get_run(run).outputs.model_outputs] == [model_id]
    loaded = mlflow.pytorch.load_model(logged.artifact_location)
    x = torch.from_numpy(example)
    torch.testing.assert_close(loaded(x), net(x))
    mlmodel = Model.load(logged.artifact_location)
    assert (mlmodel.model_id, mlmodel.run_id) == (model_id, run)
    assert tuple(mlmodel.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 3, -1, -1)  # any size
    assert tuple(mlmodel.signature.outputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 3, -1, -1)
    version = client.get_model_version("tiny-sr", "1")
    assert (version.source, version.run_id) == (logged.artifact_location, run)
    assert '"version": 1' in client.get_logged_model(model_id).tags["mlflow.modelVersions"]
    torch.testing.assert_close(
        mlflow.pytorch.load_model(client.get_model_version_download_uri("tiny-sr", "1"))(x), net(x)
    )


def test_served_model_upscales_images_of_any_size(tracker, monkeypatch):
    """What `mlflow models serve` runs: the pyfunc flavour, loaded by URI, on sizes other than the example's."""
    import mlflow.pyfunc

    from search_space.derived import build_network
    from search_space.genotype import Genotype, OpChoice

    genotype = Genotype(backbone="B", path=(0,), cells=((OpChoice("conv3x3", 8),) * 5,), nf=8, scale=4, name="tiny")
    torch.manual_seed(0)
    net = build_network(genotype).eval()
    run = tracker.sweep_run("sw")
    example = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)  # what the trial logs with
    model_id = tracker.log_model(run, net, input_example=example)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracker.tracking_uri)  # models:/ resolves through the global URI
    served = mlflow.pyfunc.load_model(f"models:/{model_id}")
    rng = np.random.default_rng(1)
    for height, width in ((20, 28), (37, 23)):
        image = rng.random((1, 3, height, width), dtype=np.float32)
        out = served.predict(image)
        assert out.shape == (1, 3, 4 * height, 4 * width)
        with torch.no_grad():
            np.testing.assert_allclose(out, net(torch.from_numpy(image)).numpy(), atol=1e-6)
