"""Model upload: a trained network as an MLflow 3 LoggedModel of a run: weights, genotype and code, no pickle.

What a logged model is: the derived network's weights (safetensors) and genotype (JSON) as data, and
this package's ``search_space`` as code (``code/``), loaded by MLflow's ``python_function`` flavour
through :mod:`search_space.serving` (a ``loader_module``, not a pickled ``PythonModel``), so
``mlflow models serve`` works without this package installed and loading never unpickles anything.
``trilevel upscale/export`` read the ``trilevel`` flavour (the weights' location) and rebuild the
network from their own code (:mod:`orchestrator.upscale.model_source`).

Split in two so an outage costs no training time: :func:`save_model` runs the network once (to infer
its signature) and saves a CPU copy to a temporary directory now; :meth:`SavedModel.upload` sends it
later, through client APIs only, in steps that a retry resumes instead of repeating (one logged model,
at most one registered version, however often the upload is retried).

``mlflow.pytorch.log_model`` is not used: it resolves the *global* tracking URI and, without a
global active run, the global experiment, while every tracker is bound to its own URI.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import search_space
from orchestrator.tracking.champion import Score, register_if_better
from orchestrator.tracking.environment import package_version

if TYPE_CHECKING:
    import numpy as np
    import torch
    from mlflow import MlflowClient

__all__ = ["IMAGE_MODEL", "TRILEVEL_FLAVOR", "WEIGHTS_FORMAT", "SavedModel", "save_model"]

TRILEVEL_FLAVOR = "trilevel"  # MLmodel flavour: where the weights + genotype are (data/weights)
WEIGHTS_FORMAT = "safetensors+genotype-json"
IMAGE_MODEL = "image-model"  # a trial's PNG-in/PNG-out model, next to its tensor model "model"


@dataclass
class SavedModel:
    """A model saved under `workdir` (``<workdir>/model``), waiting to be uploaded to a run.

    `state` records the steps done (logged model created, files uploaded, linked to the run, ready,
    registered), so a retried upload continues where the last attempt stopped.
    """

    workdir: str
    name: str
    step: int = 0
    registered_model_name: str | None = None
    state: dict[str, Any] = field(default_factory=dict)
    score: Score | None = None  # with registered_model_name: register only if it beats the champion

    @property
    def local(self) -> str:
        """The saved MLflow model directory."""
        return os.path.join(self.workdir, "model")

    @property
    def model_id(self) -> str | None:
        """The logged model's id once it was created in MLflow; None before."""
        return self.state.get("model_id")

    def remove(self) -> None:
        """Delete the local copy (after delivery, or when the upload is given up)."""
        shutil.rmtree(self.workdir, ignore_errors=True)

    def upload(self, client: MlflowClient, run_id: str) -> str:
        """Create the logged model, upload its files, link it to `run_id`, mark it ready, register it; its id.

        Uses ``create_logged_model`` → ``log_model_artifacts`` → ``log_outputs`` →
        ``finalize_logged_model`` (and ``create_registered_model`` / ``create_model_version`` when
        `registered_model_name` is set), skipping the steps an earlier attempt finished.
        """
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus
        from mlflow.models import Model

        state = self.state
        if "model_id" not in state:
            run = client.get_run(run_id)
            tags = {k: v for k, v in run.data.tags.items() if k.startswith("trilevel.")}
            created = client.create_logged_model(
                run.info.experiment_id, name=self.name, source_run_id=run_id, tags=tags
            )
            state["model_id"], state["location"] = created.model_id, created.artifact_location
            mlmodel = Model.load(self.local)  # record the ids in MLmodel, as mlflow's own log_model does
            mlmodel.model_id = mlmodel.model_uuid = created.model_id
            mlmodel.run_id = run_id
            mlmodel.artifact_path = created.artifact_location
            mlmodel.save(os.path.join(self.local, "MLmodel"))
        model_id = state["model_id"]
        for done, action in (
            ("uploaded", lambda: client.log_model_artifacts(model_id, self.local)),
            ("linked", lambda: client.log_outputs(run_id, [LoggedModelOutput(model_id, step=self.step)])),
            ("ready", lambda: client.finalize_logged_model(model_id, LoggedModelStatus.READY)),
        ):
            if not state.get(done):
                action()
                state[done] = True
        if self.registered_model_name and not state.get("registered"):
            version = self._register(client, run_id, model_id)
            state["registered"] = True
            if version is not None:  # the link the UI shows from the logged model to its versions
                versions = json.loads(client.get_logged_model(model_id).tags.get("mlflow.modelVersions", "[]"))
                versions.append({"name": version.name, "version": version.version})
                client.set_logged_model_tags(model_id, {"mlflow.modelVersions": json.dumps(versions)})
        return model_id

    def _register(self, client: MlflowClient, run_id: str, model_id: str) -> Any:
        """A new version of the registered model (None when a score says the champion is better)."""
        name, location = self.registered_model_name, self.state["location"]
        assert name is not None
        if self.score is not None:
            return register_if_better(client, name, self.score, source=location, run_id=run_id, model_id=model_id)
        from mlflow.exceptions import MlflowException

        try:
            client.create_registered_model(name)
        except MlflowException as err:
            if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        # source: the artifact location, not models:/<id>: the SQL registry store resolves the latter
        # through the *global* tracking URI (its own TODO), which is not ours.
        return client.create_model_version(name, source=location, run_id=run_id, model_id=model_id)


def save_model(
    model: torch.nn.Module,
    *,
    input_example: np.ndarray,
    name: str = "model",
    io: Literal["tensor", "png"] = "tensor",
    registered_model_name: str | None = None,
    score: Score | None = None,
    step: int = 0,
) -> SavedModel:
    """Save the derived network `model` locally as an MLflow pyfunc model of weights, genotype and code.

    The directory holds ``data/weights/`` (:mod:`search_space.weights`: safetensors + genotype JSON,
    nothing pickled), ``code/search_space/`` (the loader :mod:`search_space.serving` and the code
    that rebuilds the network, so serving needs no install of this package) and an MLmodel with two
    flavours: ``python_function`` (``loader_module: search_space.serving``, ``model_config.io`` =
    `io`) and ``trilevel`` (where the weights are; what ``trilevel upscale/export`` read, never the
    pyfunc). ``io="tensor"`` takes float32 N×3×H×W; ``io="png"`` takes a column ``image`` of image
    bytes and returns ×scale PNG bytes. The network runs once on `input_example` (eval mode, no grad;
    its mode is restored) to check it and infer the tensor signature; batch, height and width are -1,
    so any image size is accepted. Errors in the model itself raise here, before anything is queued.

    With `registered_model_name` and `score`, the upload registers it only if it beats the
    registered model's ``champion`` (:mod:`orchestrator.tracking.champion`).
    """
    import mlflow.pyfunc
    import numpy as np
    import torch
    from mlflow.models import Model, infer_signature

    from search_space.derived import DerivedNetwork
    from search_space.serving import IMAGE_COLUMN, png_to_png
    from search_space.weights import save_network

    if not isinstance(model, DerivedNetwork):
        raise TypeError(
            f"log_model needs a DerivedNetwork (it is logged as weights + genotype), got {type(model).__name__}"
        )
    if io not in ("tensor", "png"):
        raise ValueError(f"log_model io: expected 'tensor' or 'png', got {io!r}")
    example = np.asarray(input_example, dtype=np.float32)
    was_training = model.training
    portable = copy.deepcopy(model).cpu().eval()
    try:
        model.eval()
        with torch.no_grad():
            output = portable(torch.from_numpy(example))
    finally:
        model.train(was_training)
    if io == "tensor":
        signature = _free_image_sizes(infer_signature(example, output.numpy()))
        served_example: Any = example
    else:
        from mlflow.models import ModelSignature
        from mlflow.types.schema import ColSpec, Schema

        signature = ModelSignature(Schema([ColSpec("binary", IMAGE_COLUMN)]), Schema([ColSpec("binary", IMAGE_COLUMN)]))
        served_example = {IMAGE_COLUMN: [_png_of(example[0])]}
        png_to_png(portable, served_example[IMAGE_COLUMN][0])  # the served path runs before anything is queued
    requirements = [
        f"{package}=={package_version(package)}" for package in ("mlflow", "torch", "numpy", "pillow", "safetensors")
    ]
    saved = SavedModel(tempfile.mkdtemp(prefix="trilevel-model-"), name, step, registered_model_name, score=score)
    try:
        with tempfile.TemporaryDirectory(prefix="trilevel-model-src-") as staging:
            weights = save_network(portable, os.path.join(staging, "weights"))
            code = shutil.copytree(
                Path(search_space.__file__).parent,
                os.path.join(staging, "search_space"),
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            )
            mlmodel = Model()
            mlmodel.add_flavor(
                TRILEVEL_FLAVOR,
                format=WEIGHTS_FORMAT,
                data="data/weights",
                io=io,
                scale=portable.genotype.scale,
                genotype=portable.genotype.to_dict(),
            )
            mlflow.pyfunc.save_model(
                saved.local,
                loader_module="search_space.serving",
                data_path=str(weights),
                code_paths=[code],
                model_config={"io": io},
                mlflow_model=mlmodel,
                signature=signature,
                input_example=served_example,
                pip_requirements=requirements,
            )
    except BaseException:
        saved.remove()
        raise
    return saved


def _png_of(chw: np.ndarray) -> bytes:
    """A float C×H×W image in [0, 1] as PNG bytes (the image model's input example)."""
    import io as _io

    import numpy as np
    from PIL import Image

    pixels = (np.clip(chw, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)
    out = _io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(out, format="PNG")
    return out.getvalue()


def _free_image_sizes(signature: Any) -> Any:
    """`signature` with every 4-D tensor spec's batch, height and width set to -1 (any size)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    def free(schema: Schema | None) -> Schema | None:
        if schema is None:
            return None
        specs = [
            TensorSpec(spec.type, (-1, spec.shape[1], -1, -1), spec.name)
            if isinstance(spec, TensorSpec) and len(spec.shape) == 4
            else spec
            for spec in schema.inputs
        ]
        return Schema(specs)

    return ModelSignature(free(signature.inputs), free(signature.outputs), signature.params)
