"""`mlflow models serve -m models:/NAME@champion` answers a real HTTP request with the ×4 PNG (issue 20).

End to end (one `mlflow models serve` subprocess, ~10-20 s): the best of two trials' image models is
registered by the tracker as a trial registers it (the alias `champion` on the better one), served with
``--env-manager local`` from this venv but with this project's packages made unimportable (what the
model needs is in the model: its ``code/`` folder), and sent a PNG as MLflow clients send binary
columns (base64 in ``dataframe_split``).
"""

from __future__ import annotations

import base64
import io
import os
import subprocess

import numpy as np
import requests
import torch
from PIL import Image

from orchestrator.tracking.champion import Score
from search_space.derived import build_network
from search_space.genotype import Genotype, OpChoice
from search_space.serving import png_to_png
from tests.servers import BIN, model_server, without_project_site

GENOTYPE = Genotype(backbone="B", path=(0,), cells=((OpChoice("conv3x3", 8),) * 5,), nf=8, scale=4, name="tiny")
EXAMPLE = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)


def test_served_champion_returns_the_x4_png_of_the_best_trial(tracker, client, tmp_path):
    sweep = tracker.sweep_run("sw")
    nets = {}
    for seed, (trial, psnr) in enumerate((("worse", 27.0), ("better", 28.0))):
        torch.manual_seed(seed)
        nets[trial] = build_network(GENOTYPE).eval()
        run = tracker.trial_run(sweep, "sw", trial, params={}, tags={})
        score = Score("psnr/demo", psnr, 0.01, trial, "sw")
        tracker.log_model(
            run,
            nets[trial],
            input_example=EXAMPLE,
            name="image-model",
            io="png",
            registered_model_name="served-sr",
            score=score,
        )
    assert client.get_model_version_by_alias("served-sr", "champion").tags["trilevel.trial"] == "better"

    pixels = np.random.default_rng(1).integers(0, 256, (23, 31, 3), dtype=np.uint8)  # not the example's size
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    png = buffer.getvalue()
    payload = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(png).decode("ascii")]]}}
    hidden = subprocess.run(  # the server's environment cannot import this package (the test can tell)
        [str(BIN / "python"), "-c", "import search_space"],
        env={**os.environ, "PYTHONPATH": str(without_project_site(tmp_path))},
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert hidden.returncode != 0 and "No module named 'search_space'" in hidden.stderr, hidden.stderr
    with model_server("models:/served-sr@champion", tracker.tracking_uri, tmp_path) as url:
        response = requests.post(f"{url}/invocations", json=payload, timeout=120)
    assert response.status_code == 200, response.text[:2000]
    (prediction,) = response.json()["predictions"]
    served = base64.b64decode(prediction["image"])
    image = Image.open(io.BytesIO(served))
    assert image.format == "PNG" and image.size == (4 * 31, 4 * 23)
    assert served == png_to_png(nets["better"], png) != png_to_png(nets["worse"], png)  # the champion's network
