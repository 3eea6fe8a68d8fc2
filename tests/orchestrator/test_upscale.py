"""`trilevel upscale` and orchestrator.upscale: every model source, tiling, image modes, files and the CLI.

One tiny derived network (nf 16, one RiR block of conv 3×3, ×4) is saved the two ways a trial
leaves it: a train-stage checkpoint directory, and a run with its model logged by the trial's
``Tracker`` (weights + genotype) and registered. Beside them, models this package must refuse to
load, each planted where a source can reach it: a pickled PyTorch model whose unpickling would create
a marker file (as a logged model, as MLflow 2 run artifacts, registered under an alias, and as the
best trial of a sweep), and a ``torch.export`` (pt2) model. MLflow is real, on SQLite, created once
per module (its schema migrations take seconds).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from orchestrator.cli.export import export
from orchestrator.cli.upscale import upscale
from orchestrator.upscale.errors import UpscaleError
from orchestrator.upscale.files import collect_images, upscale_files
from orchestrator.upscale.model_source import load_model
from orchestrator.upscale.tiled import InputConversionWarning, receptive_radius, upscale_image, upscale_tensor
from search_space.derived import DerivedNetwork, build_network
from search_space.genotype import Genotype, OpChoice

TINY = Genotype(
    backbone="B",
    path=(0,),
    cells=((OpChoice("conv3x3", 8),) * 4 + (OpChoice("conv3x3", 16),),),
    nf=16,
    scale=4,
    name="tiny",
)
EXAMPLE = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny convolutions on 2 shared cores: a second intra-op thread only spins (10-50× slower wall time)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny_net() -> DerivedNetwork:
    torch.manual_seed(0)
    return build_network(TINY).eval()


def _save_checkpoint(net: DerivedNetwork, directory: Path) -> Path:
    directory.mkdir(parents=True)
    torch.save({"model": net.state_dict(), "epoch": 3}, directory / "state.pt")
    (directory / "genotype.json").write_text(net.genotype.to_json())
    return directory


class _Planted(torch.nn.Module):
    """A module whose unpickling creates `marker` (what a hostile pickle could do instead: anything)."""

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.marker = str(marker)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def __reduce_ex__(self, protocol):
        return (open, (self.marker, "w"))


def _log_dir_as_model(client, run_id: str, experiment: str, directory: Path) -> str:
    """An MLflow model directory uploaded as the run's logged model "model"; its id."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    created = client.create_logged_model(experiment, name="model", source_run_id=run_id)
    client.log_model_artifacts(created.model_id, str(directory))
    client.log_outputs(run_id, [LoggedModelOutput(created.model_id, step=0)])
    client.finalize_logged_model(created.model_id, LoggedModelStatus.READY)
    return created.model_id


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    """The network, its checkpoint dir, its MLflow run / registered model, and planted models, in a SQLite store."""
    import mlflow
    import mlflow.pytorch
    from mlflow import MlflowClient

    from orchestrator.tracking import Tracker

    root = tmp_path_factory.mktemp("upscale-models")
    net = _tiny_net()
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("upscale", artifact_location=str(root / "artifacts"))

    # mlflow.pytorch.log_model needs the global tracking URI: set it for this block only (env, restored).
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        assert mlflow.get_tracking_uri() == uri, "some test set a global tracking URI"
        with mlflow.start_run(experiment_id=experiment) as run:
            pt2 = mlflow.pytorch.log_model(net, name="model", input_example=EXAMPLE, pip_requirements=["torch"])
            mlflow.log_text(TINY.to_json(), "genotype.json")
        pt2_run = run.info.run_id

    tracked_run = client.create_run(experiment).info.run_id
    tracker = Tracker(uri, "upscale", retries=1)
    model_id = tracker.log_model(tracked_run, net, input_example=EXAMPLE, registered_model_name="tiny-sr")
    assert model_id and tracker.pending == 0
    client.set_registered_model_alias("tiny-sr", "champion", "1")
    empty_run = client.create_run(experiment).info.run_id

    marker = root / "UNPICKLED"  # created by unpickling the planted model, and by nothing else
    planted = root / "planted"
    mlflow.pytorch.save_model(_Planted(marker), planted, serialization_format="pickle", pip_requirements=["torch"])
    assert not marker.exists()
    planted_run = client.create_run(experiment).info.run_id
    planted_id = _log_dir_as_model(client, planted_run, experiment, planted)
    client.create_registered_model("planted")
    client.create_model_version("planted", client.get_logged_model(planted_id).artifact_location, planted_run)
    client.set_registered_model_alias("planted", "champion", "1")
    legacy_run = client.create_run(experiment).info.run_id  # MLflow 2 style: the model as run artifacts
    client.log_artifacts(legacy_run, str(planted), "model")
    # the best trial of sweep "evil": tagged with the sweep, a PSNR above everyone's, FINISHED
    evil = Tracker(uri, "upscale", retries=1)
    trial_run = evil.trial_run(evil.sweep_run("evil"), "evil", "lambda_order=0", params={}, tags={})
    evil.log_metrics(trial_run, {"psnr/demo": 99.0, "gflops": 0.01})
    _log_dir_as_model(client, evil.resolve(trial_run), experiment, planted)
    evil.finish(trial_run)
    assert evil.pending == 0
    return {
        "net": net,
        "uri": uri,
        "checkpoint": _save_checkpoint(net, root / "checkpoint_000003"),
        "pt2_run": pt2_run,
        "tracked_run": tracked_run,
        "empty_run": empty_run,
        "model_id": model_id,
        "pt2_dir": Path(client.get_logged_model(pt2.model_id).artifact_location),
        "marker": marker,
        "planted": planted,
        "planted_run": planted_run,
        "planted_id": planted_id,
        "legacy_run": legacy_run,
    }


@pytest.fixture
def no_global_mlflow(monkeypatch, tmp_path) -> Path:
    """Point MLflow's global URI at a database that must never be created: loading may use only ours."""
    bogus = tmp_path / "global" / "never.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{bogus}")
    return bogus


def _image(rng: np.random.Generator, height: int, width: int, mode: str = "RGB") -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode=mode)


# ------------------------------------------------------------------------------------------------------------
# Sources


def test_every_source_gives_the_same_network(saved, no_global_mlflow):
    x = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = saved["net"](x)
    sources = [
        str(saved["checkpoint"]),
        saved["tracked_run"],
        f"runs:/{saved['tracked_run']}/model",
        "models:/tiny-sr/1",
        "models:/tiny-sr@champion",
        "models:/tiny-sr/latest",
        f"models:/{saved['model_id']}",
    ]
    for source in sources:
        model, scale = load_model(source, saved["uri"])
        assert scale == 4, source
        assert isinstance(model, DerivedNetwork) and not model.training, source
        assert model.genotype == TINY, source
        with torch.no_grad():
            assert torch.equal(model(x), expected), source
    assert not no_global_mlflow.parent.exists()  # MLflow's global URI was never opened


def test_a_planted_pickled_model_is_refused_from_every_source_and_never_unpickled(saved, tmp_path, no_global_mlflow):
    """Issue 19: anyone who can write to the tracking server can plant a model; loading one must run nothing."""
    pickled = saved["planted"] / "data" / "model.pth"
    sources = [
        saved["planted_run"],  # its logged model
        f"runs:/{saved['planted_run']}/model",
        f"models:/{saved['planted_id']}",
        "models:/planted/1",
        "models:/planted@champion",
        saved["legacy_run"],  # MLflow 2 style run artifacts
        "best:evil",  # the sweep's best trial by PSNR
        str(saved["planted"]),  # a local model directory
    ]
    for source in sources:
        with pytest.raises(UpscaleError, match="refusing to load a PyTorch model saved as pickle") as err:
            load_model(source, saved["uri"], mlflow_experiment="upscale")
        assert f"model source {source}" in str(err.value) and "model.pth" in str(err.value), source
        assert not saved["marker"].exists(), f"{source} was unpickled"
    for source in (saved["pt2_run"], str(saved["pt2_dir"])):  # torch.export archives hold pickles too
        with pytest.raises(UpscaleError, match="refusing to load a PyTorch model saved as pt2"):
            load_model(source, saved["uri"])
    # a train-stage checkpoint on shared storage whose state.pt is the plant: read as data, refused
    planted_checkpoint = tmp_path / "checkpoint_000009"
    planted_checkpoint.mkdir()
    torch.save({"model": _Planted(saved["marker"]), "epoch": 9}, planted_checkpoint / "state.pt")
    (planted_checkpoint / "genotype.json").write_text(TINY.to_json())
    with pytest.raises(UpscaleError, match=r"state\.pt: refusing to unpickle arbitrary objects"):
        load_model(str(planted_checkpoint))
    assert not saved["marker"].exists()
    _write_inputs(tmp_path / "in")
    runner = CliRunner()
    for command, args in (
        (upscale, [str(tmp_path / "in"), "--out", str(tmp_path / "out")]),
        (export, ["--out", str(tmp_path / "sr.onnx")]),
    ):
        result = runner.invoke(
            command, ["--model", "best:evil", "--tracking-uri", saved["uri"], "--mlflow-experiment", "upscale", *args]
        )
        assert result.exit_code == 1 and "refusing to load a PyTorch model saved as pickle" in result.output
        assert "Traceback" not in result.output and not saved["marker"].exists()
    assert not (tmp_path / "out").exists() and not (tmp_path / "sr.onnx").exists()
    torch.load(pickled, weights_only=False)  # the plant is live: unpickling it does create the marker
    assert saved["marker"].exists()
    saved["marker"].unlink()


def test_a_tampered_weights_folder_is_a_named_error(saved, tmp_path):
    import shutil

    from mlflow import MlflowClient

    local = Path(
        shutil.copytree(
            MlflowClient(saved["uri"]).get_logged_model(saved["model_id"]).artifact_location, tmp_path / "m"
        )
    )
    weights = local / "data" / "weights"
    (weights / "model.safetensors").write_bytes(b"\x80\x04garbage")
    with pytest.raises(UpscaleError, match=r"model\.safetensors: not a safetensors file"):
        load_model(str(local))
    mlmodel = (local / "MLmodel").read_text().replace("data: data/weights", "data: ../../..")
    (local / "MLmodel").write_text(mlmodel)
    with pytest.raises(UpscaleError, match="is not a folder inside the model"):
        load_model(str(local))


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("trilevel-b-psnr", "is a genotype: it has no trained weights"),
        ("./no/such/checkpoint", "no such directory"),
        ("yesterday's model", "not recognised"),
        ("0123456789abcdef0123456789abcdef", "no MLflow run 0123456789abcdef0123456789abcdef"),
        ("models:/nope/1", "models:/nope/1"),
        ("models:/tiny-sr/Production", "stages are not supported"),
    ],
)
def test_bad_sources_are_named(saved, source, message, no_global_mlflow):
    with pytest.raises(UpscaleError, match="model source") as err:
        load_model(source, saved["uri"])
    assert message in str(err.value)


def test_run_without_model_and_broken_checkpoints(saved, tmp_path, no_global_mlflow):
    with pytest.raises(UpscaleError, match=f"run {saved['empty_run']} has no logged model named 'model'"):
        load_model(saved["empty_run"], saved["uri"])
    with pytest.raises(UpscaleError, match="no database at"):
        load_model(saved["tracked_run"], f"sqlite:///{tmp_path}/missing.db")
    assert not (tmp_path / "missing.db").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(UpscaleError, match=r"no state\.pt or genotype\.json here"):
        load_model(str(tmp_path / "empty"))
    wrong = _save_checkpoint(
        build_network(Genotype(**{**vars(TINY), "nf": 8, "cells": ((OpChoice("conv3x3", 8),) * 5,)})),
        tmp_path / "wrong",
    )
    (wrong / "genotype.json").write_text(TINY.to_json())  # weights of another network
    with pytest.raises(UpscaleError, match="cannot load it as a train-stage checkpoint"):
        load_model(str(wrong))


# ------------------------------------------------------------------------------------------------------------
# Inference


def test_tiled_equals_untiled_with_enough_overlap(saved):
    net = saved["net"]
    radius = receptive_radius(net)
    assert radius == 7  # stem + 5 convs + head, 3×3 each
    lr = torch.rand(1, 3, 28, 22, generator=torch.Generator().manual_seed(2))
    whole = upscale_tensor(net, lr, 4, tile=0)
    assert whole.shape == (1, 3, 112, 88)
    tiled = upscale_tensor(net, lr, 4, tile=10, overlap=radius)  # 3×3 tiles, the last ones narrower
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)
    seams = upscale_tensor(net, lr, 4, tile=10, overlap=0)
    assert (seams - whole).abs().max() > 1e-3  # the test can tell

    image = _image(np.random.default_rng(3), 20, 18)
    big = upscale_image(net, image, 4, tile=0)
    small_tiles = upscale_image(net, image, 4, tile=8, overlap=8)
    assert big.size == (72, 80) and big.mode == "RGB"
    diff = np.abs(np.asarray(big, dtype=int) - np.asarray(small_tiles, dtype=int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # equal but for a rare rounding tie


def test_output_is_rounded_and_clamped_uint8(saved):
    image = _image(np.random.default_rng(4), 9, 7)
    out = upscale_image(saved["net"], image, 4)
    lr = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = saved["net"](lr)[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert out.size == (28, 36)
    np.testing.assert_array_equal(np.asarray(out), expected)


def test_non_rgb_inputs_are_converted_and_said_so(saved):
    rng = np.random.default_rng(5)
    rgba = _image(rng, 12, 10, "RGBA")
    with pytest.warns(InputConversionWarning, match="alpha channel dropped"):
        from_rgba = upscale_image(saved["net"], rgba, 4)
    assert from_rgba.mode == "RGB" and from_rgba.size == (40, 48)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(np.asarray(upscale_image(saved["net"], rgba.convert("RGB"), 4)), np.asarray(from_rgba))

    gray = _image(rng, 12, 10, "L")
    with pytest.warns(InputConversionWarning, match="grayscale"):
        from_gray = upscale_image(saved["net"], gray, 4)
    assert from_gray.mode == "RGB" and from_gray.size == (40, 48)

    sixteen = Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257)  # 16-bit, same picture
    with pytest.warns(InputConversionWarning, match="16-bit"):
        from_16 = upscale_image(saved["net"], sixteen, 4)
    assert np.array_equal(np.asarray(from_16), np.asarray(from_gray))


# ------------------------------------------------------------------------------------------------------------
# Files


def _write_inputs(folder: Path) -> None:
    rng = np.random.default_rng(6)
    folder.mkdir()
    _image(rng, 10, 12).save(folder / "a.png")
    _image(rng, 8, 6, "RGBA").save(folder / "b.PNG")
    _image(rng, 16, 8).save(folder / "c.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image")


def test_folders_and_files_become_pngs(saved, tmp_path):
    _write_inputs(tmp_path / "in")
    rng = np.random.default_rng(7)
    exif = Image.Exif()
    exif[0x0112] = 6  # camera held upright: rotate 90° on display
    _image(rng, 6, 10).save(tmp_path / "photo.jpeg", exif=exif)
    lines: list[str] = []
    written = upscale_files(
        saved["net"],
        4,
        [tmp_path / "in", tmp_path / "photo.jpeg", tmp_path / "in" / "a.png"],
        tmp_path / "out" / "x4",
        tile=8,
        overlap=4,
        report=lines.append,
    )
    names = ["a_x4.png", "b_x4.png", "c_x4.png", "photo_x4.png"]
    assert written == [tmp_path / "out" / "x4" / n for n in names]  # a.png listed twice, written once
    assert sorted(os.listdir(tmp_path / "out" / "x4")) == names
    sizes = {p.name: Image.open(p).size for p in written}
    assert sizes == {"a_x4.png": (48, 40), "b_x4.png": (24, 32), "c_x4.png": (32, 64), "photo_x4.png": (24, 40)}
    assert all(Image.open(p).mode == "RGB" for p in written)
    text = "\n".join(lines)
    assert "1 file(s) that are not PNG/JPEG left out (notes.txt)" in text
    assert "b.PNG: RGBA image: alpha channel dropped" in text
    assert "[4/4]" in text


def test_unreadable_images_stop_or_are_skipped(saved, tmp_path):
    _write_inputs(tmp_path / "in")
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(UpscaleError, match=r"broken\.png: cannot read the image"):
        upscale_files(saved["net"], 4, [tmp_path / "in"], tmp_path / "out", report=lambda _: None)
    lines: list[str] = []
    written = upscale_files(saved["net"], 4, [tmp_path / "in"], tmp_path / "out", keep_going=True, report=lines.append)
    assert [p.name for p in written] == ["a_x4.png", "b_x4.png", "c_x4.png"]
    assert any("skipped" in line and "broken.png" in line for line in lines)
    assert not any(name.endswith(".partial") for name in os.listdir(tmp_path / "out"))


def test_inputs_that_collide_or_do_not_exist(saved, tmp_path):
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        _image(np.random.default_rng(8), 4, 4).save(tmp_path / folder / "same.png")
    with pytest.raises(UpscaleError, match="would both be written to"):
        upscale_files(saved["net"], 4, [tmp_path / "one", tmp_path / "two"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(UpscaleError, match="no such file or folder"):
        collect_images([tmp_path / "missing.png"])
    (tmp_path / "blank").mkdir()
    with pytest.raises(UpscaleError, match="no PNG/JPEG images in this folder"):
        collect_images([tmp_path / "blank"])


# ------------------------------------------------------------------------------------------------------------
# CLI


def test_cli_end_to_end(saved, tmp_path, no_global_mlflow):
    _write_inputs(tmp_path / "in")
    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(
        upscale,
        [
            "--model",
            saved["tracked_run"],
            "--tracking-uri",
            saved["uri"],
            str(tmp_path / "in"),
            "--out",
            str(out),
            "--tile",
            "8",
            "--overlap",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(out)) == ["a_x4.png", "b_x4.png", "c_x4.png"]
    assert Image.open(out / "c_x4.png").size == (32, 64)
    assert "Wrote 3 image(s)" in result.stdout
    assert "Model tiny from" in result.stderr and "receptive-field bound (7 px)" in result.stderr

    from_checkpoint = tmp_path / "from-checkpoint"
    result = runner.invoke(
        upscale,
        [
            "--model",
            str(saved["checkpoint"]),
            str(tmp_path / "in" / "a.png"),
            "--out",
            str(from_checkpoint),
            "--tile",
            "8",
            "--overlap",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (from_checkpoint / "a_x4.png").read_bytes() == (out / "a_x4.png").read_bytes()


def test_cli_errors_are_messages(saved, tmp_path, no_global_mlflow):
    _write_inputs(tmp_path / "in")
    (tmp_path / "in" / "broken.jpg").write_bytes(b"garbage")
    runner = CliRunner()
    args = [str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--tracking-uri", saved["uri"]]
    result = runner.invoke(upscale, ["--model", "trilevel-b-psnr", *args])
    assert result.exit_code == 1 and "no trained weights" in result.output and "Traceback" not in result.output
    result = runner.invoke(upscale, ["--model", str(saved["checkpoint"]), *args])
    assert result.exit_code == 1 and "broken.jpg: cannot read the image" in result.output
    result = runner.invoke(upscale, ["--model", str(saved["checkpoint"]), "--keep-going", *args])
    assert result.exit_code == 1 and "1 of 4 image(s) could not be upscaled" in result.output
    assert sorted(os.listdir(tmp_path / "out")) == ["a_x4.png", "b_x4.png", "c_x4.png"]
    result = runner.invoke(upscale, ["--model", str(saved["checkpoint"]), "--device", "tpu9", *args])
    assert result.exit_code == 1 and "not a torch device" in result.output
    if not torch.cuda.is_available():
        result = runner.invoke(upscale, ["--model", str(saved["checkpoint"]), "--device", "cuda", *args])
        assert result.exit_code == 1 and "CUDA is not available" in result.output
    result = runner.invoke(upscale, ["--model", saved["tracked_run"], str(tmp_path / "nope.png"), "--out", "x"])
    assert result.exit_code == 2 and "does not exist" in result.output
