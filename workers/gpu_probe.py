"""What this node's GPU can do for a stage: does torch see CUDA (else what is missing), its driver, a dense step's peak.

Why one module: three callers ask the same questions on the node they run on, and must say the same
thing: the `--preflight` probe (a Ray task on one GPU worker, before a sweep spends GPU hours), a trial's
evaluation on the GPU it reserved (`workers.evaluate_on_device`), and `bench/gpu_check.py` on the first
GPU node. A node that Ray gave a GPU but where torch sees none (a CPU build of torch, no driver mounted,
a driver too old for the image's CUDA 13 torch) is named with what is missing, instead of a stage
failing later with CUDA's own words, or worse, silently running on the CPU.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from search_space.supernet import Supernet, SupernetConfig
from workers.losses import content_loss
from workers.search_step import pretrain_step

__all__ = [
    "MIN_CAPABILITY",
    "MIN_DRIVER",
    "NoCudaError",
    "assigned_gpus",
    "cuda_device",
    "cuda_missing",
    "dense_step_probe",
    "driver_info",
    "node_name",
    "probe_node",
]

MIN_DRIVER = 580  # CUDA 13's minimum driver branch (the image's torch 2.13 from PyPI brings CUDA 13.0)
MIN_CAPABILITY = (7, 5)  # CUDA 13 dropped Volta (7.0)
_NVIDIA_PROC = Path("/proc/driver/nvidia/version")


class NoCudaError(RuntimeError):
    """Ray gave this process a GPU but torch cannot use it: the message names the node and what is missing."""


def node_name() -> str:
    """This node as a person finds it: its host name and, inside Ray, its node IP."""
    host = socket.gethostname()
    try:
        import ray

        if ray.is_initialized():
            return f"{host} ({ray.util.get_node_ip_address()})"
    except Exception:  # a name only: never fail over it
        pass
    return host


def assigned_gpus() -> list[str]:
    """The GPU ids Ray assigned this worker (its CUDA_VISIBLE_DEVICES), or what the environment says outside Ray."""
    try:
        import ray

        if ray.is_initialized():
            return [str(i) for i in ray.get_gpu_ids()]
    except Exception:
        pass
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return [] if not visible else visible.split(",")


def _driver_version() -> str | None:
    """The NVIDIA kernel driver's version (nvidia-smi, else /proc), None when no driver is loaded here."""
    if shutil.which("nvidia-smi"):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    if _NVIDIA_PROC.exists():
        words = _NVIDIA_PROC.read_text().split()
        found = [w for w in words if w.count(".") >= 1 and w.replace(".", "").isdigit()]
        return found[0] if found else "?"
    return None


def cuda_missing() -> str | None:
    """None when torch can use a CUDA device here; else what is missing, in words a person can act on."""
    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return (
            f"torch {torch.__version__} is a CPU build (no CUDA runtime in it): the node's image must carry "
            "the CUDA torch of deployment/docker/requirements.lock"
        )
    driver = _driver_version()
    if driver is None:
        return (
            f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no NVIDIA driver on this node (no "
            f"nvidia-smi, no {_NVIDIA_PROC}): the pod has no GPU mounted (nvidia.com/gpu limit, device plugin)"
        )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (
        f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device with driver {driver} "
        f"(CUDA_VISIBLE_DEVICES={visible!r}): CUDA {torch.version.cuda} needs driver R{MIN_DRIVER} or newer"
    )


def cuda_device(what: str) -> torch.device:
    """The CUDA device Ray gave this process (its first visible one), or NoCudaError naming the node and the gap."""
    missing = cuda_missing()
    if missing is not None:
        gpus = assigned_gpus() or "none"
        raise NoCudaError(f"{what} on node {node_name()}: Ray assigned GPU(s) {gpus}, but {missing}")
    return torch.device("cuda", 0)  # Ray sets CUDA_VISIBLE_DEVICES: the first visible is the one assigned


def driver_info() -> dict[str, Any]:
    """torch/CUDA/GPU/driver facts and whether they fit the image's CUDA 13 torch (`ok`, `note`)."""
    info: dict[str, Any] = {
        "node": node_name(),
        "gpu_ids": assigned_gpus(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": None,
        "ok": True,
    }
    if (missing := cuda_missing()) is not None:
        return info | {"ok": False, "note": missing, "driver": _driver_version() or "none"}
    props = torch.cuda.get_device_properties(0)
    info |= {"gpu": props.name, "memory_gib": props.total_memory / 2**30, "capability": f"{props.major}.{props.minor}"}
    if (props.major, props.minor) < MIN_CAPABILITY:
        info["ok"], info["note"] = False, f"compute capability {props.major}.{props.minor} < 7.5: CUDA 13 cannot run it"
    driver = _driver_version() or "?"
    info["driver"] = driver
    major = driver.split(".")[0]
    if major.isdigit() and int(major) < MIN_DRIVER and str(torch.version.cuda or "").startswith("13"):
        info["ok"], info["note"] = False, f"driver {driver} < R{MIN_DRIVER}: CUDA 13 torch needs R{MIN_DRIVER}+"
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_step(step: Callable[[], None], steps: int, device: torch.device) -> float:
    """Median seconds of `steps` calls of `step` after one warm-up (cuDNN autotuning, the allocator's first
    touch), each synchronised with the device so a GPU step is timed whole."""
    step()
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def dense_step_probe(
    config: SupernetConfig, lr_patch: int, batch: int, device: torch.device, steps: int = 1, precision: str = "fp32"
) -> dict[str, float]:
    """A dense pretrain step (radius 0, every op and node computed: a trial's largest) at these shapes.

    Returns ``seconds`` (median of `steps` after one warm-up, synchronised) and, on a GPU,
    ``peak_gib`` (torch's peak allocation) and ``total_gib``. A step that does not fit raises
    torch's OutOfMemoryError, which is the answer.
    """
    torch.manual_seed(0)
    net = Supernet(config).to(device)
    with torch.no_grad():
        for p in net.arch_parameters():
            p.normal_()
            p.requires_grad_(False)
    net.set_radius(0.0)
    optimizer = torch.optim.Adam(net.weight_parameters(), lr=1e-4)
    scale = config.scale
    lr = torch.rand(batch, 3, lr_patch, lr_patch, device=device)
    hr = torch.rand(batch, 3, lr_patch * scale, lr_patch * scale, device=device)
    generator = torch.Generator().manual_seed(1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        pretrain_step(net, optimizer, lr, hr, content_loss, generator, 5.0, precision=precision)

    out = {"seconds": timed_step(step, steps, device)}
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        out["total_gib"] = torch.cuda.get_device_properties(device).total_memory / 2**30
    return out


def probe_node(config: SupernetConfig, lr_patch: int, batch: int, precision: str = "fp32") -> dict[str, Any]:
    """What the `--preflight` GPU probe reports from the GPU worker it runs on (plain data: a Ray task's result).

    `driver_info` and, where torch sees a usable CUDA device, one dense pretrain step at the experiment's
    shapes: ``step`` (seconds, ``peak_gib``, ``total_gib``), or ``out_of_memory`` with CUDA's words.
    """
    info = driver_info()
    if not info["ok"]:
        return info
    try:
        info["step"] = dense_step_probe(config, lr_patch, batch, torch.device("cuda", 0), precision=precision)
    except torch.OutOfMemoryError as err:
        info["out_of_memory"] = " ".join(str(err).split())[:300]
    finally:
        torch.cuda.empty_cache()
    return info
