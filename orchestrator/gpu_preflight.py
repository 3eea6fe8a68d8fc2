"""`--preflight`'s GPU probe: one Ray task on one GPU worker, before a sweep spends GPU hours.

Why: the driver's checks (`orchestrator.preflight`) run on the head, which has no GPU. What only a GPU
worker can say is whether its torch sees CUDA at all (the image's CUDA 13 torch needs driver R580+ and
compute capability 7.5+), and whether the experiment's largest step fits its memory. The probe asks
exactly one worker's resources (`resources.gpus_per_worker` GPUs, `cpus_per_worker` CPUs), so it lands
where a stage's worker would, and runs `workers.gpu_probe.probe_node` there: driver and CUDA versions,
then one dense pretrain step (radius 0: every op and node computed, a trial's largest step) at the
experiment's supernet, pretrain batch and patch. What it finds becomes lines of the plan: a problem
stops the sweep before it starts (no CUDA, a driver too old, a step that does not fit), the rest are notes.
"""

from __future__ import annotations

from typing import Any

from orchestrator.experiment import Experiment

__all__ = ["PROBE_TIMEOUT_S", "probe_gpu_worker", "probe_lines"]

PROBE_TIMEOUT_S = 900.0  # an autoscaler bringing up the first GPU node from zero takes minutes
_FULL = 0.9  # a dense step above this share of the GPU's memory leaves no room for the allocator's slack


def probe_gpu_worker(experiment: Experiment, timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """Run the probe as a Ray task asking one worker's GPUs and CPUs; its report, or ``{"timeout": s}``."""
    import ray

    from workers.gpu_probe import probe_node

    resources = experiment.resources
    if resources.gpus_per_worker <= 0:
        raise ValueError(f"resources.gpus_per_worker={resources.gpus_per_worker}: the GPU probe needs a GPU run")
    task = ray.remote(probe_node).options(
        num_gpus=resources.gpus_per_worker, num_cpus=resources.cpus_per_worker, max_retries=0
    )
    stages = experiment.stages
    ref = task.remote(experiment.supernet_config(), stages.patch, stages.pretrain.batch_size, stages.precision)
    ready, _ = ray.wait([ref], timeout=timeout_s)
    if not ready:
        ray.cancel(ref, force=True)
        return {"timeout": timeout_s}
    return ray.get(ref)


def probe_lines(report: dict[str, Any], experiment: Experiment) -> tuple[list[str], list[str]]:
    """(problems, notes) of a probe's report, each one line naming what to change."""
    resources, stages = experiment.resources, experiment.stages
    asked = f"resources.gpus_per_worker={resources.gpus_per_worker:g}, cpus_per_worker={resources.cpus_per_worker:g}"
    if "timeout" in report:
        return [
            f"GPU probe: no GPU worker took it within {report['timeout']:.0f} s ({asked}): the cluster cannot place "
            "one stage worker; check the GPU worker group (maxReplicas, node pool quota, the nvidia.com/gpu limit)"
        ], []
    where = f"GPU probe on node {report['node']} (Ray GPU ids {report.get('gpu_ids') or 'none'})"
    if not report["ok"]:
        return [f"{where}: {report['note']}. Nothing started."], []
    gpu = f"{report['gpu']} (capability {report['capability']}, {report['memory_gib']:.0f} GiB)"
    versions = f"torch {report['torch']}, CUDA {report['cuda']}, driver {report.get('driver', '?')}"
    shapes = f"a dense pretrain step at batch {stages.pretrain.batch_size}, LR patch {stages.patch}"
    knobs = "set search_space.recompute_cells=0.5 (about a third of the memory) or lower stages.pretrain.batch_size"
    if "out_of_memory" in report:
        return [f"{where}: {gpu}: {shapes} does not fit (CUDA: {report['out_of_memory']}); {knobs}"], []
    step = report["step"]
    share = step["peak_gib"] / step["total_gib"]
    peak = f"{step['peak_gib']:.1f} GiB ({share:.0%}), {step['seconds']:.3f} s"
    notes = [f"{where}: {gpu}, {versions}; {shapes} peaks at {peak}"]
    if share > _FULL:
        notes.append(f"{where}: the dense step uses {share:.0%} of the GPU's memory: {knobs} (or stages.patch)")
    elif resources.gpus_per_worker < 1 and share * (1 / resources.gpus_per_worker) > _FULL:
        notes.append(
            f"{where}: {1 / resources.gpus_per_worker:g} trials sharing this GPU (gpus_per_worker="
            f"{resources.gpus_per_worker:g}) need {share / resources.gpus_per_worker:.0%} of its memory at their "
            f"dense steps: {knobs}"
        )
    return [], notes
