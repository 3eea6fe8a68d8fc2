"""`--model best:SWEEP`, `trilevel export` and ONNX-runtime latency, against a sweep tracked in real MLflow (SQLite).

The sweep is made the way a trial makes it, through :class:`orchestrator.tracking.Tracker`: a sweep run,
two finished trial runs with their evaluation metrics (network, bicubic) and their logged models, and an
unfinished one, so "best" has a real choice to make. The exported ONNX file runs in ONNX Runtime on a
photograph from scikit-image and must match PyTorch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from mlflow import MlflowClient
from PIL import Image
from skimage import data as photos

from orchestrator.cli.arch import arch
from orchestrator.cli.export import export
from orchestrator.cli.upscale import upscale
from orchestrator.export import ExportError, export_onnx, onnx_latency, onnx_session, run_onnx
from orchestrator.tracking import Tracker
from orchestrator.upscale.errors import UpscaleError
from orchestrator.upscale.model_source import load_model, open_model
from search_space.derived import build_network
from search_space.genotype import Genotype, OpChoice
from search_space.latency import median_seconds

TINY = Genotype(
    backbone="B",
    path=(0,),
    cells=((OpChoice("conv3x3", 8),) * 4 + (OpChoice("dwsblock", 8),),),
    nf=8,
    scale=4,
    name="tiny",
)
EXAMPLE = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)  # what a trial logs its model with
LAMBDA = "trilevel.axis.stages.search.lambda_order"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny convolutions on 2 shared cores: a second intra-op thread only spins."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _net(seed: int):
    torch.manual_seed(seed)
    return build_network(TINY).eval()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> dict:
    """Sweep "sw": λ=0 (PSNR 27.9), λ=0.1 (PSNR 28.6, the best) and λ=0.01 (still running, no PSNR)."""
    root = tmp_path_factory.mktemp("export")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracker = Tracker(uri, "trilevel", retries=1, artifact_location=str(root / "artifacts"))
    sweep_run = tracker.sweep_run("sw")
    runs, nets = {}, {}
    for seed, (value, psnr) in enumerate((("0", 27.9), ("0.1", 28.6), ("0.01", None))):
        trial = f"lambda_order={value}"
        run = tracker.trial_run(sweep_run, "sw", trial, params={}, tags={LAMBDA: value})
        nets[value] = _net(seed)
        if psnr is not None:
            metrics = {"psnr/demo": psnr, "psnr_bicubic/demo": 28.17, "gflops": 0.05, "params_m": 0.01}
            tracker.log_metrics(run, metrics)
            tracker.log_model(run, nets[value], input_example=EXAMPLE)
            tracker.finish(run)
        runs[value] = run
    tracker.finish(sweep_run)
    assert tracker.pending == 0
    return {"uri": uri, "runs": runs, "nets": nets, "root": root}


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A real photograph (scikit-image's cat, 300×451), as a PNG file and as a float32 1×3×H×W batch."""
    image = photos.chelsea()
    path = tmp_path_factory.mktemp("photo") / "chelsea.png"
    Image.fromarray(image).save(path)
    return path, (image.astype(np.float32) / 255.0).transpose(2, 0, 1)[None].copy()


# --- best:SWEEP ------------------------------------------------------------------------------------------------
def test_best_names_the_finished_trial_with_the_highest_psnr(sweep):
    loaded = open_model("best:sw", sweep["uri"])
    assert loaded.run_id == sweep["runs"]["0.1"] and loaded.scale == 4
    assert loaded.note == (
        f"best trial of sw: lambda_order=0.1, run {sweep['runs']['0.1']} "
        "(PSNR demo 28.60 dB vs bicubic 28.17 dB (+0.43))"
    )
    x = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), sweep["nets"]["0.1"](x), rtol=0, atol=0)
    model, scale = load_model("best:sw", sweep["uri"])  # the (model, scale) form every caller had
    assert scale == 4 and model.genotype == TINY


def test_best_of_nothing_is_a_clear_error(sweep, tmp_path):
    with pytest.raises(UpscaleError, match=r"model source best:nope: no tracked runs for sweep 'nope'"):
        open_model("best:nope", sweep["uri"])
    with pytest.raises(UpscaleError, match=r"name the sweep, e\.g\. best:demo-table8"):
        open_model("best:", sweep["uri"])
    with pytest.raises(UpscaleError, match="no database at"):
        open_model("best:sw", f"sqlite:///{tmp_path / 'missing.db'}")
    assert not (tmp_path / "missing.db").exists()
    tracker = Tracker(sweep["uri"], "trilevel", retries=1)
    running = tracker.trial_run(tracker.sweep_run("early"), "early", "lambda_order=0", params={}, tags={})
    assert running
    with pytest.raises(UpscaleError, match=r"none of the 1 trial\(s\) of sweep 'early' has finished with a PSNR yet"):
        open_model("best:early", sweep["uri"])


def test_upscale_takes_best(sweep, photo, tmp_path):
    path, _ = photo
    args = ["--model", "best:sw", "--tracking-uri", sweep["uri"], str(path), "--out", str(tmp_path / "sr")]
    result = CliRunner().invoke(upscale, args)
    assert result.exit_code == 0, result.output
    assert f"Using the best trial of sw: lambda_order=0.1, run {sweep['runs']['0.1']}" in result.stderr
    with Image.open(tmp_path / "sr" / "chelsea_x4.png") as out:
        assert out.size == (451 * 4, 300 * 4)


# --- export ----------------------------------------------------------------------------------------------------
def test_exported_onnx_matches_pytorch_on_a_photograph_at_any_size(sweep, photo, tmp_path):
    _, lr = photo
    out = tmp_path / "model.onnx"
    args = ["--model", "best:sw", "--format", "onnx", "--out", str(out), "--tracking-uri", sweep["uri"], "--log"]
    result = CliRunner().invoke(export, args)
    assert result.exit_code == 0, result.output
    assert "input lr [batch, 3, height, width] → sr [batch, 3, 4*height, 4*width]" in result.stdout
    run = sweep["runs"]["0.1"]
    assert f"Logged to MLflow run {run} as export/model.onnx" in result.stdout

    session = onnx_session(out)
    net = sweep["nets"]["0.1"]
    for crop in (lr, lr[:, :, :97, :131]):  # the whole photo, and an odd-sized part of it
        got = run_onnx(session, crop)
        with torch.no_grad():
            expected = net(torch.from_numpy(crop)).numpy()
        assert got.shape == expected.shape == (1, 3, crop.shape[2] * 4, crop.shape[3] * 4)
        assert np.max(np.abs(got - expected)) <= 1e-4

    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["trilevel.scale"] == "4" and Genotype.from_json(meta["trilevel.genotype"]) == TINY
    logged = MlflowClient(tracking_uri=sweep["uri"]).list_artifacts(run, "export")
    assert [(f.path, f.file_size) for f in logged] == [("export/model.onnx", out.stat().st_size)]


def test_export_errors_are_messages(sweep, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    torch.save({"model": sweep["nets"]["0"].state_dict()}, checkpoint / "state.pt")
    (checkpoint / "genotype.json").write_text(TINY.to_json())
    runner = CliRunner()
    result = runner.invoke(export, ["--model", str(checkpoint), "--out", str(tmp_path / "m.onnx"), "--log"])
    assert (
        result.exit_code == 1
        and "--log: the model" in result.output
        and "did not come from an MLflow run" in result.output
    )
    assert not (tmp_path / "m.onnx").exists()
    result = runner.invoke(export, ["--model", str(checkpoint), "--out", str(tmp_path / "plain.onnx")])
    assert result.exit_code == 0, result.output  # without --log a checkpoint is fine
    result = runner.invoke(export, ["--model", str(checkpoint), "--format", "tflite", "--out", "m.tflite"])
    assert result.exit_code == 2 and "'tflite' is not 'onnx'" in result.output
    with pytest.raises(ExportError, match="is a directory"):
        export_onnx(sweep["nets"]["0"], tmp_path, 4)
    assert "Traceback" not in result.output


def test_a_model_that_does_not_export_is_named(tmp_path):
    class DataDependent(torch.nn.Module):  # control flow on values: torch.export cannot trace it
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.mean() > 0.5:
                return x.repeat_interleave(4, -1).repeat_interleave(4, -2)
            return x

    with pytest.raises(ExportError, match=r"ONNX export failed \("):
        export_onnx(DataDependent(), tmp_path / "never.onnx", 4)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


# --- latency -----------------------------------------------------------------------------------------------------
def test_arch_show_times_pytorch_and_onnx_runtime(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(TINY.to_json())
    result = CliRunner().invoke(arch, ["show", str(path), "--lr-size", "16x16", "--latency-repeats", "1"])
    assert result.exit_code == 0, result.output
    assert "CPU latency, one 16×16 LR input: " in result.output and " ms (ONNX Runtime)" in result.output
    result = CliRunner().invoke(arch, ["show", str(path), "--lr-size", "16x16", "--latency-repeats", "1", "--no-onnx"])
    assert "ONNX" not in result.output and " ms (PyTorch)" in result.output
    assert onnx_latency(_net(0), 4, (16, 16), repeats=1) > 0


def test_every_runtime_is_timed_by_one_rule():
    calls = []
    assert median_seconds(lambda: calls.append(1), repeats=3) >= 0
    assert len(calls) == 4  # one warm-up pass, then the timed ones
    with pytest.raises(ValueError, match="repeats must be >= 1, got 0"):
        median_seconds(lambda: None, repeats=0)
