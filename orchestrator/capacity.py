"""What the connected Ray cluster has now, or can scale to: the resource side of the pre-flight.

`trilevel sweep/run/submit --dry-run` (:mod:`orchestrator.preflight`) checks that the largest stage of
a trial, and `max_concurrent_trials` trials at once, fit in these numbers; a stage that asks for more
GPUs than the cluster can ever have would wait forever instead of failing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Capacity", "cluster_capacity", "format_amount", "max_resources"]

_SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` puts the autoscaling config on the head


def format_amount(value: float) -> str:
    """A resource amount as the plan prints it: 2, not 2.0; 0.5 stays 0.5."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class Capacity:
    """The most of each resource the cluster has now or can scale to, and where each number came from."""

    resources: dict[str, float]
    sources: tuple[str, ...]

    def describe(self, resource: str) -> str:
        return f"{format_amount(self.resources.get(resource, 0))} {resource} ({'; '.join(self.sources) or 'no source'})"


def max_resources(autoscaling_config: Mapping[str, Any]) -> dict[str, float]:
    """The most CPU/GPU/… an autoscaling config (`ray up` YAML or KubeRay's derived one) can bring up.

    Head node type once, every worker type at its `max_workers`, all workers capped by the global
    `max_workers`: the same numbers the autoscaler plans with.
    """
    types = autoscaling_config.get("available_node_types", {})
    head = autoscaling_config.get("head_node_type")
    budget = autoscaling_config.get("max_workers")
    total: dict[str, float] = {}
    for name, node_type in types.items():
        count = 1 if name == head else int(node_type.get("max_workers", 0))
        if name != head and budget is not None:
            count = min(count, int(budget))
        for resource, amount in (node_type.get("resources") or {}).items():
            total[resource] = total.get(resource, 0.0) + count * float(amount)
    return total


def cluster_capacity() -> Capacity:
    """What the connected Ray cluster has now, or can scale to, per resource (the larger of the two).

    Sources, each used when present: `ray.cluster_resources()` (nodes up now); the limits the
    autoscaler reported to the GCS (what Ray Train itself checks); on a `ray up` head the autoscaling
    config `~/ray_bootstrap_config.yaml`; in a KubeRay pod the RayCluster (`RAY_CLUSTER_NAME`), read with
    the pod's service account and converted by Ray's own KubeRay autoscaler code.
    """
    import ray

    found: list[tuple[str, Mapping[str, float]]] = [("now", ray.cluster_resources())]
    for name, source in (
        ("autoscaler limits", _reported_limits),
        (f"autoscaling config {_BOOTSTRAP_CONFIG}", _bootstrap_limits),
        ("RayCluster", _kuberay_limits),
    ):
        try:
            limits = source()
        except Exception as err:  # a source that cannot be read is named, never fatal
            found.append((f"{name}: unreadable ({type(err).__name__}: {err})", {}))
            continue
        if limits is not None:
            found.append(limits if isinstance(limits, tuple) else (name, limits))
    resources: dict[str, float] = {}
    for _, limits in found:
        for resource in ("CPU", "GPU"):
            resources[resource] = max(resources.get(resource, 0.0), float(limits.get(resource, 0.0)))
    sources = tuple(
        name if not limits else f"{name}: {', '.join(f'{format_amount(limits.get(r, 0))} {r}' for r in ('GPU', 'CPU'))}"
        for name, limits in found
    )
    return Capacity(resources, sources)


def _reported_limits() -> Mapping[str, float] | None:
    import ray._private.state

    return ray._private.state.state.get_max_resources_from_cluster_config() or None


def _bootstrap_limits() -> Mapping[str, float] | None:
    import yaml

    path = Path(os.path.expanduser(_BOOTSTRAP_CONFIG))
    if not path.is_file():
        return None
    return max_resources(yaml.safe_load(path.read_text()))


def _kuberay_limits() -> tuple[str, Mapping[str, float]] | None:
    name = os.environ.get("RAY_CLUSTER_NAME")
    if not name or not (_SA_DIR / "token").is_file():
        return None
    namespace = os.environ.get("RAY_CLUSTER_NAMESPACE") or (_SA_DIR / "namespace").read_text().strip()
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
    from ray.autoscaler._private.kuberay.node_provider import KubernetesHttpApiClient

    cr = KubernetesHttpApiClient(namespace=namespace).get(f"rayclusters/{name}")
    return f"RayCluster {namespace}/{name}", max_resources(_derive_autoscaling_config_from_ray_cr(cr))
