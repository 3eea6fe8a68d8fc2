"""A trained network from wherever a trial left it: a checkpoint, an MLflow run, ``best:<sweep>``, the registry.

Why it looks like this:

* **Sources.** A trained network lives in three places: the train stage's checkpoint directory
  (``state.pt`` + ``genotype.json``, read as data with ``torch.load(weights_only=True)``), the
  trial's MLflow run (logged model ``model``, reachable by run id), and the model registry
  (``models:/<name>/<version>``, ``models:/<name>@<alias>``). ``best:<sweep>`` names the run of the
  sweep's best finished trial (highest validation PSNR of its chosen checkpoint, ties to fewer GFLOPs:
  :func:`orchestrator.report.rows.best_row`), so nobody has to look a run id up to use a sweep's result.
  A genotype alone (a zoo name or a JSON file) is refused on purpose: it has no trained weights, and
  an untrained network's output looks like a result without being one.
* **No global MLflow state.** Everything goes through an ``MlflowClient`` bound to the given
  tracking URI. ``mlflow.pytorch.load_model("runs:/…")`` is not used: MLflow resolves ``runs:/`` and
  ``models:/`` URIs of MLflow 3 logged models through the *global* registry URI (MLflow 3.17
  ``ModelsArtifactRepository``), which is not ours, and, for a SQLite default, silently creates an
  empty ``./mlflow.db``. We resolve run → logged model → artifact location ourselves, download that
  plain location, and load the local copy. A SQLite database that does not exist is an error,
  never created.
* **Nothing from a tracked run is unpickled or run.** Anyone who can write to the tracking server can
  plant a model, so a model is read as data only: the ``trilevel`` flavour of its MLmodel (YAML,
  ``safe_load``) names a folder with safetensors weights and a genotype JSON, validated and rebuilt
  with this package's code (:mod:`search_space.weights`); MLflow's own loaders are never called.
  A pickled or ``torch.export`` PyTorch model, a pickled ``PythonModel`` or models-from-code are
  refused, naming the file that would have been unpickled (``best:`` included, whichever run wins).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from orchestrator.tracking import sqlite_file
from orchestrator.upscale.errors import UpscaleError
from search_space.genotype import zoo_names

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["BEST_PREFIX", "MODEL_ARTIFACT", "LoadedModel", "load_model", "open_model"]

MODEL_ARTIFACT = "model"  # the name a trial logs its network under
BEST_PREFIX = "best:"  # best:<sweep>: the run of the sweep's best finished trial
_RUN_ID = re.compile(r"[0-9a-fA-F]{32}")
_SOURCES_HELP = (
    "expected a train-stage checkpoint directory (state.pt + genotype.json), an MLflow run id "
    "(32 hex characters) or runs:/<run id>/<name>, best:<sweep> (its best trial's run), a "
    "models:/<name>/<version>, models:/<name>@<alias> or models:/<logged model id> URI, or a local MLflow "
    "model directory (MLmodel)"
)


@dataclass(frozen=True)
class LoadedModel:
    """A trained network ready to run, and where it came from."""

    module: nn.Module  # eval mode, on the CPU
    scale: int
    run_id: str | None  # the MLflow run it was logged to (None: a checkpoint or a model directory)
    note: str | None = None  # for best:<sweep>, which trial was picked and why (its PSNR beside bicubic)


def load_model(
    source: str, tracking_uri: str | None = None, mlflow_experiment: str = "trilevel"
) -> tuple[nn.Module, int]:
    """The trained network named by `source`, in eval mode on the CPU, and its scale factor (see :func:`open_model`)."""
    loaded = open_model(source, tracking_uri, mlflow_experiment)
    return loaded.module, loaded.scale


def open_model(source: str, tracking_uri: str | None = None, mlflow_experiment: str = "trilevel") -> LoadedModel:
    """The trained network named by `source`, its scale factor and the MLflow run it came from.

    `source` is a train-stage checkpoint directory, a local MLflow model directory, an MLflow run id
    (its logged model ``model``), ``runs:/<run id>/<name>``, ``best:<sweep>`` (the best finished trial
    of that sweep in `mlflow_experiment`), or ``models:/<name>/<version>``, ``models:/<name>@<alias>``,
    ``models:/<name>/latest``, ``models:/<logged model id>``. `tracking_uri` is used for the MLflow
    forms only (None: MLflow's usual resolution, ``MLFLOW_TRACKING_URI`` first). The scale is the
    genotype's, or measured on a 1×3×8×8 input. Raises :class:`UpscaleError` naming the source when
    it is none of these or cannot be loaded.
    """
    if not isinstance(source, str) or not source.strip():
        raise UpscaleError(f"model source {source!r}: {_SOURCES_HELP}")
    source = source.strip()
    note = None
    if source.startswith(BEST_PREFIX):
        run, note = _best_run(source, tracking_uri, mlflow_experiment)
        try:
            net, run_id = _load_from_mlflow(run, tracking_uri)
        except UpscaleError as err:
            raise UpscaleError(f"model source {source} ({note}): {err}") from None
    elif source.startswith(("models:/", "runs:/")) or (_RUN_ID.fullmatch(source) and not Path(source).exists()):
        net, run_id = _load_from_mlflow(source, tracking_uri)
    elif Path(source).is_dir():
        net, run_id = _load_from_directory(Path(source)), None
    else:
        raise UpscaleError(_unknown_source(source))
    net = net.cpu()
    with contextlib.suppress(NotImplementedError):  # a torch.export graph is an inference graph and refuses .eval()
        net.eval()
    return LoadedModel(net, _scale_of(net, source), run_id, note)


def _best_run(source: str, tracking_uri: str | None, mlflow_experiment: str) -> tuple[str, str]:
    """(run id, a line saying which trial) of the best finished trial of the sweep named in ``best:<sweep>``."""
    import mlflow

    from orchestrator.report.rows import best_row, collect, scored_test_sets

    sweep = source[len(BEST_PREFIX) :].strip()
    if not sweep:
        raise UpscaleError(f"model source {source!r}: name the sweep, e.g. best:demo-table8")
    uri = tracking_uri or mlflow.get_tracking_uri()
    _check_store(source, uri)
    try:
        rows = collect(uri, mlflow_experiment, sweep)
    except ValueError as err:
        raise UpscaleError(f"model source {source}: {err}") from None
    try:
        best = best_row(rows)
    except ValueError as err:
        raise UpscaleError(f"model source {source}: sweep {sweep!r}: {err}") from None
    if best is None:
        raise UpscaleError(
            f"model source {source}: none of the {len(rows)} trial(s) of sweep {sweep!r} has finished with a PSNR yet"
        )
    first = scored_test_sets([best])[0]  # its own: in a sweep over data.test, others may be scored elsewhere
    detail = f"PSNR {first} {best.psnr[first]:.2f} dB"
    delta = best.delta(first)
    if delta is not None:
        detail += f" vs bicubic {best.psnr_bicubic[first]:.2f} dB ({delta:+.2f})"
    return best.run_id, f"best trial of {sweep}: {best.trial}, run {best.run_id} ({detail})"


def _unknown_source(source: str) -> str:
    path = Path(source)
    if source in zoo_names() or (path.suffix == ".json" and path.is_file()):
        return (
            f"model source {source!r} is a genotype: it has no trained weights. Train it (`trilevel run …`) and "
            "pass the trial's MLflow run id, its registered model (models:/…) or its train-stage checkpoint"
        )
    if path.exists():
        return f"model source {source}: a file, not a directory; {_SOURCES_HELP}"
    if os.sep in source or source.startswith("."):
        return f"model source {source}: no such directory; {_SOURCES_HELP}"
    return f"model source {source!r}: not recognised; {_SOURCES_HELP}"


def _load_from_directory(directory: Path) -> nn.Module:
    if (directory / "MLmodel").is_file():
        return _load_mlflow_model_dir(directory, str(directory))
    from workers.checkpointing import GENOTYPE_FILE, STATE_FILE, CheckpointError
    from workers.evaluate import load_derived

    if not (directory / STATE_FILE).is_file() and not (directory / GENOTYPE_FILE).is_file():
        raise UpscaleError(f"model source {directory}: no {STATE_FILE} or {GENOTYPE_FILE} here; {_SOURCES_HELP}")
    try:
        return load_derived(str(directory))
    except (CheckpointError, ValueError, KeyError, RuntimeError, OSError) as err:
        detail = f"missing {err}" if isinstance(err, KeyError) else str(err)
        raise UpscaleError(f"model source {directory}: cannot load it as a train-stage checkpoint ({detail})") from None


def _check_store(source: str, tracking_uri: str) -> None:
    """A SQLite tracking URI must name an existing database: opening a missing one would create it."""
    database = sqlite_file(tracking_uri)
    if database is not None and not database.is_file():
        raise UpscaleError(
            f"model source {source}: MLflow tracking URI {tracking_uri}: no database at {database}; "
            "pass the --tracking-uri the trials were tracked with"
        )


def _load_from_mlflow(source: str, tracking_uri: str | None) -> tuple[nn.Module, str | None]:
    """The network of an MLflow source and the id of the run it was logged to (None if MLflow does not say)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = tracking_uri or mlflow.get_tracking_uri()
    _check_store(source, uri)
    if uri.startswith(("http://", "https://")):  # fail in seconds, not after MLflow's minutes of retries
        from orchestrator.tracking import Tracker, TrackingUnavailable

        try:
            Tracker.check_reachable(uri)
        except TrackingUnavailable as err:
            raise UpscaleError(f"model source {source}: {err}") from None
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        location, run_id = _resolve_mlflow(client, source, uri)
        with tempfile.TemporaryDirectory(prefix="trilevel-upscale-") as tmp:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=location, tracking_uri=uri, dst_path=os.path.join(tmp, "model")
            )
            return _load_mlflow_model_dir(Path(local), source, location), run_id
    except MlflowException as err:
        raise UpscaleError(f"model source {source} (MLflow {uri}): {err.message}") from None
    except OSError as err:  # an artifact store that lost the files, a full temp disk
        raise UpscaleError(f"model source {source} (MLflow {uri}): cannot download the model ({err})") from None


def _resolve_mlflow(client: MlflowClient, source: str, uri: str) -> tuple[str, str | None]:
    """(artifact location of the model's files, id of the run it came from) for a run id, runs:/ or models:/."""
    if source.startswith("models:/"):
        return _resolve_models_uri(client, source)
    if source.startswith("runs:/"):
        run_id, _, name = source[len("runs:/") :].partition("/")
        name = name.strip("/") or MODEL_ARTIFACT
    else:
        run_id, name = source.lower(), MODEL_ARTIFACT
    from mlflow.entities import LoggedModelStatus
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise UpscaleError(f"model source {source}: no MLflow run {run_id} at {uri}") from None
    models = []
    token = None
    while True:  # MLflow 3 logged models of this run and name (MLflow's own runs:/ lookup, by our client)
        page = client.search_logged_models(
            experiment_ids=[run.info.experiment_id], filter_string=f"name = '{name}'", page_token=token
        )
        models.extend(m for m in page if m.source_run_id == run_id)
        token = page.token
        if not token:
            break
    ready = [m for m in models if m.status == LoggedModelStatus.READY]
    if ready:  # a retried trial may have logged it twice: the newest wins
        return max(ready, key=lambda m: m.creation_timestamp).artifact_location, run_id
    if models:
        raise UpscaleError(
            f"model source {source}: the model {name!r} of run {run_id} never finished uploading "
            f"(status {models[0].status}); log it again"
        )
    listed = {f.path for f in client.list_artifacts(run_id, name)}
    if f"{name}/MLmodel" in listed:  # an MLflow 2 style model, stored as run artifacts
        return f"{run.info.artifact_uri.rstrip('/')}/{name}", run_id
    raise UpscaleError(f"model source {source}: MLflow run {run_id} has no logged model named {name!r}")


def _resolve_models_uri(client: MlflowClient, source: str) -> tuple[str, str | None]:
    from mlflow.exceptions import MlflowException

    path = source[len("models:/") :].strip("/")
    parts = path.split("/")
    try:
        if len(parts) == 1 and "@" in path:
            name, alias = path.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        elif len(parts) == 1:  # models:/<logged model id>
            logged = client.get_logged_model(path)
            return logged.artifact_location, logged.source_run_id
        elif len(parts) == 2 and parts[1].isdigit():
            version = client.get_model_version(parts[0], parts[1])
        elif len(parts) == 2 and parts[1].lower() == "latest":
            versions = client.search_model_versions(f"name = '{parts[0]}'")
            if not versions:
                raise UpscaleError(f"model source {source}: registered model {parts[0]!r} has no versions")
            version = max(versions, key=lambda v: int(v.version))
        else:
            raise UpscaleError(
                f"model source {source}: expected models:/<name>/<version>, models:/<name>@<alias>, "
                "models:/<name>/latest or models:/<logged model id> (stages are not supported: use an alias)"
            )
    except MlflowException as err:
        raise UpscaleError(f"model source {source}: {err.message}") from None
    model_id = getattr(version, "model_id", None)
    location = client.get_model_version_download_uri(version.name, version.version)
    if model_id and (not location or location.startswith("models:/")):
        location = client.get_logged_model(model_id).artifact_location
    elif location.startswith("models:/"):  # registered from models:/<id> without a resolved storage location
        location = client.get_logged_model(location[len("models:/") :].split("/")[0]).artifact_location
    return location, version.run_id


def _load_mlflow_model_dir(local: Path, source: str, where: str | None = None) -> nn.Module:
    """The network of an MLflow model directory logged by this package: weights + genotype, rebuilt from our code.

    Only the ``trilevel`` flavour is read (its ``data`` folder: safetensors + genotype JSON, see
    :mod:`search_space.weights`); MLflow's loaders are never called, so nothing in the directory is
    unpickled or run. Any other model (a pickled or ``torch.export`` PyTorch model, a pickled
    ``PythonModel``) is refused, naming it and what would have had to be unpickled; `where` is where
    the model lives, for messages (default: `local`).
    """
    import yaml

    from orchestrator.tracking.models import TRILEVEL_FLAVOR, WEIGHTS_FORMAT
    from search_space.weights import WeightsError, load_network

    mlmodel = local / "MLmodel"
    if not mlmodel.is_file():
        raise UpscaleError(f"model source {source}: not an MLflow model (no MLmodel file in {local})")
    try:
        meta = yaml.safe_load(mlmodel.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UpscaleError(f"model source {source}: {mlmodel} is not readable YAML ({err})") from None
    flavors = meta.get("flavors") if isinstance(meta, dict) else None
    if not isinstance(flavors, dict):
        raise UpscaleError(f"model source {source}: {mlmodel} lists no flavors")
    ours = flavors.get(TRILEVEL_FLAVOR)
    if not isinstance(ours, dict):
        raise UpscaleError(_refusal(source, local, where or str(local), flavors))
    if ours.get("format") != WEIGHTS_FORMAT:
        raise UpscaleError(
            f"model source {source}: {mlmodel} flavors.{TRILEVEL_FLAVOR}.format is {ours.get('format')!r}; "
            f"this version reads {WEIGHTS_FORMAT!r}"
        )
    data = (local / str(ours.get("data", ""))).resolve()
    if not data.is_relative_to(local.resolve()) or not data.is_dir():
        raise UpscaleError(
            f"model source {source}: {mlmodel} flavors.{TRILEVEL_FLAVOR}.data {ours.get('data')!r} "
            "is not a folder inside the model"
        )
    try:
        return load_network(data)
    except WeightsError as err:
        raise UpscaleError(f"model source {source}: {err}") from None


def _refusal(source: str, local: Path, where: str, flavors: dict) -> str:
    """Why a model that is not ours is not loaded: what in it would have to be unpickled or run."""
    names = ", ".join(sorted(str(name) for name in flavors)) or "none"
    torch_flavor = flavors.get("pytorch") if isinstance(flavors.get("pytorch"), dict) else {}
    pyfunc = flavors.get("python_function") if isinstance(flavors.get("python_function"), dict) else {}
    where = where.rstrip("/")
    if torch_flavor:
        folder = str(torch_flavor.get("model_data") or "data")
        files = sorted(p.name for p in (local / folder).glob("*") if p.suffix in (".pth", ".pt", ".pt2"))
        kind = "pt2" if any(name.endswith(".pt2") for name in files) else "pickle"
        what = f"a PyTorch model saved as {kind} ({', '.join(f'{where}/{folder}/{name}' for name in files) or where})"
    elif pyfunc.get("python_model"):
        what = f"a pickled Python model ({where}/{pyfunc['python_model']})"
    else:
        what = f"an MLflow model of flavors {names} ({where})"
    return (
        f"model source {source}: refusing to load {what}: it is not a trilevel-nas model (weights + genotype), "
        "and loading it would unpickle or run code from the tracked run, which can do anything on this machine. "
        "Use the trial's train-stage checkpoint (its run's tag trilevel.checkpoint) or re-log the model "
        "with this version of trilevel-nas"
    )


def _scale_of(net: nn.Module, source: str) -> int:
    scale = getattr(getattr(net, "genotype", None), "scale", None)
    if isinstance(scale, int) and not isinstance(scale, bool) and scale >= 1:
        return scale
    probe = torch.full((1, 3, 8, 8), 0.5)
    try:
        with torch.inference_mode():
            out = net(probe)
    except Exception as err:
        raise UpscaleError(
            f"model source {source}: the model does not run on a 1×3×8×8 image ({type(err).__name__}: {err}). "
            "A torch.export (pt2) model is fixed to the size it was logged with; log genotype.json in its run "
            "so the network can be rebuilt"
        ) from None
    if not isinstance(out, Tensor) or out.ndim != 4 or out.shape[:2] != (1, 3):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise UpscaleError(f"model source {source}: not an image-to-image network (1×3×8×8 gave {shape})")
    height, width = out.shape[-2:]
    if height != width or height % 8:
        raise UpscaleError(f"model source {source}: no integer scale (1×3×8×8 gave {tuple(out.shape)})")
    return height // 8
