"""The objects a platform engineer applies beyond the Ray and MLflow basics, checked without a cluster.

- kustomization.yaml: lists every manifest, sets the image in one place, each object carries the step
  label the README applies it by;
- the "restricted" Pod Security fields on every pod and container (autoscaler sidecar and submitter too);
- every core Kubernetes object validates strictly against the Kubernetes 1.33 OpenAPI schema
  (`kubernetes-validate`), before and after the optional components' patches are applied;
- the NetworkPolicies admit exactly the pods they name; GPU replicas and max_concurrent_trials agree;
- the RayJob reads what the data Job writes; the launcher's IAM policies are scoped; the image lock
  pins what constraints.txt pins, with hashes, and the CUDA build of torch.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deployment.test_manifests import (
    DEPLOY,
    IMAGE_NAME,
    ROOT,
    SHARED_MOUNT,
    _constraint,
    _containers,
    _docs,
    _env,
    _pod_specs,
    _secret_findings,
)

K8S_VERSION = "1.33"
STEPS = {"storage", "mlflow", "data", "cluster", "sweep"}
CRD_KINDS = {"RayCluster", "RayJob"}
LOCK = DEPLOY / "docker" / "requirements.lock"
PREPARE = DEPLOY / "kuberay" / "prepare-data.sh"


def _kustomization(directory: Path) -> dict:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def _base() -> list[dict]:
    """The objects `kubectl apply -k deployment` creates (the generated ConfigMap aside), in file order."""
    return [doc for rel in _kustomization(DEPLOY)["resources"] for doc in _docs(DEPLOY / rel)]


def _component(name: str) -> tuple[list[dict], list[dict]]:
    """(its own objects, its patches) of a kustomize Component under deployment/."""
    spec = _kustomization(DEPLOY / name)
    assert spec["kind"] == "Component" and spec["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
    objects = [doc for rel in spec.get("resources", []) for doc in _docs(DEPLOY / name / rel)]
    return objects, spec.get("patches", [])


def _pointer_add(doc: Any, path: str, value: Any) -> None:
    """RFC 6902 `add` (what the components use): the parent must exist; `-` appends to a list."""
    *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]
    node = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node.append(value) if last == "-" else node.insert(int(last), value)
    else:
        assert isinstance(node, dict), path
        node[last] = value


def _matches(target: dict, obj: dict) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    return (
        target.get("kind", obj["kind"]) == obj["kind"]
        and target.get("group", group) == group
        and target.get("version", version) == version
        and target.get("name", obj["metadata"]["name"]) == obj["metadata"]["name"]
    )


def _with_components(*names: str) -> list[dict]:
    objects = copy.deepcopy(_base())
    for name in names:
        extra, patches = _component(name)
        objects += copy.deepcopy(extra)
        for patch in patches:
            hits = [obj for obj in objects if _matches(patch["target"], obj)]
            assert hits, f"{name}: patch target {patch['target']} matches nothing"
            for op in yaml.safe_load(patch["patch"]):
                assert op["op"] == "add", f"{name}: only add operations are used"
                for obj in hits:
                    _pointer_add(obj, op["path"], copy.deepcopy(op["value"]))
    return objects


def _labels_match(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        value, op = labels.get(expr["key"]), expr["operator"]
        wrong = {
            "In": value not in expr.get("values", []),
            "NotIn": value in expr.get("values", []),
            "Exists": value is None,
            "DoesNotExist": value is not None,
        }
        if wrong[op]:
            return False
    return True


def _pod_labels(objects: list[dict]) -> dict[str, dict]:
    """Template labels of every pod the objects create, by a readable name."""
    out = {}
    for obj in objects:
        spec = obj["spec"]
        if obj["kind"] in {"Deployment", "StatefulSet", "Job"}:
            out[obj["metadata"]["name"]] = spec["template"]["metadata"]["labels"]
        elif obj["kind"] in CRD_KINDS:
            cluster = spec if obj["kind"] == "RayCluster" else spec["rayClusterSpec"]
            name = obj["metadata"]["name"]
            out[f"{name}/head"] = cluster["headGroupSpec"]["template"]["metadata"]["labels"]
            for group in cluster["workerGroupSpecs"]:
                out[f"{name}/{group['groupName']}"] = group["template"]["metadata"]["labels"]
            if obj["kind"] == "RayJob":
                out[f"{name}/submitter"] = spec["submitterPodTemplate"]["metadata"]["labels"]
    return out


def _admitted(pods: dict[str, dict], rule: dict) -> set[str]:
    return {name for name, labels in pods.items() if any(_labels_match(f["podSelector"], labels) for f in rule["from"])}


# --- kustomization ---------------------------------------------------------------------------------------
def test_kustomization_lists_every_manifest_and_sets_the_image_in_one_place():
    spec = _kustomization(DEPLOY)
    listed = {DEPLOY / rel for rel in spec["resources"]}
    assert all(path.is_file() for path in listed)
    manifests = {path for folder in ("kuberay", "mlflow") for path in (DEPLOY / folder).glob("*.yaml")}
    manifests -= {DEPLOY / "mlflow" / "secret.example.yaml"}  # created from the command line, never applied
    assert manifests == listed, f"not in kustomization.yaml: {sorted(map(str, manifests - listed))}"
    (image,) = spec["images"]
    assert image["name"] == IMAGE_NAME and image["newName"] and (image.get("newTag") or image.get("digest"))
    (generator,) = spec["configMapGenerator"]
    assert [DEPLOY / f for f in generator["files"]] == [PREPARE]
    text = "\n".join(path.read_text() for path in listed)
    assert "registry.example.com" not in text, "the registry is named in kustomization.yaml only"


def test_every_object_carries_the_step_label_the_readme_applies_it_by():
    readme = (DEPLOY / "README.md").read_text()
    objects = _with_components("gcs-ft")
    for obj in objects:
        step = obj["metadata"].get("labels", {}).get("trilevel-nas/step")
        assert step in STEPS, f"{obj['kind']} {obj['metadata']['name']}: trilevel-nas/step must be one of {STEPS}"
    generator_labels = _kustomization(DEPLOY)["configMapGenerator"][0]["options"]["labels"]
    assert generator_labels["trilevel-nas/step"] == "data", "the data Job's script is applied with it"
    for step in STEPS:
        assert f"apply -k deployment -l trilevel-nas/step={step}" in readme, f"the README applies step {step}"


# --- restricted Pod Security, schema ----------------------------------------------------------------------
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


@pytest.mark.parametrize(
    "components", [(), ("gcs-ft", "mlflow/basic-auth", "mlflow/postgres")], ids=["base", "all-components"]
)
def test_every_pod_and_container_has_the_restricted_fields(components):
    for obj in _with_components(*components):
        for where, pod in _pod_specs(obj):
            context = pod.get("securityContext", {})
            name = f"{obj['kind']} {obj['metadata']['name']} {where}"
            assert context.get("runAsNonRoot") is True and context.get("runAsUser", 0) > 0, name
            assert context.get("seccompProfile") == {"type": "RuntimeDefault"}, name
            if "fsGroup" in context:
                assert context.get("fsGroupChangePolicy") == "OnRootMismatch", f"{name}: no recursive chown"
            assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), name
            assert not any("hostPath" in v for v in pod.get("volumes", [])), f"{name}: hostPath"
            for container in _containers(pod):
                assert container.get("securityContext") == RESTRICTED_CONTAINER, f"{name}/{container['name']}"
                assert container.get("resources", {}).get("limits"), f"{name}/{container['name']}: limits"
        if obj["kind"] in CRD_KINDS:
            cluster = obj["spec"] if obj["kind"] == "RayCluster" else obj["spec"]["rayClusterSpec"]
            sidecar = cluster.get("autoscalerOptions", {}).get("securityContext")
            assert sidecar == RESTRICTED_CONTAINER, f"{obj['metadata']['name']}: the autoscaler sidecar"


@pytest.mark.parametrize(
    "components",
    [(), ("gcs-ft",), ("mlflow/basic-auth",), ("mlflow/postgres",)],
    ids=["base", "gcs-ft", "mlflow-basic-auth", "mlflow-postgres"],
)
def test_core_objects_validate_strictly_against_the_kubernetes_schema(components):
    import kubernetes_validate  # a dev dependency (pyproject.toml)

    for obj in _with_components(*components):
        if obj["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_component_patches_keep_credentials_in_secrets():
    objects = _with_components("gcs-ft", "mlflow/basic-auth", "mlflow/postgres")
    (cluster,) = [o for o in objects if o["kind"] == "RayCluster"]
    ft = cluster["spec"]["gcsFaultToleranceOptions"]
    assert ft["redisAddress"] == "trilevel-redis:6379"
    assert ft["redisPassword"]["valueFrom"]["secretKeyRef"] == {"name": "trilevel-redis", "key": "password"}
    redis = next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "trilevel-redis")
    assert redis["spec"]["ports"][0]["port"] == 6379
    for obj in objects:
        for where, pod in _pod_specs(obj):
            for container in _containers(pod):
                for name, entry in _env(container).items():
                    if re.search(r"PASSWORD|TOKEN|USERNAME", name):
                        where_name = f"{obj['metadata']['name']}/{where}: {name}"
                        assert "secretKeyRef" in entry.get("valueFrom", {}), where_name
                for arg in container.get("command", []) + container.get("args", []):
                    assert not _secret_findings(str(arg))
    mlflow = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "mlflow")
    server = mlflow["spec"]["template"]["spec"]["containers"][0]
    assert server["args"][-2:] == ["--app-name", "basic-auth"]
    ray_pods = [pod for o in objects if o["kind"] in CRD_KINDS for where, pod in _pod_specs(o) if where != "submitter"]
    assert len(ray_pods) == 4
    for pod in ray_pods:
        env = _env(pod["containers"][0])
        assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-client"


# --- network policies -------------------------------------------------------------------------------------
def test_mlflow_admits_only_the_ray_pods():
    objects = _with_components("gcs-ft")
    pods = _pod_labels(objects)
    (policy,) = [o for o in objects if o["kind"] == "NetworkPolicy" and o["metadata"]["name"].startswith("mlflow-")]
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    assert _labels_match(spec["podSelector"], pods["mlflow"])
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 5000}]
    admitted = _admitted(pods, rule)
    ray = {"trilevel-ray/head", "trilevel-ray/gpu", "trilevel-table8/head", "trilevel-table8/gpu"}
    assert admitted == ray, f"admitted: {sorted(admitted)}"
    assert all(set(f) == {"podSelector"} for f in rule["from"]), "no namespaceSelector or ipBlock: this namespace only"


def test_postgres_is_mlflows_store_reached_by_mlflow_only():
    """The mlflow/postgres component: its password from a Secret, only MLflow admitted, the runbook's URI fits."""
    objects = _with_components("mlflow/postgres")
    pods = _pod_labels(objects)
    (database,) = [o for o in objects if o["kind"] == "StatefulSet"]
    env = _env(database["spec"]["template"]["spec"]["containers"][0])
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-postgres", "key": "password"}
    user, db = env["POSTGRES_USER"]["value"], env["POSTGRES_DB"]["value"]
    assert env["PGDATA"]["value"].startswith(
        database["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] + "/"
    )
    (claim,) = database["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"], "its own block volume, not the shared one"
    (service,) = [
        o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == database["spec"]["serviceName"]
    ]
    port = service["spec"]["ports"][0]["port"]
    (policy,) = [o for o in objects if o["kind"] == "NetworkPolicy" and o["metadata"]["name"].startswith("postgres-")]
    assert _labels_match(policy["spec"]["podSelector"], pods["mlflow-postgres"])
    (rule,) = policy["spec"]["ingress"]
    assert _admitted(pods, rule) == {"mlflow"} and rule["ports"] == [{"protocol": "TCP", "port": port}]
    readme = (DEPLOY / "README.md").read_text()
    uri = f"postgresql+psycopg2://{user}:$PGPASSWORD@{service['metadata']['name']}:{port}/{db}"
    assert f'--from-literal=backend-store-uri="{uri}"' in readme, "the runbook's mlflow-db Secret names this database"
    assert '--from-literal=password="$PGPASSWORD"' in readme and "- mlflow/postgres" in readme
    assert "- mlflow/postgres" in (DEPLOY / "kustomization.yaml").read_text(), "listed (commented) with the others"


def test_redis_admits_only_the_ray_heads():
    objects = _with_components("gcs-ft")
    pods = _pod_labels(objects)
    (policy,) = [o for o in objects if o["kind"] == "NetworkPolicy" and o["metadata"]["name"].startswith("redis-")]
    assert _labels_match(policy["spec"]["podSelector"], pods["trilevel-redis"])
    (rule,) = policy["spec"]["ingress"]
    admitted = _admitted(pods, rule)
    assert admitted == {"trilevel-ray/head", "trilevel-table8/head"}


# --- sizing and paths -------------------------------------------------------------------------------------
def _rayjob() -> dict:
    return next(o for o in _base() if o["kind"] == "RayJob")


def _sets(entrypoint: str) -> dict[str, str]:
    tokens = shlex.split(entrypoint)
    return dict(tokens[i + 1].split("=", 1) for i, token in enumerate(tokens) if token == "--set")


def test_gpu_replicas_and_concurrent_trials_are_sized_together():
    """N GPUs → N trials at once: maxReplicas × GPUs per pod = max_concurrent_trials of the RayJob."""
    job = _rayjob()
    (group,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    per_pod = group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    gpus = group["maxReplicas"] * int(per_pod)
    assert int(_sets(job["spec"]["entrypoint"])["resources.max_concurrent_trials"]) == gpus
    cluster = next(o for o in _base() if o["kind"] == "RayCluster")
    assert cluster["spec"]["workerGroupSpecs"][0]["maxReplicas"] == group["maxReplicas"]
    assert f"--set resources.max_concurrent_trials={gpus}" in (DEPLOY / "README.md").read_text()


def test_the_rayjob_reads_what_the_data_job_writes():
    script = PREPARE.read_text()
    sets = _sets(_rayjob()["spec"]["entrypoint"])
    paths = {key: value for key, value in sets.items() if value.startswith(f"{SHARED_MOUNT}/")}
    assert set(paths) == {
        "data.train", "data.val.DIV2K", "data.test.Set5", "data.test.Set14", "supervision.weights",
        "perceptual.vgg_weights",
    }  # fmt: skip
    for key, path in paths.items():
        relative = path.removeprefix(f"{SHARED_MOUNT}/")
        folder, name = relative.split("/", 1)
        if folder == "data":
            assert f'--out "$VOLUME/{relative}"' in script, f"{key}: prepare-data.sh must write {path}"
        else:
            assert f"weights {name} " in script, f"{key}: prepare-data.sh must put {name} in weights/"
    job = next(o for o in _base() if o["kind"] == "Job" and o["metadata"]["name"] == "trilevel-prepare-data")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert _env(container)["TRILEVEL_VOLUME"]["value"] == SHARED_MOUNT
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert SHARED_MOUNT in mounts and container["command"] == ["bash", "/opt/trilevel/prepare-data.sh"]


# --- cluster launcher IAM --------------------------------------------------------------------------------
def _statements(name: str) -> list[dict]:
    policy = json.loads((DEPLOY / "cluster-launcher" / "iam" / name).read_text())
    assert policy["Version"] == "2012-10-17"
    return policy["Statement"]


def _listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def test_worker_profile_reaches_the_storage_prefix_only():
    for statement in _statements("worker-policy.json"):
        assert statement["Effect"] == "Allow"
        assert all(action.startswith("s3:") and "*" not in action for action in _listed(statement["Action"]))
        for resource in _listed(statement["Resource"]):
            assert resource.startswith("arn:aws:s3:::BUCKET-SET-ME"), resource


def test_head_profile_is_scoped_to_this_cluster():
    statements = _statements("head-policy.json")
    for statement in statements:
        assert statement["Effect"] == "Allow"
        assert all("*" not in action for action in _listed(statement["Action"])), statement["Sid"]
        actions = set(_listed(statement["Action"]))
        if actions & {"ec2:TerminateInstances", "ec2:StopInstances"}:
            assert statement["Condition"]["StringEquals"]["aws:ResourceTag/ray-cluster-name"] == "trilevel-gpu"
        if "iam:PassRole" in actions:
            assert _listed(statement["Resource"]) == ["arn:aws:iam::ACCOUNT-ID-SET-ME:role/trilevel-ray-worker"]
        if any(a.startswith("s3:") for a in actions):
            assert all(r.startswith("arn:aws:s3:::BUCKET-SET-ME") for r in _listed(statement["Resource"]))
    launcher = yaml.safe_load((DEPLOY / "cluster-launcher" / "trilevel-gpu.yaml").read_text())
    assert launcher["cluster_name"] == "trilevel-gpu", "the tag the head policy is scoped to"


# --- the image lock ---------------------------------------------------------------------------------------
def _locked() -> dict[str, tuple[str, list[str]]]:
    """name → (version, hashes) of requirements.lock."""
    out: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in LOCK.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line):
            current = match.group(1).lower().replace("_", "-")
            out[current] = (match.group(2), [])
        elif current and (match := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            out[current][1].append(match.group(1))
    return out


def test_the_image_lock_pins_every_package_with_hashes_and_agrees_with_constraints():
    locked = _locked()
    assert len(locked) > 50
    for name, (_, hashes) in locked.items():
        assert hashes, f"{name} has no hash"
    for name in ("torch", "ray", "mlflow", "mlflow-skinny"):
        assert locked[name][0] == _constraint(name), f"{name}: lock {locked[name][0]} != constraints.txt"
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line):
            name = match.group(1).lower().replace("_", "-")
            if name in locked:
                assert locked[name][0] == match.group(2), f"{name}: lock {locked[name][0]} != constraints.txt"
    assert any(name.startswith("nvidia-cuda-runtime") for name in locked), "the CUDA build of torch (its runtime)"
    assert any(name.startswith("nvidia-cudnn") for name in locked)
    assert "setuptools" in locked, "the package builds without network (--no-build-isolation)"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-")
        assert name in locked, f"{name} (pyproject.toml) is missing from the lock"
    assert "lock.sh" in LOCK.read_text().splitlines()[1] + LOCK.read_text().splitlines()[0]


# --- the shared volume's root: writable by uid 1000 without a chown ---------------------------------------
STORAGE_CLASSES = sorted((DEPLOY / "storage").glob("*.yaml"))


def _layout_job() -> dict:
    (job,) = [o for o in _base() if o["kind"] == "Job" and o["metadata"]["name"] == "trilevel-volume-layout"]
    return job


@pytest.mark.parametrize("path", STORAGE_CLASSES, ids=lambda p: p.name)
def test_each_storage_class_gives_a_root_the_image_user_can_write(path):
    import kubernetes_validate  # a dev dependency (pyproject.toml)

    (storage_class,) = _docs(path)
    kubernetes_validate.validate(storage_class, K8S_VERSION, strict=True)
    assert storage_class["metadata"]["name"] == "trilevel-rwx", "the name pvc.yaml and the README use"
    assert "storageClassName: trilevel-rwx" in (DEPLOY / "kuberay" / "pvc.yaml").read_text()
    assert path.relative_to(DEPLOY).as_posix() not in (DEPLOY / "kustomization.yaml").read_text(), "cluster-scoped"
    pod = _layout_job()["spec"]["template"]["spec"]["securityContext"]
    uid, gid = str(pod["runAsUser"]), str(pod["runAsGroup"])
    params, options = storage_class.get("parameters", {}), storage_class.get("mountOptions", [])
    if storage_class["provisioner"] == "efs.csi.aws.com":
        assert (params["provisioningMode"], params["uid"], params["gid"]) == ("efs-ap", uid, gid)
    elif storage_class["provisioner"] == "nfs.csi.k8s.io":
        assert params["mountPermissions"] == "0777", "a root-owned share: the per-claim folder must be writable"
    elif storage_class["provisioner"] == "file.csi.azure.com":
        assert f"uid={uid}" in options and f"gid={gid}" in options
    else:
        pytest.fail(f"{path.name}: {storage_class['provisioner']} — how is its root writable by uid {uid}?")
    assert f"`storage/{path.name}`" in (DEPLOY / "README.md").read_text(), "the runbook's table names it"


def _run_layout(mount: Path, as_user: list[str]) -> subprocess.CompletedProcess:
    (script,) = _layout_job()["spec"]["template"]["spec"]["containers"][0]["args"]
    script = script.replace(SHARED_MOUNT, str(mount))
    return subprocess.run([*as_user, "sh", "-c", script], capture_output=True, text=True, timeout=60)


def test_the_layout_job_lays_out_a_writable_root_and_names_the_fix_for_a_root_owned_one(tmp_path):
    mount = tmp_path / "volume"
    mount.mkdir()
    ran = _run_layout(mount, [])
    assert ran.returncode == 0, ran.stderr
    assert {p.name for p in mount.iterdir()} == {"raw", "data", "weights", "runs", "mlflow"}
    assert (mount / "mlflow" / "artifacts").is_dir()
    assert _run_layout(mount, []).returncode == 0, "idempotent"
    # a share the job's user cannot write (as root here: drop to another uid, as the pod runs; pytest's own
    # temporary folders are private to root, so this one is made where any uid can reach it)
    with tempfile.TemporaryDirectory() as outside:
        locked = Path(outside) / "locked"
        locked.mkdir()
        Path(outside).chmod(0o755)
        locked.chmod(0o755)
        if os.geteuid() == 0:
            if shutil.which("setpriv") is None:
                pytest.skip("needs setpriv to run as a non-root user")
            user = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
        else:
            locked.chmod(0o555)
            user = []
        ran = _run_layout(locked, user)
        assert ran.returncode == 1 and not any(locked.iterdir()), ran.stderr
        assert "cannot write it" in ran.stderr and "deployment/storage/" in ran.stderr and "step 3" in ran.stderr
        locked.chmod(0o755)


# --- the data Job's downloads: pinned sizes and SHA-256 digests ------------------------------------------
PIN_SOURCES = ("DIV2K", "DIV2K_VAL", "FLICKR2K", "VGG19", "SET5", "SET14", "ESRGAN", "PSNR")


def _prepare(snippet: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """Run `snippet` in bash with prepare-data.sh sourced (its functions only), as the Job's env would."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # its `python` downloads
    return subprocess.run(
        ["bash", "-c", f'set -euo pipefail; source "{PREPARE}"; {snippet}'],
        env={"PATH": path, "HOME": str(cwd), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_data_job_pins_every_download_and_ships_no_invented_digest():
    job = next(o for o in _base() if o["kind"] == "Job" and o["metadata"]["name"] == "trilevel-prepare-data")
    env = _env(job["spec"]["template"]["spec"]["containers"][0])
    for name in PIN_SOURCES:
        assert env[f"{name}_BYTES"]["value"] == env[f"{name}_SHA256"]["value"] == "", f"{name}: SET-ME, empty"
        assert f"{name}_URL" in env or f"{name}_URL=${{{name}_URL-http" in PREPARE.read_text()


def test_the_data_job_refuses_to_start_without_pins(tmp_path):
    ran = _prepare("check_pins", {}, tmp_path)  # the official URLs of DIV2K (train, val), Flickr2K and VGG19 are set
    assert ran.returncode == 1, ran.stdout
    for name in ("DIV2K", "DIV2K_VAL", "FLICKR2K", "VGG19"):
        assert f"{name}_BYTES=''" in ran.stderr and f"{name}_SHA256=''" in ran.stderr
    assert "SET5_BYTES" not in ran.stderr, "a source without a URL (copied in) needs no pin"
    assert "step 5" in ran.stderr
    no_urls = {"DIV2K_URL": "", "DIV2K_VAL_URL": "", "FLICKR2K_URL": "", "VGG19_URL": ""}
    assert _prepare("check_pins", no_urls, tmp_path).returncode == 0
    pinned = {"DIV2K_URL": "", "DIV2K_VAL_URL": "", "FLICKR2K_URL": "", "VGG19_BYTES": "548", "VGG19_SHA256": "ab" * 32}
    ran = _prepare("check_pins", pinned, tmp_path)
    assert ran.returncode == 1 and "starts with dcbb9e9d" in ran.stderr, "torchvision's name carries its digest"
    ran = _prepare("check_pins", {**pinned, "VGG19_SHA256": "dcbb9e9d" + "0" * 56}, tmp_path)
    assert ran.returncode == 0, ran.stderr


def test_a_download_is_unpacked_only_when_its_size_and_digest_match(tmp_path):
    import hashlib
    import zipfile

    archive = tmp_path / "Set5.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("Set5/baby.png", b"\x89PNG not really")
    data = archive.read_bytes()
    url = archive.as_uri()
    good = {"SET5_URL": url, "SET5_BYTES": str(len(data)), "SET5_SHA256": hashlib.sha256(data).hexdigest()}
    volume = tmp_path / "volume"
    (volume / "raw").mkdir(parents=True)
    step = 'images Set5 "$SET5_URL" Set5 SET5'
    for wrong, says in (
        ({"SET5_SHA256": "0" * 64}, "has SHA-256"),
        ({"SET5_BYTES": str(len(data) + 1)}, f"is {len(data)} bytes, pinned {len(data) + 1}"),
    ):
        ran = _prepare(step, {**good, **wrong}, volume)
        assert ran.returncode == 1 and says in ran.stderr and "not used" in ran.stderr, ran.stderr
        assert list((volume / "raw").iterdir()) == [], "nothing unpacked, nothing left behind"
    ran = _prepare(step, good, volume)
    assert ran.returncode == 0, ran.stderr
    assert (volume / "raw" / "Set5" / "baby.png").read_bytes() == b"\x89PNG not really"
    assert [p.name for p in (volume / "raw").iterdir()] == ["Set5"]
    # a weights file downloaded the same way, and one already present that does not match its pins
    weights = {"PSNR_URL": url, "PSNR_BYTES": str(len(data)), "PSNR_SHA256": good["SET5_SHA256"]}
    (volume / "weights").mkdir()
    assert _prepare('weights RRDB_PSNR_x4.pth "$PSNR_URL" PSNR', weights, volume).returncode == 0
    assert (volume / "weights" / "RRDB_PSNR_x4.pth").read_bytes() == data
    (volume / "weights" / "RRDB_PSNR_x4.pth").write_bytes(b"tampered")
    ran = _prepare('weights RRDB_PSNR_x4.pth "$PSNR_URL" PSNR', weights, volume)
    assert ran.returncode == 1 and "not used" in ran.stderr
