"""`resources.gpus_per_worker` is what each Train worker reserves: 0.5 lets two trials' runs share one GPU.

No GPU here: the session's local Ray reports one logical GPU (tests/conftest.py). Two Train runs are
fitted at once with the ScalingConfig production builds (`orchestrator.train_run.train_scaling`),
each worker writing what Ray assigned it and then waiting until the other run's worker is placed too.
Both placed at once on the one GPU is the proof; with `use_gpu` alone (a whole GPU per worker) the
second could only start after the first ended, and the first would give up waiting. Nothing touches
CUDA: the workers run `DataParallelTrainer`'s plain loop, without a torch process group.

Also on that logical GPU: a GPU run's evaluation task and `--preflight`'s GPU probe are placed on it and,
torch here being a CPU build, say so, naming the node (the device choice and probe a GPU node would pass).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import ray.train
import torch

from orchestrator.train_run import train_scaling


def test_the_scaling_config_asks_the_configured_gpus_per_worker():
    half, two, cpu = train_scaling(2, 4.0, 0.5), train_scaling(1, 4.0, 2.0), train_scaling(1, 0.5, 0.0)
    assert half.use_gpu and half.num_workers == 2 and half.resources_per_worker == {"CPU": 4.0, "GPU": 0.5}
    assert two.resources_per_worker == {"CPU": 4.0, "GPU": 2.0}
    assert not cpu.use_gpu and cpu.resources_per_worker == {"CPU": 0.5}


def _hold_a_share(config: dict) -> None:
    log = Path(config["log"])
    placed = {"run": config["name"], "gpu_ids": [str(i) for i in ray.get_gpu_ids()]}
    placed["resources"] = ray.get_runtime_context().get_assigned_resources()
    with log.open("a") as out:
        out.write(json.dumps(placed) + "\n")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(log.read_text().splitlines()) < 2:
        time.sleep(0.1)  # keep holding the GPU share until the other run's worker holds its own
    if len(log.read_text().splitlines()) < 2:
        raise RuntimeError("the other run was never placed while this one held its GPU share")


@pytest.mark.xdist_group("local_ray")
def test_two_runs_of_half_a_gpu_share_one_gpu_at_once(ray_session, tmp_path):
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    log = tmp_path / "placed.jsonl"
    errors: list[BaseException] = []

    def fit(name: str) -> None:
        try:
            DataParallelTrainer(
                _hold_a_share,
                train_loop_config={"name": name, "log": str(log)},
                scaling_config=train_scaling(1, 0.5, 0.5),
                run_config=ray.train.RunConfig(name=name, storage_path=str(tmp_path / "storage")),
            ).fit()
        except BaseException as err:  # reported below, with the placements seen
            errors.append(err)

    threads = [threading.Thread(target=fit, args=(name,)) for name in ("trial-a", "trial-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=400)
    placed = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    assert not errors, (errors, placed)
    assert sorted(p["run"] for p in placed) == ["trial-a", "trial-b"]
    for p in placed:
        assert p["resources"].get("GPU") == 0.5, p
        assert p["gpu_ids"] == ["0"], p  # the one GPU, shared


# --- evaluation on the GPU a trial reserves (orchestrator.trial._evaluation) -----------------------------------
def test_a_gpu_run_evaluates_in_a_task_holding_one_workers_share_and_a_cpu_run_in_the_trial():
    from orchestrator.experiment import ResourcesSpec

    assert ResourcesSpec(gpus_per_worker=0.5, cpus_per_worker=4).evaluation_resources() == {"CPU": 4, "GPU": 0.5}
    assert ResourcesSpec(gpus_per_worker=2, cpus_per_worker=8).evaluation_resources() == {"CPU": 8, "GPU": 1.0}
    assert ResourcesSpec().evaluation_resources() is None  # CPU: in the trial's process, as before


def test_evaluation_computes_on_the_cpu_without_a_gpu_share():
    from workers.evaluate_on_device import evaluation_device

    assert evaluation_device(0) == torch.device("cpu")
    with pytest.raises(ValueError, match="evaluation gpus must be >= 0, got -1"):
        evaluation_device(-1)


@pytest.mark.xdist_group("local_ray")
def test_a_gpu_runs_evaluation_takes_the_gpu_and_names_the_node_where_torch_sees_no_cuda(ray_session, tmp_path):
    """The trial's own evaluation call, on the session's logical GPU: the task is placed on it (Ray assigns GPU 0),
    and on this CPU-only machine the device choice refuses the CPU, naming the node and what is missing."""
    from orchestrator.experiment import load_experiment
    from orchestrator.trial import _evaluation
    from search_space.derived import build_network
    from search_space.genotype import load_genotype
    from workers.gpu_probe import NoCudaError

    experiment = load_experiment("table8", "tiny", ["sweep={}", "resources.gpus_per_worker=0.5"])
    net = build_network(load_genotype("trilevel-b-psnr"))
    with pytest.raises(NoCudaError) as failed:
        _evaluation(experiment, str(tmp_path / "checkpoint_000001"), net, {})
    message = str(failed.value)
    assert "evaluation on node " in message and "Ray assigned GPU(s) ['0']" in message, message
    assert f"torch {torch.__version__} is a CPU build" in message, message


# --- `--preflight`'s GPU probe (orchestrator.gpu_preflight) ---------------------------------------------------------
@pytest.mark.xdist_group("local_ray")
def test_the_preflight_gpu_probe_names_the_node_where_torch_sees_no_cuda(ray_session):
    """The probe asks one worker's GPU: Ray places it on the logical GPU, where this CPU-only torch sees no CUDA."""
    import socket

    from orchestrator.experiment import load_experiment
    from orchestrator.gpu_preflight import probe_gpu_worker, probe_lines

    experiment = load_experiment("table8", "tiny", ["sweep={}", "resources.gpus_per_worker=1"])
    report = probe_gpu_worker(experiment, timeout_s=120)
    assert report["gpu_ids"] == ["0"] and not report["ok"], report
    problems, notes = probe_lines(report, experiment)
    assert len(problems) == 1 and not notes, (problems, notes)
    assert problems[0].startswith(f"GPU probe on node {socket.gethostname()} (") and "GPU ids ['0']" in problems[0]
    assert f"torch {torch.__version__} is a CPU build" in problems[0] and "Nothing started" in problems[0]
    # two GPUs per worker never fit the one logical GPU: the probe gives up after its timeout, and says what to check
    too_big = load_experiment("table8", "tiny", ["sweep={}", "resources.gpus_per_worker=2"])
    (waited,), _ = probe_lines(probe_gpu_worker(too_big, timeout_s=1), too_big)
    assert "no GPU worker took it within 1 s (resources.gpus_per_worker=2" in waited and "maxReplicas" in waited


def test_a_probe_report_becomes_plan_lines_naming_the_knobs():
    """What the probe returns from a GPU node (its keys as `workers.gpu_probe.probe_node` builds them) in plan words."""
    from orchestrator.experiment import load_experiment
    from orchestrator.gpu_preflight import probe_lines

    h100 = {"node": "gpu-1 (10.0.0.5)", "gpu_ids": ["0"], "ok": True, "gpu": "NVIDIA H100 80GB HBM3", "torch": "2.13.0",
            "cuda": "13.0", "driver": "580.65.06", "capability": "9.0", "memory_gib": 79.2}  # fmt: skip
    whole = load_experiment("psnr-b", "paper", ["resources.gpus_per_worker=1"])
    half = load_experiment("psnr-b", "paper", ["resources.gpus_per_worker=0.5"])
    fits = h100 | {"step": {"seconds": 0.41, "peak_gib": 30.0, "total_gib": 79.2}}
    assert probe_lines(fits, whole)[0] == [] and len(probe_lines(fits, whole)[1]) == 1
    (note,) = probe_lines(fits, whole)[1]
    assert note.startswith("GPU probe on node gpu-1 (10.0.0.5) (Ray GPU ids ['0']): NVIDIA H100") and "38%" in note
    shared = probe_lines(fits, half)[1]  # two trials' dense steps on one GPU: 76 %, fine
    assert len(shared) == 1
    tight = h100 | {"step": {"seconds": 0.41, "peak_gib": 74.0, "total_gib": 79.2}}
    assert "search_space.recompute_cells=0.5" in probe_lines(tight, whole)[1][1]
    crowded = h100 | {"step": {"seconds": 0.41, "peak_gib": 45.0, "total_gib": 79.2}}
    assert "2 trials sharing this GPU (gpus_per_worker=0.5) need 114%" in probe_lines(crowded, half)[1][1]
    (problem,), _ = probe_lines(h100 | {"out_of_memory": "CUDA out of memory. Tried to allocate 2.00 GiB"}, whole)
    assert "does not fit (CUDA: CUDA out of memory" in problem and "recompute_cells=0.5" in problem
