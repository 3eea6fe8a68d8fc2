"""Structural checks of deployment/: Kubernetes manifests, the cluster launcher config, the Dockerfile, the README.

No cluster, Docker daemon, kubectl or kubeconform is needed: every YAML is parsed with PyYAML and checked for the
fields KubeRay (ray.io/v1), Kubernetes and the Ray cluster launcher need, for consistency with constraints.txt, and
for the security rules of the deployment (nothing exposed publicly, credentials only through secretKeyRef, no
secret-looking values in any file).

One file (~670 lines) because the checks cross-reference the whole deployment (one image name across
manifests, launcher and kustomization; the README's commands against the RayJob's and the data Job's
paths) through the shared loaders at the top; split by directory, those would be repeated.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.tracking.environment import COMMIT_ENV_VAR, DIRTY_ENV_VAR

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deployment"
LAUNCHER = DEPLOY / "cluster-launcher" / "trilevel-gpu.yaml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERIGNORE = DEPLOY / "docker" / "Dockerfile.dockerignore"
README = DEPLOY / "README.md"

SHARED_MOUNT = "/mnt/trilevel"
MLFLOW_URI = "http://mlflow:5000"
RAY_ENV = {"RAY_TRAIN_V2_ENABLED": "1", "MLFLOW_TRACKING_URI": MLFLOW_URI, "RAY_USAGE_STATS_ENABLED": "0"}
TRILEVEL_COMMANDS = {
    "run", "sweep", "resume", "status", "report", "arch", "upscale", "demo", "submit", "logs", "stop", "data",
}  # fmt: skip
API_VERSIONS = {
    "RayCluster": "ray.io/v1",
    "RayJob": "ray.io/v1",
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "StorageClass": "storage.k8s.io/v1",
    "Job": "batch/v1",
    "Service": "v1",
    "Secret": "v1",
    "PersistentVolumeClaim": "v1",
    "NetworkPolicy": "networking.k8s.io/v1",
}
KUSTOMIZATION = DEPLOY / "kustomization.yaml"
IMAGE_NAME = "trilevel-nas"  # what every manifest names the image; kustomization.yaml maps it to the registry
PUBLIC_KINDS = {"Ingress", "IngressClass", "Route", "Gateway", "HTTPRoute", "GRPCRoute", "TLSRoute", "TCPRoute"}


# ---------------------------------------------------------------------------------------------------------- helpers
def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"} and p.is_file())


def _is_kustomization(path: Path) -> bool:
    return path.name == "kustomization.yaml"


def _docs(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def _k8s_objects() -> list[tuple[Path, dict]]:
    """Every Kubernetes object under deployment/ (the cluster launcher config and kustomizations are not)."""
    return [
        (path, doc) for path in _yaml_files() if path != LAUNCHER and not _is_kustomization(path) for doc in _docs(path)
    ]


def _objects(kind: str) -> list[dict]:
    return [doc for _, doc in _k8s_objects() if doc.get("kind") == kind]


def _one(kind: str, name: str | None = None) -> dict:
    found = [obj for obj in _objects(kind) if name is None or obj["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _constraint(name: str) -> str:
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        match = re.match(rf"^{re.escape(name)}==(\S+)", line.strip())
        if match:
            return match.group(1)
    raise AssertionError(f"{name} is not pinned in constraints.txt")


def _pod_specs(obj: dict) -> Iterator[tuple[str, dict]]:
    """(where, pod spec) for every pod template of a Deployment, StatefulSet, Job, RayCluster or RayJob (its
    submitter too)."""
    kind = obj.get("kind")
    if kind in {"Deployment", "StatefulSet", "Job"}:
        yield kind.lower(), obj["spec"]["template"]["spec"]
    elif kind in {"RayCluster", "RayJob"}:
        if kind == "RayJob" and "submitterPodTemplate" in obj["spec"]:
            yield "submitter", obj["spec"]["submitterPodTemplate"]["spec"]
        spec = obj["spec"] if kind == "RayCluster" else obj["spec"].get("rayClusterSpec") or {}
        if "headGroupSpec" in spec:
            yield "head", spec["headGroupSpec"]["template"]["spec"]
        for group in spec.get("workerGroupSpecs", []):
            yield f"worker group {group.get('groupName')}", group["template"]["spec"]


def _containers(pod: dict) -> list[dict]:
    return list(pod.get("initContainers", [])) + list(pod.get("containers", []))


def _env(container: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def _shared_mount_paths(pod: dict, claim: str) -> set[str]:
    """The mountPaths of the volume(s) that use the PVC `claim` in every container of `pod`."""
    volumes = {
        v["name"] for v in pod.get("volumes", []) if v.get("persistentVolumeClaim", {}).get("claimName") == claim
    }
    assert volumes, f"no volume uses the claim {claim}"
    paths = set()
    for container in pod["containers"]:
        mounts = [m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] in volumes]
        assert mounts, f"container {container['name']} does not mount the shared claim"
        paths.update(mounts)
    return paths


def _gpu_limit(container: dict) -> int:
    return int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


PLACEHOLDER = re.compile(
    r"""^(?:
        |<[^>]*>                                  # <password>
        |\$\{[^}]*\}? | \$\([^)]*\)? | \$[A-Za-z_]\w*  # ${VAR}  $(cmd)  $VAR
        |(?-i:[A-Z][A-Z0-9_]*)                    # PASSWORD, USER (upper case only)
        |\*+ | x{3,} | \.\.\.
        |.*(?:change[_-]?me|replace|placeholder|example|redacted|set[_-]?me|dummy|not[_-]?a[_-]?secret).*
    )$""",
    re.IGNORECASE | re.VERBOSE,
)
SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----"),
}
ASSIGNMENT = re.compile(
    r"(?i)(?:^|[^a-z0-9])(password|passwd|secret|token|api_?key|secret_?access_?key)\s*[:=]\s*[\"']?([^\s\"',}\]]+)"
)
URI_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@\"']+:([^@\s/\"']+)@", re.IGNORECASE)


def _is_placeholder(value: str) -> bool:
    return bool(PLACEHOLDER.match(value.strip().strip("\"'")))


def _secret_findings(text: str) -> list[str]:
    """What in `text` looks like a real credential (anything that is not an obvious placeholder)."""
    findings = [name for name, pattern in SECRET_PATTERNS.items() if pattern.search(text)]
    for match in ASSIGNMENT.finditer(text):
        if match.group(2).endswith(":"):  # a YAML key that holds a mapping (`secret:` ↵ `secretName: …`)
            continue
        if not _is_placeholder(match.group(2)):
            findings.append(f"{match.group(1)} = {match.group(2)[:4]}…")
    for match in URI_CREDENTIALS.finditer(text):
        if not _is_placeholder(match.group(1)):
            findings.append(f"credentials in a URI: …:{match.group(1)[:4]}…@")
    return findings


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    logical, buffer = [], ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if not buffer and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        if raw.rstrip().endswith("\\"):
            buffer += raw.rstrip()[:-1] + " "
            continue
        logical.append(buffer + raw)
        buffer = ""
    assert not buffer, "the Dockerfile ends inside a continued line"
    out = []
    for line in logical:
        word, _, rest = line.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _shell_lines(markdown: str) -> Iterator[str]:
    """The logical lines of the shell code blocks of a Markdown text (continuations joined)."""
    for block in re.finditer(r"^```([\w-]*)[^\n]*\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL):
        if block.group(1).lower() not in {"", "bash", "sh", "shell", "console", "zsh"}:
            continue
        buffer = ""
        for raw in block.group(2).splitlines():
            line = raw.rstrip()
            if line.endswith("\\"):
                buffer += line[:-1] + " "
                continue
            yield (buffer + line).strip().removeprefix("$ ")
            buffer = ""


def _trilevel_subcommands(line: str) -> list[str]:
    """The subcommand of every `trilevel` invocation on a shell line (at a command position)."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        tokens = line.split()
    found = []
    for i, token in enumerate(tokens):
        if token != "trilevel":
            continue
        previous = tokens[i - 1] if i else None
        if previous in {None, "--", "&&", "||", ";", "|", "exec", "env", "time", "sudo", "nohup", "then", "do"}:
            found.append(tokens[i + 1] if i + 1 < len(tokens) else "")
    return found


# ------------------------------------------------------------------------------------------ every YAML, every kind
@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_parses_into_mappings(path):
    docs = _docs(path)
    assert docs, f"{path} is empty"
    assert all(isinstance(doc, dict) for doc in docs)


def test_expected_files_exist():
    for rel in (
        "docker/Dockerfile",
        "docker/Dockerfile.dockerignore",
        "kuberay/raycluster.yaml",
        "kuberay/rayjob.yaml",
        "kuberay/pvc.yaml",
        "kuberay/volume-layout.yaml",
        "kuberay/prepare-data.yaml",
        "kuberay/prepare-data.sh",
        "kustomization.yaml",
        "gcs-ft/kustomization.yaml",
        "gcs-ft/redis.yaml",
        "mlflow/basic-auth/kustomization.yaml",
        "mlflow/postgres/kustomization.yaml",
        "mlflow/postgres/postgres.yaml",
        "mlflow/networkpolicy.yaml",
        "docker/requirements.lock",
        "docker/lock.sh",
        "cluster-launcher/iam/head-policy.json",
        "cluster-launcher/iam/worker-policy.json",
        "mlflow/mlflow.yaml",
        "mlflow/secret.example.yaml",
        "cluster-launcher/trilevel-gpu.yaml",
        "README.md",
    ):
        assert (DEPLOY / rel).is_file(), rel


def test_kubernetes_objects_have_api_version_kind_and_name():
    objects = _k8s_objects()
    assert objects
    for path, obj in objects:
        assert obj.get("kind") in API_VERSIONS, f"{path}: unexpected kind {obj.get('kind')}"
        assert obj.get("apiVersion") == API_VERSIONS[obj["kind"]], f"{path}: {obj['kind']} apiVersion"
        assert obj.get("metadata", {}).get("name"), f"{path}: {obj['kind']} without metadata.name"
        assert "namespace" not in obj["metadata"], f"{path}: apply with -n instead of a fixed namespace"


# --------------------------------------------------------------------------------------------------- KubeRay shapes
def _check_ray_cluster_spec(spec: dict, where: str, claim: str) -> None:
    assert spec.get("rayVersion") == _constraint("ray"), f"{where}: rayVersion must match constraints.txt"
    assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: Ray token auth must be on"

    head = spec["headGroupSpec"]
    assert isinstance(head.get("rayStartParams"), dict), f"{where}: headGroupSpec.rayStartParams"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{where}: the head Service must stay ClusterIP"
    head_pod = head["template"]["spec"]
    assert head_pod.get("containers"), f"{where}: head template has no containers"

    groups = spec.get("workerGroupSpecs") or []
    assert groups, f"{where}: no workerGroupSpecs"
    gpu_groups = 0
    for group in groups:
        name = group.get("groupName")
        assert name, f"{where}: worker group without groupName"
        for field in ("replicas", "minReplicas", "maxReplicas"):
            assert isinstance(group.get(field), int), f"{where}/{name}: {field} must be an integer"
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], f"{where}/{name}: replicas"
        assert isinstance(group.get("rayStartParams"), dict), f"{where}/{name}: rayStartParams"
        pod = group["template"]["spec"]
        if any(_gpu_limit(c) > 0 for c in pod["containers"]):
            gpu_groups += 1
            tolerations = pod.get("tolerations", [])
            assert any(t.get("key") == "nvidia.com/gpu" and t.get("effect") == "NoSchedule" for t in tolerations), (
                f"{where}/{name}: GPU pods must tolerate the nvidia.com/gpu NoSchedule taint"
            )
    assert gpu_groups, f"{where}: no worker group requests nvidia.com/gpu"
    assert spec.get("enableInTreeAutoscaling") is True, f"{where}: GPU workers come and go with the autoscaler"
    for group in groups:
        assert group["minReplicas"] == 0 and group["replicas"] == 0, f"{where}: workers scale from 0 (no idle GPU)"

    images, mount_paths = set(), set()
    for part, pod in _pod_specs({"kind": "RayCluster", "spec": spec}):
        mount_paths |= _shared_mount_paths(pod, claim)
        for container in pod["containers"]:
            assert container.get("image"), f"{where}/{part}: container {container.get('name')} has no image"
            images.add(container["image"])
            resources = container.get("resources", {})
            for section in ("requests", "limits"):
                for key in ("cpu", "memory"):
                    assert key in resources.get(section, {}), f"{where}/{part}: resources.{section}.{key}"
            env = _env(container)
            for name, value in RAY_ENV.items():
                assert env.get(name, {}).get("value") == value, f"{where}/{part}: env {name} must be {value!r}"
    assert mount_paths == {SHARED_MOUNT}, f"{where}: the shared volume must be at {SHARED_MOUNT} on every node"
    assert len(images) == 1, f"{where}: head and workers must run the same image, got {images}"


def test_pvc_is_read_write_many():
    pvc = _one("PersistentVolumeClaim", "trilevel-shared")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    assert pvc["spec"]["resources"]["requests"]["storage"]


def test_raycluster_structure():
    cluster = _one("RayCluster")
    _check_ray_cluster_spec(cluster["spec"], "RayCluster", "trilevel-shared")


def test_raycluster_dashboard_is_loopback_only():
    params = _one("RayCluster")["spec"]["headGroupSpec"]["rayStartParams"]
    assert params.get("dashboard-host") == "127.0.0.1"


def test_rayjob_runs_the_sweep_and_cleans_up():
    job = _one("RayJob")
    spec = job["spec"]
    entrypoint = spec["entrypoint"]
    assert "trilevel sweep" in entrypoint
    tokens = shlex.split(entrypoint)
    assert tokens[:3] == ["trilevel", "sweep", "table8"]
    for flag, value in {
        "--scale": "paper",
        "--address": "auto",
        "--storage": f"{SHARED_MOUNT}/runs",
        "--tracking-uri": MLFLOW_URI,
    }.items():
        assert flag in tokens and tokens[tokens.index(flag) + 1] == value, f"entrypoint needs {flag} {value}"
    assert spec.get("shutdownAfterJobFinishes") is True
    assert isinstance(spec.get("ttlSecondsAfterFinished"), int) and spec["ttlSecondsAfterFinished"] >= 0
    assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec), "exactly one of rayClusterSpec/clusterSelector"
    assert "rayClusterSpec" in spec, "shutdownAfterJobFinishes only deletes a cluster the RayJob created"
    _check_ray_cluster_spec(spec["rayClusterSpec"], "RayJob", "trilevel-shared")


def test_ray_images_match_across_manifests_and_launcher():
    images = set()
    for kind in ("RayCluster", "RayJob", "Job"):
        for obj in _objects(kind):
            for _, pod in _pod_specs(obj):
                images.update(c["image"] for c in pod["containers"])
    assert images == {IMAGE_NAME}, f"every trilevel container names the image {IMAGE_NAME!r} (kustomization.yaml)"
    (entry,) = yaml.safe_load(KUSTOMIZATION.read_text())["images"]
    assert entry["name"] == IMAGE_NAME
    launcher = _docs(LAUNCHER)[0]
    assert launcher["docker"]["image"] == f"{entry['newName']}:{entry['newTag']}", "launcher and kustomization agree"


# --------------------------------------------------------------------------------------------- nothing exposed
def test_nothing_is_exposed_publicly():
    for path, obj in _k8s_objects():
        assert obj["kind"] not in PUBLIC_KINDS, f"{path}: {obj['kind']} would expose a service"
        if obj["kind"] == "Service":
            assert obj["spec"].get("type", "ClusterIP") == "ClusterIP", f"{path}: Service must be ClusterIP"
            assert not obj["spec"].get("externalIPs"), f"{path}: externalIPs"
        for where, pod in _pod_specs(obj):
            assert not pod.get("hostNetwork"), f"{path}/{where}: hostNetwork"
            for container in _containers(pod):
                for port in container.get("ports", []):
                    assert "hostPort" not in port, f"{path}/{where}: hostPort"


# ------------------------------------------------------------------------------------------------------ MLflow
def _mlflow_container() -> dict:
    deployment = _one("Deployment", "mlflow")
    containers = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "mlflow"]
    assert len(containers) == 1
    return containers[0]


def _arg(args: list[str], flag: str) -> str:
    assert flag in args, f"mlflow server needs {flag}"
    return args[args.index(flag) + 1]


def test_mlflow_server_command():
    container = _mlflow_container()
    command = container.get("command", []) + container.get("args", [])
    assert command[:2] == ["mlflow", "server"]
    args = command[2:]
    assert _arg(args, "--workers") == "1"
    assert _arg(args, "--host") == "0.0.0.0"
    assert _arg(args, "--port") == "5000"
    assert "--serve-artifacts" in args
    destination = _arg(args, "--artifacts-destination")
    assert destination.startswith((f"{SHARED_MOUNT}/", "s3://", "gs://")), destination
    assert _arg(args, "--allowed-hosts").strip()
    assert "--disable-security-middleware" not in args
    assert container["image"].startswith("ghcr.io/mlflow/mlflow:")
    assert f"v{_constraint('mlflow')}" in container["image"], "server image version = client pin (constraints.txt)"


def test_mlflow_allowed_hosts_admit_in_cluster_names_only():
    security = pytest.importorskip("mlflow.server.security_utils")
    allowed = [h.strip() for h in _arg(_mlflow_container()["args"], "--allowed-hosts").split(",")]
    assert "*" not in allowed
    for host in ("mlflow:5000", "mlflow", "mlflow.trilevel-nas.svc.cluster.local:5000", "localhost:5000"):
        assert security.is_allowed_host_header(allowed, host), host
    for host in ("evil.example.com", "mlflow.evil.example.com:5000", "203.0.113.7:5000"):
        assert not security.is_allowed_host_header(allowed, host), host


def test_mlflow_env_probes_and_storage():
    container = _mlflow_container()
    env = _env(container)
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"].get("value") == "false"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health", probe
    pod = _one("Deployment", "mlflow")["spec"]["template"]["spec"]
    assert _shared_mount_paths(pod, "trilevel-shared") == {f"{SHARED_MOUNT}/mlflow"}, "only its own sub-path"
    for container in _containers(pod):
        for mount in container.get("volumeMounts", []):
            if mount["name"] == "shared":
                assert mount.get("subPath") == "mlflow", f"{container['name']} mounts more than mlflow/"


def test_mlflow_backend_store_comes_from_a_secret():
    container = _mlflow_container()
    env = _env(container)
    args = container.get("args", [])
    if "--backend-store-uri" in args:
        value = _arg(args, "--backend-store-uri")
        match = re.fullmatch(r"\$\((\w+)\)", value)
        assert match, "--backend-store-uri must be $(VAR) of an env var filled from a Secret"
        source = env[match.group(1)]
    else:
        source = env["MLFLOW_BACKEND_STORE_URI"]  # what `mlflow server` reads as --backend-store-uri
    ref = source.get("valueFrom", {}).get("secretKeyRef")
    assert ref and "value" not in source, "the backend store URI must come from secretKeyRef"
    example = _one("Secret")
    assert ref["name"] == example["metadata"]["name"]
    assert ref["key"] in example.get("stringData", {}) | example.get("data", {})


def test_mlflow_service_is_cluster_ip_on_5000_and_selects_the_pods():
    service = _one("Service", "mlflow")
    assert service["metadata"]["name"] == "mlflow"
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert any(p["port"] == 5000 for p in service["spec"]["ports"])
    labels = _one("Deployment", "mlflow")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


# ------------------------------------------------------------------------------------------------- credentials
SENSITIVE_ENV = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|API_KEY|ACCESS_KEY|STORE_URI|DATABASE_URL")


def test_credentials_only_via_secret_key_ref():
    for path, obj in _k8s_objects():
        for where, pod in _pod_specs(obj):
            for container in _containers(pod):
                for name, entry in _env(container).items():
                    if SENSITIVE_ENV.search(name):
                        assert "value" not in entry and "secretKeyRef" in entry.get("valueFrom", {}), (
                            f"{path}/{where}/{container['name']}: {name} must come from a secretKeyRef"
                        )
                    assert not _secret_findings(f"{name}={entry.get('value', '')}"), f"{path}: {name}"
                for arg in container.get("command", []) + container.get("args", []):
                    assert not _secret_findings(str(arg)), f"{path}/{where}: a credential in the arguments"


def test_example_secret_holds_placeholders_only():
    secret = _one("Secret")
    values = {**secret.get("stringData", {}), **secret.get("data", {})}
    assert values
    text = (DEPLOY / "mlflow" / "secret.example.yaml").read_text(encoding="utf-8")
    assert "never commit" in text.lower()
    for key, value in values.items():
        creds = URI_CREDENTIALS.search(value)
        assert creds is None or _is_placeholder(creds.group(1)), f"{key}: not a placeholder"
        assert _is_placeholder(value) or creds is not None or value.startswith("sqlite:"), f"{key}: not a placeholder"


def test_secret_scanner_flags_real_looking_values():
    # Built at run time so that no file in the repository holds these strings.
    fake_key = "AKIA" + "Q" * 16
    fake_pem = "-----BEGIN " + "RSA PRIVATE KEY-----"
    assert _secret_findings(f"aws_access_key_id = {fake_key}")
    assert _secret_findings(fake_pem)
    assert _secret_findings("password: " + "hunter2")
    assert _secret_findings("password:\n  " + "hunter2")
    assert not _secret_findings("secret:\n  secretName: mlflow-auth")
    assert _secret_findings("postgresql://mlflow:" + "s3cr3tPw" + "@db:5432/mlflow")
    for fine in (
        "password: CHANGE_ME",
        "password: <password>",
        'token: "${RAY_AUTH_TOKEN}"',
        "postgresql://USER:PASSWORD@HOST/DB",
        "postgresql://mlflow:<password>@db/mlflow",
        'RAY_AUTH_TOKEN="$(kubectl get secret x)"',
        "http://127.0.0.1:8265",
    ):
        assert not _secret_findings(fine), fine


@pytest.mark.parametrize(
    "path", sorted(p for p in DEPLOY.rglob("*") if p.is_file()), ids=lambda p: str(p.relative_to(DEPLOY))
)
def test_no_file_under_deployment_contains_a_secret(path):
    text = path.read_text(encoding="utf-8", errors="replace")
    assert not _secret_findings(text), f"{path.relative_to(ROOT)}: {_secret_findings(text)}"


# ------------------------------------------------------------------------------------------- cluster launcher
def test_cluster_launcher_config():
    config = _docs(LAUNCHER)[0]
    for key in ("cluster_name", "max_workers", "provider", "available_node_types", "head_node_type", "docker"):
        assert key in config, key
    assert config["provider"]["type"] == "aws" and config["provider"].get("region")
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    assert any(t.get("resources", {}).get("GPU", 0) >= 1 for t in workers.values()), "no GPU worker node type"
    assert sum(t.get("min_workers", 0) for t in workers.values()) <= config["max_workers"]
    assert config["docker"].get("image") and config["docker"].get("container_name")
    assert config.get("setup_commands") == [] and config.get("head_setup_commands", []) == []
    assert config.get("file_mounts") == {"~/.ray/auth_token": "~/.ray/auth_token"}, "only Ray's auth token is shipped"
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start
    assert "--head" in head_start
    assert any("--address=" in cmd for cmd in config["worker_start_ray_commands"])
    for cmd in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        assert "ray start" not in cmd or "RAY_AUTH_MODE=token ray start" in cmd, f"token auth on every node: {cmd}"
    for name, node_type in types.items():
        node = node_type["node_config"]
        assert node.get("SecurityGroupIds"), f"{name}: a restricted security group (Ray's own opens SSH to all)"
        assert node.get("IamInstanceProfile", {}).get("Arn"), f"{name}: a scoped instance profile, not Ray's default"
    head_profile = types[config["head_node_type"]]["node_config"]["IamInstanceProfile"]["Arn"]
    worker_profiles = {t["node_config"]["IamInstanceProfile"]["Arn"] for t in workers.values()}
    assert head_profile not in worker_profiles, "workers get their own, narrower profile"


def test_cluster_launcher_config_passes_rays_own_validation():
    pytest.importorskip("jsonschema")
    util = pytest.importorskip("ray.autoscaler._private.util")
    prepared = util.prepare_config(_docs(LAUNCHER)[0])
    util.validate_config(prepared)
    assert prepared["head_setup_commands"] == [] and prepared["worker_setup_commands"] == []


# ------------------------------------------------------------------------------------------------- Dockerfile
def _build_args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    args = {}
    for word, rest in instructions:
        if word == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip().strip("\"'")
    return args


def test_dockerfile_base_image_is_ray_260_gpu_py311():
    instructions = _dockerfile_instructions()
    args = _build_args(instructions)
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert len(froms) == 1
    image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), froms[0].split()[0])
    repo, _, tag = image.partition(":")
    assert repo == "rayproject/ray", image
    assert tag.startswith(_constraint("ray") + "-"), f"{image}: the Ray version must match constraints.txt"
    assert "2.60" in tag and "-py311" in tag, image
    assert re.search(r"-(gpu|cu\d+)", tag), f"{image}: a GPU (CUDA) flavour is needed"


def test_dockerfile_installs_the_hashed_lock_and_then_the_package_without_resolving():
    instructions = _dockerfile_instructions()
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert re.search(r"pip install --require-hashes --no-deps -r requirements\.lock", runs), "the hashed lock"
    assert re.search(r"pip install --no-deps --no-build-isolation \.(\s|;|$)", runs), "the package, no resolution"
    assert "--index-url" not in runs and "--extra-index-url" not in runs, "PyPI's CUDA torch, from the lock"
    assert "torch.version.cuda" in runs, "the build fails on a CPU-only torch"
    copied = " ".join(rest for word, rest in instructions if word == "COPY")
    for needed in ("requirements.lock", "pyproject.toml", "constraints.txt", "search_space", "workers", "orchestrator"):
        assert needed in copied, f"COPY {needed}"


def test_dockerfile_bakes_the_commit_in_and_refuses_to_build_without_it():
    """RayJobs run the image's installed package (no .git): the commit comes as a build argument, checked."""
    instructions = _dockerfile_instructions()
    envs = " ".join(rest for word, rest in instructions if word == "ENV")
    assert f"{COMMIT_ENV_VAR}=${{GIT_COMMIT}}" in envs and f"{DIRTY_ENV_VAR}=${{GIT_DIRTY}}" in envs
    (check,) = [rest for word, rest in instructions if word == "RUN" and "GIT_COMMIT" in rest]
    good = {"GIT_COMMIT": "0123456789abcdef0123456789abcdef01234567", "GIT_DIRTY": "false"}
    for args, ok in (
        (good, True),
        ({**good, "GIT_DIRTY": "true"}, True),
        ({"GIT_COMMIT": "", "GIT_DIRTY": ""}, False),  # docker build without --build-arg
        ({**good, "GIT_COMMIT": "HEAD"}, False),
        ({**good, "GIT_DIRTY": ""}, False),
    ):
        ran = subprocess.run(["sh", "-c", check], env={"PATH": os.environ["PATH"], **args}, capture_output=True)
        assert (ran.returncode == 0) == ok, (args, ran.stderr)
        assert ok or b"--build-arg GIT_COMMIT=" in ran.stderr, ran.stderr
    text = README.read_text(encoding="utf-8")
    assert '--build-arg GIT_COMMIT="$(git rev-parse HEAD)"' in text, "the runbook's docker build passes the commit"


def test_dockerfile_runs_as_non_root_without_secrets():
    instructions = _dockerfile_instructions()
    users = [rest.split()[0] for word, rest in instructions if word == "USER"]
    assert users, "the Dockerfile needs a USER line"
    assert users[-1] not in {"root", "0", "0:0"}, "the image must not run as root"
    for word, rest in instructions:
        if word in {"ENV", "ARG", "LABEL"}:
            assert not re.search(r"(?i)password|passwd|secret|token|api_?key|access_?key", rest), f"{word} {rest}"
            assert not _secret_findings(rest), f"{word} {rest}"


def test_dockerignore_keeps_data_and_state_out_of_the_context():
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip()[:1] not in {"", "#"}
    }
    for needed in ("data", "runs", "mlruns", ".venv", "*.db", ".git", ".env", "weights", "**/*.pth"):
        assert needed in patterns, needed
    assert "!deployment/docker/requirements.lock" in patterns, "the lock is the one file of deployment/ it needs"


# ------------------------------------------------------------------------------------------------------ README
def test_readme_trilevel_commands_use_known_subcommands():
    lines = list(_shell_lines(README.read_text(encoding="utf-8")))
    used = [(line, sub) for line in lines for sub in _trilevel_subcommands(line)]
    assert any(sub == "submit" for _, sub in used), "the README shows `trilevel submit`"
    for line, sub in used:
        assert sub in TRILEVEL_COMMANDS, f"unknown trilevel subcommand {sub!r} in: {line}"


def test_readme_command_parser_finds_commands_in_every_position():
    assert _trilevel_subcommands("trilevel submit table8 --scale paper") == ["submit"]
    assert _trilevel_subcommands("kubectl exec -it pod -- trilevel data demo --out /x") == ["data"]
    assert _trilevel_subcommands("cd x && trilevel frobnicate") == ["frobnicate"]
    assert _trilevel_subcommands("kubectl get secret trilevel -o yaml") == []
    assert _trilevel_subcommands("docker build -t registry.example.com/trilevel-nas:0.1.0 .") == []


def test_rayjob_entrypoint_uses_a_known_subcommand():
    assert _trilevel_subcommands(_one("RayJob")["spec"]["entrypoint"]) == ["sweep"]


def test_readme_covers_the_guide():
    text = README.read_text(encoding="utf-8")
    for needed in (
        "pip install -c constraints.txt .",
        "docker build",
        "deployment/kustomization.yaml",
        "kubectl -n trilevel-nas wait --for=condition=complete job/trilevel-volume-layout",
        "kubectl -n trilevel-nas wait --for=condition=complete job/trilevel-prepare-data",
        "port-forward svc/trilevel-ray-head-svc 8265:8265",
        "port-forward svc/mlflow 5000:5000",
        "trilevel submit table8 --scale paper --address http://127.0.0.1:8265",
        "--dry-run",
        "--preflight",
        "N GPUs → N trials at once",
        "MLFLOW_TRACKING_URI",
        "--tracking-uri",
        "resources.gpus_per_worker",
        "RAY_AUTH_TOKEN",
        "S3",
        "## When things fail",
        "The Ray head pod dies or restarts",
        "gcs-ft",
        "mlflow/basic-auth",
        "ray get-auth-token --generate",
        "deployment/docker/lock.sh",
    ):
        assert needed in text, needed


def test_readme_passes_the_data_jobs_paths_to_submit():
    """The README's submit command reads exactly what the RayJob reads (the data Job's output)."""
    text = README.read_text(encoding="utf-8")
    submits = [line for line in _shell_lines(text) if "trilevel submit table8 --scale paper" in line]
    entry = shlex.split(_one("RayJob")["spec"]["entrypoint"])
    sets = {entry[i + 1] for i, token in enumerate(entry) if token == "--set"}
    assert any(sets <= set(shlex.split(line)) for line in submits), f"a README submit with every --set of {sets}"
