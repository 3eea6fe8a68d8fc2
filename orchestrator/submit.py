"""Submitting a sweep to a running Ray cluster as a Ray Job.

Why a job and not `trilevel sweep --address ray://…`: the sweep driver then runs *on the cluster's
head*, so it survives the laptop going to sleep or the port-forward dropping, and its output is kept
by the cluster (`trilevel logs`). Reaching the job server and following the job is
:mod:`orchestrator.jobs`; what the job uploads is :mod:`orchestrator.job_upload`.

How a submission is built:

* The experiment is resolved and validated **locally first** (`load_experiment`), so a typo is a
  clear error before anything is uploaded, and the submission id carries a short hash of the
  resolved config: ``trilevel-<sweep>-<hash8>-<unix time>``. The job's metadata names its sweep
  (``trilevel.sweep``, as MLflow's tags do) and its tracking URI, so `trilevel jobs`/`status ID`
  point at the sweep's progress in MLflow.
* The entrypoint is `python -m orchestrator sweep … --address auto`: the job runs on the head, where
  the job supervisor sets ``RAY_ADDRESS`` to the cluster it belongs to. A preset is passed by name
  with the same `--scale`/`--set` arguments; an experiment *file* exists only on this machine, so its
  resolved YAML travels in the environment variable ``TRILEVEL_EXPERIMENT_YAML`` and is written to a
  temporary file on the head.
* The code travels in the job's ``runtime_env`` (``working_dir``: :mod:`orchestrator.job_upload`);
  ``env_vars`` turn on Ray Train V2, point MLflow at the tracking URI, turn off usage stats and carry
  the uploaded code's provenance (git commit, dirty flag, package version: the upload has no
  ``.git``), so every run of the job is tagged with the submitting checkout's commit. They also
  make `trilevel stop` a Ctrl-C (:data:`STOP_AS_CTRL_C`): the job supervisor then sends the driver
  SIGINT, not SIGTERM, and waits a minute before SIGKILL, so the driver ends its trials and MLflow
  runs KILLED and exits non-zero, as it does on Ctrl-C in a terminal.
* Paths are resolved **on the cluster**, not here: `--storage` must be absolute or a URI (a
  relative path would land in the job's temporary working directory), and on a multi-node cluster
  it must be a volume every node mounts or ``s3://…``/``gs://…``. A local folder only works when the
  cluster is one machine. The same holds for a ``sqlite:///`` tracking URI; an MLflow server is the
  normal choice. An ``http(s)`` tracking server is checked from here before submitting, unless
  ``check_tracking=False`` (a server only the cluster can resolve, e.g. ``http://mlflow:5000``).

`submit_reproduce` submits `trilevel reproduce` (Tables 7-9 and Fig. 1, each distinct stage computed
once) the same way: its sweeps are resolved and checked here, the job runs `python -m orchestrator
reproduce … --address auto` on the head, names all its sweeps in its metadata, and `--dry-run` makes it
print the plan (arms and stages requested, distinct, already stored on the cluster's storage) and stop.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlparse

import yaml

from orchestrator.experiment import Experiment, load_experiment, with_random, with_seeds
from orchestrator.job_upload import upload_dir, upload_excludes
from orchestrator.jobs import TRACKING_URI_KEY, SubmitError, job_call, job_client, wait_for_job
from orchestrator.reproduce import ALL_TABLES
from orchestrator.tracking import SWEEP_TAG, Tracker, code_provenance, sqlite_path

# Read by Ray's job supervisor (it runs with the job's env_vars): stop a job as Ctrl-C stops a sweep.
STOP_AS_CTRL_C = {"RAY_JOB_STOP_SIGNAL": "SIGINT", "RAY_JOB_STOP_WAIT_TIME_S": "60"}

__all__ = [
    "EXPERIMENT_ENV_VAR",
    "REPRODUCE",
    "STOP_AS_CTRL_C",
    "build_entrypoint",
    "build_reproduce_entrypoint",
    "build_runtime_env",
    "reproduce_target",
    "submission_id_for",
    "submit_reproduce",
    "submit_sweep",
]

EXPERIMENT_ENV_VAR = "TRILEVEL_EXPERIMENT_YAML"
REPRODUCE = "reproduce"  # `trilevel submit reproduce …` submits `trilevel reproduce`, not a sweep
_PYTHON = "python"  # the cluster image's interpreter, with trilevel-nas's dependencies installed


def _is_local_relative(uri: str) -> bool:
    if (database := sqlite_path(uri)) is not None:
        return not os.path.isabs(database)
    return "://" not in uri and not os.path.isabs(uri)


def _check_cluster_paths(experiment: Experiment) -> None:
    if _is_local_relative(experiment.storage):
        raise SubmitError(
            f"The storage {experiment.storage!r} (--storage, or the experiment's storage) is relative, but the "
            "job resolves it on the cluster, inside its temporary working directory. Give an absolute path on a "
            "volume every node mounts (e.g. /mnt/trilevel/runs) or s3://…/gs://…."
        )
    if _is_local_relative(experiment.tracking.uri):
        raise SubmitError(
            f"The tracking URI {experiment.tracking.uri!r} (--tracking-uri, or the experiment's tracking.uri) is "
            "a relative local path, which the job would resolve on the cluster. Pass the MLflow server as the "
            "cluster sees it, e.g. --tracking-uri http://mlflow:5000."
        )


def _config_hash(experiment: Experiment) -> str:
    resolved = json.dumps(experiment.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(resolved.encode()).hexdigest()[:8]


def submission_id_for(experiment: Experiment, now: float | None = None) -> str:
    """``trilevel-<sweep>-<8 hex of the resolved config>-<unix time>``: same config, same middle part."""
    return f"trilevel-{experiment.name}-{_config_hash(experiment)}-{int(time.time() if now is None else now)}"


def _is_file(experiment: str) -> bool:
    path = Path(experiment)
    return path.suffix in (".yaml", ".yml") or path.exists()


def _replicates(seeds: int | None, random_draws: int | None) -> list[str]:
    return (["--seeds", str(seeds)] if seeds is not None else []) + (
        ["--random", str(random_draws)] if random_draws is not None else []
    )


def build_entrypoint(
    experiment: str,
    resolved: Experiment,
    scale: str,
    overrides: Sequence[str],
    dry_run: bool = False,
    seeds: int | None = None,
    random_draws: int | None = None,
) -> str:
    """The job's shell command. A preset keeps its arguments; a file's resolved YAML (its seed and random
    axes included) comes from the env."""
    tail = ["--name", resolved.name, "--storage", resolved.storage, "--tracking-uri", resolved.tracking.uri]
    tail += ["--address", "auto"] + (["--dry-run"] if dry_run else [])
    if not _is_file(experiment):
        args = [_PYTHON, "-m", "orchestrator", "sweep", experiment, "--scale", scale]
        for item in overrides:
            args += ["--set", item]
        return shlex.join(args + _replicates(seeds, random_draws) + tail)
    target = f'"$d"/{shlex.quote(resolved.name + ".yaml")}'
    run = shlex.join([_PYTHON, "-m", "orchestrator", "sweep"]) + f" {target} " + shlex.join(tail)
    return f'd="$(mktemp -d)" && printenv {EXPERIMENT_ENV_VAR} > {target} && {run}'


def build_runtime_env(
    experiment: str, resolved: Experiment, upload: str, echo: Callable[[str], None]
) -> dict[str, object]:
    """The job's runtime_env: `upload` as its working_dir (large files left out, each named through `echo`)
    and env vars for Ray, MLflow, the uploaded code's provenance and, for a file, the resolved experiment."""
    extra = {}
    if _is_file(experiment):
        extra[EXPERIMENT_ENV_VAR] = yaml.safe_dump(resolved.model_dump(mode="json"), sort_keys=False)
    return _runtime_env(resolved.tracking.uri, upload, echo, extra)


def _runtime_env(
    tracking_uri: str, upload: str, echo: Callable[[str], None], extra: dict[str, str]
) -> dict[str, object]:
    env_vars = {
        "RAY_TRAIN_V2_ENABLED": "1",
        "MLFLOW_TRACKING_URI": tracking_uri,
        "RAY_USAGE_STATS_ENABLED": "0",
        **code_provenance(Path(upload)),
        **STOP_AS_CTRL_C,
        **extra,
    }
    return {"working_dir": upload, "excludes": upload_excludes(upload, echo), "env_vars": env_vars}


def submit_sweep(
    experiment: str,
    *,
    address: str,
    scale: str = "tiny",
    overrides: Sequence[str] = (),
    name: str | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    wait: bool = False,
    working_dir: str | None = None,
    check_tracking: bool = True,
    echo: Callable[[str], None] | None = None,
    dry_run: bool = False,
    seeds: int | None = None,
    random_draws: int | None = None,
) -> str:
    """Submit the sweep of `experiment` (a preset or a YAML file) as a Ray Job; return its submission id.

    `address` is the head's job server (``http://<head>:8265``). `storage` and `tracking_uri` are
    what the *cluster* sees: an absolute path or ``s3://…`` (a local folder only works on a
    single-machine cluster; multi-node needs shared or object storage) and an MLflow server the
    nodes reach. With `wait`, the job's logs go to `echo` (default: stdout) until it ends, and
    :class:`JobFailed` is raised unless it SUCCEEDED. `working_dir` replaces the uploaded source
    root (it must contain the three packages). With `dry_run`, the job runs the sweep's `--dry-run` on
    the cluster (paths, weights, volume, MLflow and GPUs checked where the sweep would run; nothing
    started) and this waits for it. Large files (`LARGE_FILE_BYTES`) are left out of the upload, each
    named through `echo`. `seeds` and `random_draws` are `trilevel sweep`'s `--seeds` and `--random`.

    Raises:
        ExperimentError: the experiment does not validate (nothing was submitted).
        TrackingUnavailable: an http(s) tracking server does not answer (unless `check_tracking` is False).
        SubmitError: relative paths, an unreachable job server, a rejected submission.
    """
    fields = {"name": name, "storage": storage, "tracking.uri": tracking_uri}
    resolved = load_experiment(experiment, scale, overrides, **{k: v for k, v in fields.items() if v is not None})
    if seeds is not None:
        resolved = with_seeds(resolved, seeds)
    if random_draws is not None:
        resolved = with_random(resolved, random_draws)
    _check_cluster_paths(resolved)
    return _submit(
        address,
        submission_id_for(resolved) + ("-dry-run" if dry_run else ""),
        build_entrypoint(experiment, resolved, scale, overrides, dry_run, seeds, random_draws),
        tracking_uri=resolved.tracking.uri,
        sweeps=[resolved.name],
        config_hash=_config_hash(resolved),
        runtime_env=lambda upload, say: build_runtime_env(experiment, resolved, upload, say),
        wait=wait or dry_run,
        working_dir=working_dir,
        check_tracking=check_tracking,
        echo=echo,
    )


def reproduce_target(
    scale: str,
    seeds: int,
    tables: Sequence[str],
    overrides: Sequence[str] = (),
    random_draws: int | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
) -> list[Experiment]:
    """The sweeps `trilevel reproduce` would run with these options, resolved here (data is not read: that
    is the cluster's), their storage and tracking URI checked as a job needs them."""
    from orchestrator.reproduce import reproduce_experiments

    fields = {"storage": storage, "tracking.uri": tracking_uri}
    experiments = reproduce_experiments(
        scale, seeds, tables, overrides, random_draws, **{k: v for k, v in fields.items() if v is not None}
    )
    for experiment in experiments:
        _check_cluster_paths(experiment)
    return experiments


def build_reproduce_entrypoint(
    experiments: Sequence[Experiment],
    scale: str,
    seeds: int,
    tables: Sequence[str],
    overrides: Sequence[str],
    random_draws: int | None = None,
    dry_run: bool = False,
) -> str:
    """The job's shell command: `trilevel reproduce` with the same options, on the head's Ray."""
    first = experiments[0]
    args = [_PYTHON, "-m", "orchestrator", REPRODUCE, "--scale", scale, "--seeds", str(seeds)]
    args += ["--tables", ",".join(tables), *_replicates(None, random_draws)]
    for item in overrides:
        args += ["--set", item]
    args += ["--storage", first.storage, "--tracking-uri", first.tracking.uri, "--address", "auto"]
    return shlex.join(args + (["--dry-run"] if dry_run else []))


def submit_reproduce(
    *,
    address: str,
    scale: str = "tiny",
    seeds: int = 1,
    tables: Sequence[str] = ALL_TABLES,
    overrides: Sequence[str] = (),
    random_draws: int | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    wait: bool = False,
    working_dir: str | None = None,
    check_tracking: bool = True,
    echo: Callable[[str], None] | None = None,
    dry_run: bool = False,
) -> str:
    """Submit `trilevel reproduce` (the tables' sweeps, each distinct stage once) as a Ray Job; its submission id.

    Paths, tracking, upload and `wait` as :func:`submit_sweep`. With `dry_run`, the job prints the plan
    (arms and stages requested vs distinct vs already stored on the cluster's storage, the estimate), runs
    nothing, and this waits for it. The job's metadata names every sweep it runs, comma-separated.

    Raises:
        ExperimentError: bad scale, tables, seeds or overrides (nothing was submitted).
        TrackingUnavailable, SubmitError: as :func:`submit_sweep`.
    """
    experiments = reproduce_target(scale, seeds, tables, overrides, random_draws, storage, tracking_uri)
    tables = list(dict.fromkeys(tables))
    resolved = json.dumps([e.model_dump(mode="json") for e in experiments], sort_keys=True)
    config_hash = hashlib.sha256(resolved.encode()).hexdigest()[:8]
    submission_id = f"trilevel-{REPRODUCE}-{scale}-{config_hash}-{int(time.time())}" + ("-dry-run" if dry_run else "")
    uri = experiments[0].tracking.uri
    return _submit(
        address,
        submission_id,
        build_reproduce_entrypoint(experiments, scale, seeds, tables, overrides, random_draws, dry_run),
        tracking_uri=uri,
        sweeps=[e.name for e in experiments],
        config_hash=config_hash,
        runtime_env=lambda upload, say: _runtime_env(uri, upload, say, {}),
        wait=wait or dry_run,
        working_dir=working_dir,
        check_tracking=check_tracking,
        echo=echo,
    )


def _submit(
    address: str,
    submission_id: str,
    entrypoint: str,
    *,
    tracking_uri: str,
    sweeps: Sequence[str],
    config_hash: str,
    runtime_env: Callable[[str, Callable[[str], None]], dict[str, object]],
    wait: bool,
    working_dir: str | None,
    check_tracking: bool,
    echo: Callable[[str], None] | None,
) -> str:
    """Check the tracking server, upload the code, submit `entrypoint` under `submission_id`; wait if asked."""
    if check_tracking and urlparse(tracking_uri).scheme in ("http", "https"):
        Tracker.check_reachable(tracking_uri)
    client = job_client(address)
    say = echo or (lambda text: (sys.stderr.write(text), sys.stderr.flush()))
    with upload_dir(working_dir) as upload:
        env = runtime_env(upload, say)
        job_call(
            address,
            None,
            "submit the job",
            lambda: client.submit_job(
                entrypoint=entrypoint,
                submission_id=submission_id,
                runtime_env=env,
                metadata={
                    SWEEP_TAG: ",".join(sweeps),
                    TRACKING_URI_KEY: tracking_uri,
                    "trilevel.config_hash": config_hash,
                },
            ),
        )
    if wait:
        wait_for_job(address, submission_id, echo=echo)
    return submission_id
