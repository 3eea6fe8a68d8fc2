"""`--dry-run` on the RayJob's exact entrypoint, against a shared volume laid out as deployment/README.md says.

No mocks: a real `ray start --head` reporting 3 logical GPUs and 24 logical CPUs (the RayJob's GPU worker
group at its maxReplicas; a dry run schedules nothing on them), a real `mlflow server`, data prepared by
deployment/kuberay/prepare-data.sh (the data-and-weights Job's script) from small generated images, and
teacher / VGG19 state dicts built here. The volume's root stands in for /mnt/trilevel; the entrypoint of
deployment/kuberay/rayjob.yaml runs as a shell command, with `--dry-run` appended (and the teacher's
nb/nf/gc set to the small net saved here). Each missing piece is then taken away, one at a time.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from orchestrator.capacity import max_resources
from tests.conftest import CLUSTER_CPUS, CLUSTER_GPUS

pytestmark = pytest.mark.xdist_group("cluster")  # shares the session cluster (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]
RAYJOB = ROOT / "deployment" / "kuberay" / "rayjob.yaml"
PREPARE = ROOT / "deployment" / "kuberay" / "prepare-data.sh"
MOUNT = "/mnt/trilevel"
IN_CLUSTER_MLFLOW = "http://mlflow:5000"
SMALL_TEACHER = ("--set", "supervision.nb=1", "--set", "supervision.nf=8", "--set", "supervision.gc=4")
GPUS, CPUS = CLUSTER_GPUS, CLUSTER_CPUS  # the RayJob's GPU group at maxReplicas (the session cluster reports them)


def _images(folder: Path, count: int, seed: int, digits: int = 4) -> Path:
    """`count` 128×128 RGB PNGs (the smallest a x4 set accepts), named as the real sets are (0001.png …)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(0, 256, size=(128, 128, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i + 1:0{digits}d}.png")
    return folder


def _layout(volume: Path) -> None:
    """The shared volume as the data-and-weights Job leaves it: its own script, run on local sources.

    The sources are what the Job would download or wait for (raw/<set>/, weights/*.pth), here small;
    `deployment/kuberay/prepare-data.sh` then prepares the shards exactly as in the cluster.
    """
    from search_space.teacher import RRDBNet
    from workers.vgg import VGG19Features

    raw = volume / "raw"
    _images(raw / "DIV2K_train_HR", 2, 0)
    _images(raw / "Flickr2K_HR", 2, 1, digits=6)
    _images(raw / "DIV2K_valid_HR", 2, 4)
    _images(raw / "Set5", 2, 2)
    _images(raw / "Set14", 2, 3)
    (volume / "weights").mkdir()
    for name in ("RRDB_ESRGAN_x4.pth", "RRDB_PSNR_x4.pth"):
        torch.save(RRDBNet(nf=8, nb=1, gc=4).state_dict(), volume / "weights" / name)
    torch.save(VGG19Features().state_dict(), volume / "weights" / "vgg19-dcbb9e9d.pth")
    env = _env() | {"TRILEVEL_VOLUME": str(volume), "WAIT_SECONDS": "0"}
    urls = ("DIV2K_URL", "DIV2K_VAL_URL", "FLICKR2K_URL", "VGG19_URL", "SET5_URL", "SET14_URL")
    env |= dict.fromkeys(urls, "")  # no network
    ran = subprocess.run(["bash", str(PREPARE)], env=env, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert f"Data and weights ready under {volume}" in ran.stdout


def _env() -> dict[str, str]:
    """The environment of a process on the head: this checkout's code and `trilevel`, no usage stats."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    return env | {
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": str(ROOT),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # this venv's `trilevel`
    }


@pytest.fixture(scope="module")
def volume_cluster(cluster, tmp_path_factory) -> Iterator[dict[str, str]]:
    """The session's cluster (tests/conftest.py) with a shared volume laid out as the README says."""
    volume = tmp_path_factory.mktemp("volume")
    _layout(volume)
    yield {"gcs": cluster["gcs"], "dashboard": cluster["dashboard"], "mlflow": cluster["mlflow"], "volume": str(volume)}


def _entrypoint() -> str:
    return yaml.safe_load(RAYJOB.read_text())["spec"]["entrypoint"]


def _run(cluster: dict[str, str], volume: Path | str, *extra: str) -> subprocess.CompletedProcess:
    """The RayJob's entrypoint, as the head would run it, with this test's volume and MLflow server."""
    command = _entrypoint().replace(MOUNT, str(volume)).replace(IN_CLUSTER_MLFLOW, cluster["mlflow"])
    command += " " + shlex.join([*SMALL_TEACHER, *extra, "--dry-run"])
    env = _env() | {"RAY_ADDRESS": cluster["gcs"]}  # what `--address auto` finds on the head
    return subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=300)


def _copy_without(cluster: dict[str, str], tmp_path: Path, *missing: str) -> Path:
    """The volume with pieces (relative paths) taken away; data and weights are linked, not copied."""
    volume, copy = Path(cluster["volume"]), tmp_path / "volume"
    for part in ("data/div2k-flickr2k", "data/div2k-val", "data/set5", "data/set14", "weights/RRDB_ESRGAN_x4.pth",
                 "weights/vgg19-dcbb9e9d.pth"):  # fmt: skip
        if not any(part == gone or part.startswith(f"{gone}/") for gone in missing):
            (copy / part).parent.mkdir(parents=True, exist_ok=True)
            (copy / part).symlink_to(volume / part)
    (copy / "runs").mkdir()
    return copy


def test_the_rayjob_entrypoint_passes_on_the_readme_layout_and_prints_the_plan(volume_cluster):
    cluster = volume_cluster
    ran = _run(cluster, cluster["volume"])
    assert ran.returncode == 0, ran.stdout + ran.stderr
    out = ran.stdout
    assert "Sweep table8: 3 trial(s), 3 at once" in out, out
    assert "lambda_order=0.0, lambda_order=0.01, lambda_order=0.1" in out
    assert f"at most {GPUS} GPU" in out and "at once:  3 GPU" in out
    # 4 training images: χ1 = 2 images for pretrain and search, all 4 for train; batch 3 (16 for train), 1 worker.
    assert "pretrain 1 worker(s), 1 GPU, 4 CPU" in out
    assert "pretrain: 100 epochs × 1 steps (batch 3; ⌈⌊2 rows / 1⌋ / 3⌉) = 100 steps" in out
    assert "search: 100 epochs × 1 steps (batch 3; ⌈⌊2 rows / 1⌋ / 3⌉) = 100 steps" in out
    assert "train: 900 epochs × 1 steps (batch 16; ⌈⌊4 rows / 1⌋ / 16⌉) = 900 steps" in out
    assert "train finetune: 1800 epochs × 1 steps" in out
    assert f"data {cluster['volume']}/data/div2k-flickr2k [χ1: 2 images / 2 rows]" in out
    assert "Pre-flight passed" in out
    assert not (Path(cluster["volume"]) / "runs" / "table8").exists(), "a dry run starts nothing"


def _in_process(cluster: dict[str, str], volume: Path, *extra: str) -> str:
    """The plan the entrypoint's `--dry-run` prints, checked in this process against the cluster's capacity.

    The same experiment (parsed from the RayJob's entrypoint by the `sweep` command itself) and the same
    checks as the job's; only the capacity comes from this test instead of the cluster (the run above
    reads it from the cluster). One process start less per case.
    """
    from orchestrator.capacity import Capacity
    from orchestrator.cli.run import _load, sweep
    from orchestrator.preflight import format_plan, preflight

    command = _entrypoint().replace(MOUNT, str(volume)).replace(IN_CLUSTER_MLFLOW, cluster["mlflow"])
    tokens = shlex.split(command)
    args = [*tokens[tokens.index("sweep") + 1 :], *SMALL_TEACHER, *extra]
    params = sweep.make_context("sweep", args).params
    experiment = _load(
        params["experiment"], params["scale"], params["overrides"], params["name"], params["storage"],
        params["tracking_uri"],
    )  # fmt: skip
    capacity = Capacity({"GPU": GPUS, "CPU": CPUS}, ("the RayJob's GPU group at maxReplicas",))
    return format_plan(preflight(experiment, capacity))


def test_each_missing_piece_is_named(volume_cluster, tmp_path):
    """No teacher, no VGG19 weights, no Set5, an unwritable storage: every problem is listed, each named."""
    volume = _copy_without(volume_cluster, tmp_path, "weights", "data/set5")
    shutil.rmtree(volume / "runs")
    (volume / "runs").write_text("a file where the runs folder should be")
    out = _in_process(volume_cluster, volume)
    assert f"supervision.weights: teacher weights {volume}/weights/RRDB_ESRGAN_x4.pth: file not found" in out, out
    assert f"perceptual.vgg_weights: VGG19 weights file not found: {volume}/weights/vgg19-dcbb9e9d.pth" in out
    assert f"data.test.Set5: {volume}/data/set5 is not a prepared data set" in out
    assert f"storage: cannot write to {volume}/runs" in out


def test_a_missing_piece_stops_the_entrypoint_before_anything_starts(volume_cluster, tmp_path):
    volume = _copy_without(volume_cluster, tmp_path, "data/set5")
    ran = _run(volume_cluster, volume)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert f"data.test.Set5: {volume}/data/set5 is not a prepared data set" in ran.stdout, ran.stdout
    assert "problem(s) (listed above); nothing started" in ran.stderr, ran.stderr


def test_too_few_gpus_are_named_with_the_fix(volume_cluster, tmp_path):
    volume = _copy_without(volume_cluster, tmp_path)
    one_stage = _in_process(volume_cluster, volume, "--set", "resources.workers.search=4")
    assert "resources.workers.search=4 × resources.gpus_per_worker=1: the search stage needs 4 GPU" in one_stage
    assert f"the cluster has at most {GPUS} GPU" in one_stage and "wait forever" in one_stage
    at_once = _in_process(volume_cluster, volume, "--set", "resources.gpus_per_worker=2")
    assert "resources.max_concurrent_trials=3: 3 trials at once need 6 GPU" in at_once, at_once
    assert "Set resources.max_concurrent_trials=1" in at_once and "N GPUs → N trials at once" in at_once


def test_submit_dry_run_runs_the_preflight_on_the_cluster(volume_cluster):
    """`trilevel submit --dry-run` with the RayJob's paths: the checks run in a job on the head, nothing starts."""
    cluster = volume_cluster
    from click.testing import CliRunner

    from orchestrator.cli.submit import submit

    tokens = shlex.split(_entrypoint().replace(MOUNT, cluster["volume"]))
    sets = [token for i, token in enumerate(tokens) if token == "--set" or tokens[i - 1] == "--set"]
    args = ["table8", "--scale", "paper", "--address", cluster["dashboard"], "--storage", f"{cluster['volume']}/runs"]
    args += ["--tracking-uri", cluster["mlflow"], *sets, *SMALL_TEACHER, "--dry-run"]
    result = CliRunner().invoke(submit, args)
    assert result.exit_code == 0, result.output
    assert "Sweep table8: 3 trial(s), 3 at once" in result.output and "Pre-flight passed" in result.output
    assert "Pre-flight passed on the cluster" in result.output
    assert not (Path(cluster["volume"]) / "runs" / "table8").exists()


# --- the autoscaler's limits, from the deployment's own configs ---------------------------------------------
def test_max_resources_of_the_cluster_launcher_config():
    util = pytest.importorskip("ray.autoscaler._private.util")
    config = util.prepare_config(yaml.safe_load((ROOT / "deployment/cluster-launcher/trilevel-gpu.yaml").read_text()))
    workers = config["available_node_types"]["ray.worker.gpu"]
    limits = max_resources(config)
    assert limits["GPU"] == min(workers["max_workers"], config["max_workers"]) * workers["resources"]["GPU"]


@pytest.mark.parametrize("manifest", ["raycluster.yaml", "rayjob.yaml"])
def test_max_resources_of_the_kuberay_clusters_as_the_autoscaler_reads_them(manifest):
    """Ray's own KubeRay autoscaler code turns each manifest into its autoscaling config."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    doc = yaml.safe_load((ROOT / "deployment" / "kuberay" / manifest).read_text())
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    cr = {"metadata": {"name": doc["metadata"]["name"], "namespace": "trilevel-nas"}, "spec": spec}
    limits = max_resources(_derive_autoscaling_config_from_ray_cr(cr))
    gpu_group = next(g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu")
    per_pod = int(gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    assert limits["GPU"] == gpu_group["maxReplicas"] * per_pod


@pytest.fixture(scope="module")
def plan_tracking(tmp_path_factory) -> str:
    """One SQLite tracking store for the plan cases (MLflow creates a fresh store's tables in seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('plan-tracking')}/mlflow.db"


@pytest.mark.xdist_group("preflight-plan")  # needs no cluster: free to run beside the cluster's tests
@pytest.mark.parametrize(
    ("overrides", "needs", "in_trial_stages"),
    [
        ((), {"CPU": 0.5}, 3),  # all three stages in the trial's process: it holds the one worker's 0.5 CPU
        (("resources.workers.pretrain=2",), {"CPU": 1.5}, 2),  # 2 Train workers × 0.5 while the trial holds its 0.5
        # GPU: Train runs, the trial holds 0.01 CPU; its evaluation a task of one worker's share once they end
        (("resources.gpus_per_worker=0.5",), {"CPU": 0.51, "GPU": 0.5}, 0),
    ],
)
def test_the_plan_counts_the_cpus_a_trial_holds_for_the_stages_it_runs(
    tmp_path, plan_tracking, overrides, needs, in_trial_stages
):
    from orchestrator.experiment import load_experiment
    from orchestrator.preflight import format_plan, preflight

    experiment = load_experiment(
        "table8",
        "tiny",
        (*overrides, "sweep={}", "resources.cpus_per_worker=0.5"),
        storage=str(tmp_path / "runs"),
        **{"tracking.uri": plan_tracking},
    )
    plan = preflight(experiment)
    assert plan.ok, plan.problems
    assert plan.needs == pytest.approx(needs)
    assert format_plan(plan).count("(in the trial's process)") == in_trial_stages
    text = format_plan(plan)
    if "GPU" in needs:
        assert "evaluate 0.5 GPU, 0.5 CPU (a Ray task once the stages end" in text, text
        assert "GPU probe: not run by --dry-run; --preflight runs it on one GPU worker" in text
    else:
        assert "evaluate in the trial's process (CPU)" in text, text
    assert "checkpoints: pretrain 1 × " in text and "all kept (stages.keep_checkpoints unset)" in text


@pytest.mark.xdist_group("preflight-plan")
@pytest.mark.parametrize(
    ("overrides", "concurrent"),
    [
        (("resources.max_concurrent_trials=null",), 3),  # unset: 2 CPUs fit four trials of 0.5 CPU; the grid is 3
        (("resources.max_concurrent_trials=null", "resources.cpus_per_worker=1.5"), 1),  # one trial's 1.5 CPU fits
        (("resources.max_concurrent_trials=1",), 1),  # set: honoured (orchestrator.trial_limit), so planned
        (("resources.max_concurrent_trials=2",), 2),
    ],
)
def test_the_plan_runs_as_many_trials_at_once_as_tune_will(tmp_path, plan_tracking, overrides, concurrent):
    """Unset `max_concurrent_trials` plans the trials that fit the cluster at once (what Tune then runs), set it."""
    from orchestrator.capacity import Capacity
    from orchestrator.experiment import load_experiment
    from orchestrator.preflight import format_plan, preflight

    experiment = load_experiment(
        "table8", "tiny", overrides, storage=str(tmp_path / "runs"), **{"tracking.uri": plan_tracking}
    )
    plan = preflight(experiment, Capacity({"CPU": 2.0}, ("two cores",)))
    assert plan.ok, plan.problems
    assert len(plan.trials) == 3 and plan.concurrent == concurrent
    assert plan.needs["CPU"] == pytest.approx(concurrent * experiment.resources.trial_reservation())
    assert f"Sweep table8: 3 trial(s), {concurrent} at once" in format_plan(plan)
