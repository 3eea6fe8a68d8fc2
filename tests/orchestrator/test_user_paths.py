"""The paths a user takes first, end to end: `trilevel demo` on a laptop, then status, report, upscale and resume.

One real run, shared by the tests below: `trilevel demo` as a subprocess, cut to one trial of a few steps
(`--set`), with no `--address`, while a `ray start` head runs elsewhere on the machine and RAY_ADDRESS names it
(the session's cluster, tests/conftest.py). It must start a Ray of its own, train, print its summary and
report, and leave what the next commands read: `status` lists it and prints the upscale command of its best trial,
`report` writes the table, `upscale --model best:demo-table8` super-resolves with the model it trained, whose
PSNR is recomputed here from the saved output with scikit-image (not the project's metric code), and
`resume --set` refuses a field that would change results before starting anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from PIL import Image
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio

from tests.helpers import TINY

pytestmark = pytest.mark.xdist_group("cluster")  # its RAY_ADDRESS names the session cluster (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]
SWEEP, TRIAL = "demo-table8", "lambda_order=0.1"
TRIAL_RUNS = f"tags.`trilevel.kind` = 'trial' and tags.`trilevel.sweep` = '{SWEEP}'"
ONE_TRIAL = (
    *TINY,
    "sweep={stages.search.lambda_order: [0.1]}",
    *(
        f"stages.{stage}.{field}=1"
        for stage in ("pretrain", "search", "train")
        for field in ("epochs", "steps_per_epoch")
    ),
)


@pytest.fixture(scope="module")
def demo(cluster, tmp_path_factory) -> dict:
    """`trilevel demo` (one trial) with RAY_ADDRESS pointing at another head; what it printed and left."""
    root = tmp_path_factory.mktemp("demo")
    storage, uri = root / "runs", f"sqlite:///{root / 'mlflow.db'}"
    env = os.environ | {"RAY_ADDRESS": cluster["gcs"], "PYTHONPATH": str(ROOT)}
    sets = [item for override in ONE_TRIAL for item in ("--set", override)]
    command = [sys.executable, "-m", "orchestrator", "demo", "--storage", str(storage), "--tracking-uri", uri, *sets]
    for _ in range(2):  # a machine too busy for Ray's fixed 30 s raylet registration: nothing started, try again
        ran = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=600)
        said = ran.stdout + ran.stderr
        if "The current node timed out during startup" not in said:
            break
    assert ran.returncode == 0, said[-6000:]
    return {"root": root, "storage": storage, "uri": uri, "out": ran.stdout, "said": said}


def test_the_demo_runs_on_a_ray_of_its_own_beside_another_head_and_summarises(demo):
    # before address="local", this ray.init attached to the head RAY_ADDRESS names and stopped with "When
    # connecting to an existing cluster, num_cpus and num_gpus must not be provided"
    driver_log = (demo["storage"] / SWEEP / "logs" / "driver.log").read_text()
    assert "Started a local Ray instance" in driver_log, driver_log[-3000:]
    out = demo["out"]
    assert f"Sweep {SWEEP}: {TRIAL} TERMINATED" in out, out
    assert f"Storage: {demo['storage']}/{SWEEP}" in out
    assert "| Bicubic" in out and "Δ vs bicubic" in out, out  # the report, printed after the summary
    assert "Traceback" not in demo["said"]


def test_status_lists_the_demo_and_names_the_upscale_command_of_its_best_trial(demo):
    from orchestrator.cli.report import report, status

    listed = CliRunner().invoke(status, ["--tracking-uri", demo["uri"]])
    assert listed.exit_code == 0 and SWEEP in listed.output, listed.output
    shown = CliRunner().invoke(status, [SWEEP, "--tracking-uri", demo["uri"]])
    assert shown.exit_code == 0, shown.output
    assert f"Sweep {SWEEP}: 1/1 trials finished" in shown.output and TRIAL in shown.output
    client = MlflowClient(demo["uri"])
    (trial,) = client.search_runs([client.get_experiment_by_name("trilevel").experiment_id], TRIAL_RUNS)
    assert f"trilevel upscale --model {trial.info.run_id} --tracking-uri {demo['uri']}" in shown.output, shown.output
    out = demo["root"] / "report"
    written = CliRunner().invoke(report, [SWEEP, "--storage", str(demo["storage"]), "--out", str(out)])
    assert written.exit_code == 0, written.output
    assert {"pareto.png"} <= {p.name for p in out.iterdir()}, list(out.iterdir())


def test_upscale_best_uses_the_trained_model_and_its_psnr_is_what_the_trial_reported(demo, tmp_path):
    """Each test photograph's PSNR, recomputed from the saved upscale output with scikit-image (BasicSR's
    convention: Y of MATLAB's rgb2ycbcr, `scale` pixels cropped from each border, 8-bit SR), equals what the
    trial reported for it, and their mean is the trial's psnr/demo."""
    from orchestrator.cli.upscale import upscale
    from workers.pipeline import decoded_rows

    rows = decoded_rows(str(demo["storage"] / "_data" / "demo" / "test"), 4)  # the photographs the trial reports
    (tmp_path / "lr").mkdir()
    for row in rows:
        Image.fromarray(row["lr"]).save(tmp_path / "lr" / f"{row['image_id']}.png")
    args = ["--model", f"best:{SWEEP}", "--tracking-uri", demo["uri"], str(tmp_path / "lr"), "--out", str(tmp_path)]
    done = CliRunner().invoke(upscale, args)
    assert done.exit_code == 0, done.output
    assert f"Using the best trial of {SWEEP}: {TRIAL}" in done.stderr

    def y(image: np.ndarray) -> np.ndarray:
        return rgb2ycbcr(image)[4:-4, 4:-4, 0]

    recomputed = {}
    for row in rows:
        with Image.open(tmp_path / f"{row['image_id']}_x4.png") as saved:
            sr = np.asarray(saved.convert("RGB"))
        assert sr.shape == row["hr"].shape
        recomputed[row["image_id"]] = peak_signal_noise_ratio(y(row["hr"]), y(sr), data_range=255)
    reported = json.loads((demo["storage"] / SWEEP / "stages" / TRIAL / "per_image.json").read_text())
    ours = {r["image_id"]: r["psnr"] for r in reported["rows"] if r["set"] == "demo" and r["network"] == "ours"}
    assert ours.keys() == recomputed.keys() and len(ours) == len(rows) > 1
    for image_id, psnr in recomputed.items():
        assert psnr == pytest.approx(ours[image_id], abs=0.01), image_id
    client = MlflowClient(demo["uri"])
    (trial,) = client.search_runs([client.get_experiment_by_name("trilevel").experiment_id], TRIAL_RUNS)
    assert np.mean(list(recomputed.values())) == pytest.approx(trial.data.metrics["psnr/demo"], abs=0.01)


def test_resume_refuses_a_change_that_would_alter_results_naming_what_it_takes(demo):
    """(A change that cannot alter results is taken and finishes the sweep: tests/reliability/test_out_of_memory.py.)"""
    from orchestrator.cli.run import resume

    refused = CliRunner().invoke(resume, [SWEEP, "--storage", str(demo["storage"]), "--set", "seed=3"])
    assert refused.exit_code == 1, refused.output
    assert "seed" in refused.output and "resources.max_concurrent_trials" in refused.output, refused.output
