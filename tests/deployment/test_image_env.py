"""The cluster image's environment, run as the RayJob runs it (in `make test`; its cost: below).

What the image holds is `deployment/docker/requirements.lock` and this package installed without
dependencies (`pip install --no-deps`), nothing else. This test builds that environment on this machine
from the lock alone (no dev extras, no constraints, no resolution), with one change: the lock's CUDA
build of torch (and its CUDA-only wheels: nvidia-*, cuda-*, triton) is swapped for the CPU build of the
same torch version from the machine's wheel folder (pip's find-links). uv links the wheels from its cache
(`make venv` filled it; the few transitive versions the lock pins apart from the dev venv's are fetched once);
nothing is compiled ahead: each process compiles what it imports, once.
The venv is cached outside the repository, under a folder named by the lock's SHA-256, so it is built once
per lock; building one removes those of other locks unused for an hour (`_prune`); the package is
reinstalled from this checkout on every run. A lock that misses what an installed
package requires fails `uv pip check`; a module the package imports that the lock lacks (as `rich` once was)
fails the job.

Then, in that environment only (no PYTHONPATH, run from outside the checkout, `trilevel` from the venv's
bin/ as on the image's PATH), a Ray cluster shaped like the RayJob's `rayClusterSpec`: a head started
with its `rayStartParams` (`num-cpus: 0`: nothing runs on it but the job's driver) and one worker node
offering the GPU group's resources as logical ones (its `nvidia.com/gpu` limit as `--num-gpus`; no device
is touched: the tiny experiment asks for no GPU). The commit is in the environment as the image bakes it
(Dockerfile: TRILEVEL_GIT_COMMIT), and every run must carry it. The volume is laid out by the
volume-layout Job's own script and the data sets are where the data Job puts them. The RayJob's entrypoint is read from
`deployment/kuberay/rayjob.yaml` and submitted as KubeRay's submitter does (`ray job submit`), changed
only where a CPU machine must: `--scale tiny` with a one-trial, few-step cut; `/mnt/trilevel` → the
test's volume; MLflow as a SQLite file on it; without the teacher and VGG weights (tiny trains against
the HR images). It must end SUCCEEDED with its trial and stage runs FINISHED in MLflow.

Cost, measured on the 2-core development machine while others loaded it (load 9-14): from an empty cache
folder (as on a clean CI machine) 193 s in all: the build 8 s, the first imports (compiling torch, Ray and
MLflow) ~30 s, the job ~100 s (two Ray nodes, the driver with its MLflow database, one tiny trial); with the
venv cached ~115 s. It runs in one of `make test`'s two processes (xdist_group), beside the other tests.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import ONE_STEP_PER_STAGE
from tests.servers import MARKER_VAR, _stop, _wait_http, _wait_log, free_port, free_range

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deployment"
LOCK = DEPLOY / "docker" / "requirements.lock"
RAYJOB = DEPLOY / "kuberay" / "rayjob.yaml"
LAYOUT = DEPLOY / "kuberay" / "volume-layout.yaml"
MOUNT = "/mnt/trilevel"
CUDA_ONLY = re.compile(r"^(torch|triton|cuda-.*|nvidia-(?!ml-py$).*)$")  # what CUDA torch brings (not nvidia-ml-py)
CACHE = Path(os.environ.get("TRILEVEL_IMAGE_ENV_CACHE", Path.home() / ".cache" / "trilevel-nas" / "image-env"))
USED = ".used"  # touched whenever a run uses an environment: when it was last needed
IDLE_BEFORE_PRUNE_S = 3600.0  # another checkout's environment used within this may be in use now (or being built)
# The cut that makes the paper sweep a CPU test: one trial, a few steps per stage.
CPU_CUT = (
    "sweep={stages.search.lambda_order: [0.1]}",
    "resources.max_concurrent_trials=1",
    "search_space.num_cells=2",
    "stages.patch=16",
    "stages.val_max_images=1",
    *ONE_STEP_PER_STAGE,
    "stages.train.milestones=[]",
)

pytestmark = pytest.mark.xdist_group("image-env")  # both tests in one test process: one environment


# --- the image's environment ------------------------------------------------------------------------------
def _lock_blocks(text: str) -> dict[str, str]:
    """name → its requirement block (the `name==version` line and its hash lines) of a hashed lock file."""
    blocks: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        if match := re.match(r"^([A-Za-z0-9_.-]+)==", line):
            name = match.group(1).lower().replace("_", "-")
            blocks[name] = line + "\n"
        elif name and line.lstrip().startswith("--hash="):
            blocks[name] += line + "\n"
        elif not line.startswith(" "):
            name = None
    return blocks


def _find_links() -> list[str]:
    """The wheel folders pip is configured with (where this machine keeps its CPU build of torch)."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    found = re.findall(r"find-links='([^']*)'", listed)
    return sorted({folder for entry in found for folder in entry.split()})


def _uv() -> str:
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    assert Path(uv).exists(), "uv (installed in the dev venv by `make venv`) builds the environment"
    return uv


def _build(venv: Path) -> None:
    """A venv holding the lock (its CPU-torch variant) and nothing else."""
    blocks = _lock_blocks(LOCK.read_text())
    torch_version = re.match(r"torch==(\S+)", blocks["torch"]).group(1)
    kept = "".join(block for name, block in blocks.items() if not CUDA_ONLY.match(name))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (venv / "requirements.cpu.lock").write_text(kept)
    python = str(venv / "bin" / "python")
    # Not compiled ahead (the image is: pip compiles what it installs): compiling all of torch, Ray and MLflow
    # took 2 of the 2 minutes of a build here. The processes compile what they import, once, into the venv
    # (PYTHONDONTWRITEBYTECODE is dropped from their environment); uv links the files from its cache.
    install = [_uv(), "pip", "install", "--python", python, "--no-deps", "--quiet"]
    subprocess.run([*install, "--require-hashes", "-r", str(venv / "requirements.cpu.lock")], check=True)
    links = [arg for folder in _find_links() for arg in ("--find-links", folder)]
    assert links, "no wheel folder with a CPU build of torch (pip config find-links)"
    subprocess.run([*install, "--no-index", *links, f"torch=={torch_version}"], check=True)


def _prune(keep: Path, idle_s: float = IDLE_BEFORE_PRUNE_S) -> list[Path]:
    """Remove the cache's environments of other locks that no run used for `idle_s`; the ones removed.

    Why: one is built per lock hash (~0.9 GB) and nothing else ever removes one, so every change of the
    lock left its predecessor on the developer's disk. Called when a new one is built, so a cached one
    still saves its build. Another checkout's environment (another branch's lock) is kept while it was
    used (`USED`), completed or created within `idle_s`: its test may be running from it now. Only folders
    named as this test names them (16 hex digits) are touched, whatever else the cache folder holds.
    """
    removed = []
    for other in sorted(keep.parent.iterdir()):
        if other == keep or not other.is_dir() or not re.fullmatch(r"[0-9a-f]{16}", other.name):
            continue
        last = max(path.stat().st_mtime for path in (other, other / ".complete", other / USED) if path.exists())
        if time.time() - last > idle_s:
            shutil.rmtree(other, ignore_errors=True)
            removed.append(other)
    return removed


@pytest.fixture(scope="module")
def image_env() -> Path:
    """The image's environment (cached by the lock's hash) with this checkout installed as the image installs it."""
    venv = CACHE / hashlib.sha256(LOCK.read_bytes()).hexdigest()[:16]
    if not (venv / ".complete").exists():
        shutil.rmtree(venv, ignore_errors=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        _prune(venv)  # before the build: the space of the old ones is what the new one needs
        _build(venv)
        (venv / ".complete").touch()
    (venv / USED).touch()
    python = str(venv / "bin" / "python")
    # what the Dockerfile runs: the package with no dependencies and no build isolation (setuptools is locked)
    subprocess.run(
        [
            _uv(),
            "pip",
            "install",
            "--python",
            python,
            "--no-deps",
            "--no-build-isolation",
            "--reinstall",
            "--quiet",
            str(ROOT),
        ],
        check=True,
    )
    checked = subprocess.run([_uv(), "pip", "check", "--python", python], capture_output=True, text=True)
    assert checked.returncode == 0, (
        f"the lock misses what an installed package requires:\n{checked.stdout}{checked.stderr}"
    )
    return venv


def _clean_env(venv: Path, marker: str) -> dict[str, str]:
    """The image's environment: its venv's bin/ first on PATH, nothing of this checkout or the dev venv."""
    drop = {"PYTHONPATH", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "VIRTUAL_ENV", "MLFLOW_TRACKING_URI"}
    drop |= {"PYTHONDONTWRITEBYTECODE"}  # see the Makefile: each process would compile Ray from source
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("TRILEVEL_GIT")}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p) != Path(sys.executable).parent]
    env["PATH"] = os.pathsep.join([str(venv / "bin"), *path])
    # a loaded machine can take longer than Ray's 60 s to bring the dashboard (the job API) up
    busy = {"RAY_DASHBOARD_STARTUP_TIMEOUT_S": "300"}
    return env | busy | {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", MARKER_VAR: marker}


def test_building_an_environment_prunes_the_idle_ones_of_other_locks(tmp_path):
    """Old locks' environments go; the current one, one another checkout uses now or is building, and
    anything not named as an environment stay (real folders, their times set as the uses left them)."""
    old = time.time() - 2 * IDLE_BEFORE_PRUNE_S
    folders = {name: tmp_path / name for name in ("a" * 16, "b" * 16, "c" * 16, "d" * 16, "notes")}
    for folder in folders.values():
        (folder / "bin").mkdir(parents=True)
        (folder / "bin" / "python").write_text("")
    current, idle, in_use, building, notes = folders.values()
    for folder in (current, idle, in_use):
        (folder / ".complete").touch()
    (in_use / USED).touch()  # built long ago, used by another checkout's test just now
    for path in (idle / ".complete", idle, in_use / ".complete", in_use, notes, current / ".complete", current):
        os.utime(path, (old, old))
    assert _prune(current) == [idle]
    assert [path.name for path in sorted(tmp_path.iterdir())] == [current.name, in_use.name, building.name, "notes"]
    assert (current / "bin" / "python").exists()  # the one this run needs, however old


def test_the_image_environment_imports_and_runs_the_cli(image_env, tmp_path):
    env = _clean_env(image_env, "image-env-cli")
    code = "import orchestrator, rich, torch, ray, mlflow; print(orchestrator.__file__, torch.__version__)"
    ran = subprocess.run(
        [str(image_env / "bin" / "python"), "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert ran.returncode == 0, ran.stderr
    assert str(image_env) in ran.stdout.split()[0], "the installed package, not this checkout"
    shown = subprocess.run(["trilevel", "--help"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert shown.returncode == 0 and "submit" in shown.stdout, shown.stderr


# --- the RayJob, on a cluster shaped like its rayClusterSpec ---------------------------------------------
def _rayjob() -> dict:
    (job,) = [d for d in yaml.safe_load_all(RAYJOB.read_text()) if d and d.get("kind") == "RayJob"]
    return job


def _entrypoint(volume: Path, tracking: str) -> list[str]:
    """The RayJob's entrypoint, changed only where a CPU machine must (the module docstring says how)."""
    words = shlex.split(_rayjob()["spec"]["entrypoint"])
    assert words[:2] == ["trilevel", "sweep"] and "--address" in words and words[words.index("--address") + 1] == "auto"
    out: list[str] = []
    i = 0
    while i < len(words):
        word, value = words[i], words[i + 1] if i + 1 < len(words) else None
        if word == "--scale":
            out += [word, "tiny"]
            i += 2
        elif word == "--tracking-uri":
            out += [word, tracking]
            i += 2
        elif word == "--set" and value.split("=")[0] in {"supervision.weights", "perceptual.vgg_weights"}:
            i += 2  # tiny trains against the HR images: no teacher, no VGG
        else:
            out.append(word.replace(MOUNT, str(volume)))
            i += 1
    for cut in CPU_CUT:
        out += ["--set", cut]
    return out


def _sets(words: list[str]) -> dict[str, str]:
    """key → value of every `--set key=value` of an entrypoint."""
    return dict(words[i + 1].split("=", 1) for i, word in enumerate(words) if word == "--set" and "=" in words[i + 1])


def _node_ports() -> list[str]:
    """A node's own ports, each free now: Ray's defaults (e.g. the agent's 52365) clash with other clusters here."""
    names = (
        "node-manager-port", "object-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
        "metrics-export-port", "runtime-env-agent-port",
    )  # fmt: skip
    return [f"--{name}={free_port()}" for name in names]


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=log.parent
        )


def test_the_rayjob_entrypoint_finishes_a_trial_on_a_two_node_cluster(image_env, demo_data, tmp_path):
    from mlflow import MlflowClient

    from orchestrator.jobs import job_logs, job_status, job_status_or_none
    from orchestrator.tracking import code_provenance

    started = time.monotonic()
    marker = f"image-env-{os.getpid()}"
    # what the image's ENV holds once built with --build-arg GIT_COMMIT/GIT_DIRTY from this checkout
    baked = {k: v for k, v in code_provenance(ROOT).items() if k != "TRILEVEL_VERSION"}
    env = _clean_env(image_env, marker) | baked
    spec = _rayjob()["spec"]["rayClusterSpec"]
    head_params = spec["headGroupSpec"]["rayStartParams"]
    (group,) = spec["workerGroupSpecs"]
    gpus = group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert head_params["num-cpus"] == "0"

    # the volume, as the runbook lays it out: the layout Job's script, then the data Job's data sets
    volume = tmp_path / "trilevel"
    volume.mkdir()
    (layout,) = next(d for d in yaml.safe_load_all(LAYOUT.read_text()) if d)["spec"]["template"]["spec"]["containers"]
    subprocess.run(["sh", "-c", layout["args"][0].replace(MOUNT, str(volume))], check=True, capture_output=True)
    demo = Path(demo_data)  # the built-in photographs (`trilevel data demo`): they stand in for every data set
    for key, value in _sets(_entrypoint(volume, "")).items():
        if key.startswith("data.") and value.startswith(str(volume)):
            part = key.split(".")[1]  # data.train / data.val.<name> / data.test.<name>: the demo's part
            if not Path(value).exists():
                shutil.copytree(demo / part, value)
    tracking = f"sqlite:///{volume / 'mlflow' / 'mlflow.db'}"

    temp = Path(f"/tmp/tlimg-{os.getpid()}")  # short (Ray's socket paths); not trl-*, which other tests sweep
    temp.mkdir(exist_ok=True)
    gcs, dashboard = free_port(), free_port()
    ports = free_range(400)
    head = _start(
        ["ray", "start", "--head", "--block", f"--num-cpus={head_params['num-cpus']}", f"--temp-dir={temp}",
         f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--include-dashboard=true",
         f"--min-worker-port={ports}", f"--max-worker-port={ports + 199}", *_node_ports(),
         f"--ray-client-server-port={free_port()}"],
        env, temp / "head.log",
    )  # fmt: skip
    worker = None
    try:
        address = f"http://127.0.0.1:{dashboard}"
        _wait_log(temp / "head.log", "--block", head, timeout_s=180)  # its GCS is up: the worker may join
        worker = _start(
            ["ray", "start", "--block", f"--address=127.0.0.1:{gcs}", "--num-cpus=2", f"--num-gpus={gpus}",
             f"--min-worker-port={ports + 200}", f"--max-worker-port={ports + 399}", *_node_ports()],
            env, temp / "worker.log",
        )  # fmt: skip
        _wait_http(f"{address}/api/version", head, temp / "head.log", timeout_s=180)  # the job API
        _wait_log(temp / "worker.log", "--block", worker, timeout_s=180)
        entrypoint = _entrypoint(volume, tracking)  # words: `ray job submit -- WORDS` quotes each
        # as KubeRay's submitter (retried by its Job): the head's job agent may come up after its dashboard
        deadline = time.monotonic() + 300
        while True:
            submitted = subprocess.run(
                ["ray", "job", "submit", f"--address={address}", "--submission-id=image-env", "--no-wait", "--",
                 *entrypoint],
                env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            if job_status_or_none(address, "image-env") is not None:
                break
            assert time.monotonic() < deadline, (
                f"not submitted:\n{submitted.stdout[-3000:]}\n{submitted.stderr[-3000:]}"
            )
            time.sleep(5)
        deadline = time.monotonic() + 1200
        status = job_status(address, "image-env")
        while status not in {"SUCCEEDED", "FAILED", "STOPPED"} and time.monotonic() < deadline:
            time.sleep(1)
            status = job_status(address, "image-env")
        logs = "".join(job_logs(address, "image-env"))
        assert status == "SUCCEEDED", f"{status}\n{logs[-8000:]}"
    finally:
        if worker is not None:
            _stop(worker, marker, grace_s=0)
        _stop(head, marker, grace_s=0)
        shutil.rmtree(temp, ignore_errors=True)

    client = MlflowClient(tracking_uri=tracking)
    experiment = client.get_experiment_by_name("trilevel")
    runs = client.search_runs([experiment.experiment_id], "tags.`trilevel.sweep` = 'table8'")
    kinds = sorted(r.data.tags["trilevel.kind"] for r in runs)
    assert kinds.count("sweep") == kinds.count("trial") == 1 and kinds.count("stage") >= 3, kinds
    assert all(r.info.status == "FINISHED" for r in runs)
    tagged = [r for r in runs if r.data.tags["trilevel.kind"] in {"sweep", "trial"}]  # the environment tags' runs
    assert {r.data.tags.get("trilevel.git_commit") for r in tagged} == {baked["TRILEVEL_GIT_COMMIT"]}
    version = {r.data.tags.get("trilevel.version.trilevel-nas") for r in tagged}
    assert version == {code_provenance(ROOT)["TRILEVEL_VERSION"]}, "the installed package's version"
    (trial,) = [r for r in runs if r.data.tags["trilevel.kind"] == "trial"]
    psnr = {k: v for k, v in trial.data.metrics.items() if k.startswith("psnr/")}
    assert psnr and all(v > 0 for v in psnr.values()), trial.data.metrics
    print(f"image environment run: {time.monotonic() - started:.0f} s")
