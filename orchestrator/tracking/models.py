"""Model upload: a trained network as an MLflow 3 LoggedModel of a run, served at any image size.

Split in two so an outage costs no training time: :func:`save_model` runs the network once (to infer
its signature) and saves a CPU copy to a temporary directory now; :meth:`SavedModel.upload` sends it
later, through client APIs only, in steps that a retry resumes instead of repeating (one logged model,
one registered version, however often the upload is retried).

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
from typing import TYPE_CHECKING, Any, Literal

from orchestrator.tracking.environment import package_version

if TYPE_CHECKING:
    import numpy as np
    import torch
    from mlflow import MlflowClient

__all__ = ["SavedModel", "save_model"]


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
        from mlflow.exceptions import MlflowException
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
            try:
                client.create_registered_model(self.registered_model_name)
            except MlflowException as err:
                if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                    raise
            # source: the artifact location, not models:/<id>: the SQL registry store resolves the latter
            # through the *global* tracking URI (its own TODO), which is not ours. It keeps no model_id
            # column either way; the version points at the same files and records the run.
            version = client.create_model_version(
                self.registered_model_name, source=state["location"], run_id=run_id, model_id=model_id
            )
            state["registered"] = True
            # The link the UI shows from the logged model to its versions, as mlflow's _register_model sets it.
            versions = json.loads(client.get_logged_model(model_id).tags.get("mlflow.modelVersions", "[]"))
            versions.append({"name": version.name, "version": version.version})
            client.set_logged_model_tags(model_id, {"mlflow.modelVersions": json.dumps(versions)})
        return model_id


def save_model(
    model: torch.nn.Module,
    *,
    input_example: np.ndarray,
    name: str = "model",
    registered_model_name: str | None = None,
    step: int = 0,
    serialization_format: Literal["pickle", "pt2"] = "pickle",
    pip_requirements: list[str] | None = None,
) -> SavedModel:
    """Save `model` locally as an MLflow model with a signature inferred from `input_example`.

    The model runs once on `input_example` (eval mode, no grad; its train/eval mode is restored);
    image tensors (4-D, N×C×H×W) keep only their channel count in the signature, batch, height and
    width are -1, so the served model takes any image size. Errors in the model itself raise here,
    before anything is queued.
    """
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    example = np.asarray(input_example)
    was_training = model.training
    try:
        model.eval()
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with torch.no_grad():
            output = model(torch.from_numpy(example).to(device))
    finally:
        model.train(was_training)
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"log_model needs a model returning one tensor, got {type(output).__name__}")
    signature = _free_image_sizes(infer_signature(example, output.detach().cpu().numpy()))
    portable = model if device.type == "cpu" else copy.deepcopy(model).cpu()
    if pip_requirements is None:  # pinned here: MLflow would otherwise infer them in a subprocess (slow)
        pip_requirements = [f"{package}=={package_version(package)}" for package in ("torch", "numpy")]
        if serialization_format == "pickle":
            pip_requirements.append(f"cloudpickle=={package_version('cloudpickle')}")

    saved = SavedModel(tempfile.mkdtemp(prefix="trilevel-model-"), name, step, registered_model_name)
    try:
        mlflow.pytorch.save_model(
            portable,
            saved.local,
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements,
            serialization_format=serialization_format,
        )
    except BaseException:
        saved.remove()
        raise
    return saved


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
