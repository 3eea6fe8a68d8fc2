"""The data sets a trial trains and validates on, as MLflow datasets (``mlflow.data``), identified by their manifest.

Why: MLflow users find a run's data under its *Datasets* (``run.inputs.dataset_inputs``) and compare
runs by dataset digest. A prepared shard folder already has an identity: the fingerprint in its
``_MANIFEST.json`` (inputs and options, :mod:`workers.shards.writer`), so that is the digest (its first
32 hex digits: MLflow keeps at most 36 characters; the whole fingerprint is in the profile). Only
metadata is logged (:class:`mlflow.data.meta_dataset.MetaDataset`): the shards stay where they are.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from mlflow.entities import DatasetInput

__all__ = ["DIGEST_LENGTH", "DatasetRef", "dataset_inputs", "experiment_datasets"]

DIGEST_LENGTH = 32  # hex digits of the manifest fingerprint kept as MLflow's digest (its limit is 36)
CONTEXT_TAG = "mlflow.data.context"  # MLflow's own input tag: training / validation / testing
STAGES_TAG = "trilevel.stages"  # which stages train on it


@dataclass(frozen=True)
class DatasetRef:
    """A prepared data set as a run's input: where it is, what it is (its manifest) and what for."""

    name: str  # e.g. "demo/train", "DIV2K-val"
    path: str  # the shard folder (local path or URI)
    fingerprint: str  # the manifest's fingerprint (sha256 hex)
    context: str  # "training", "validation" or "testing"
    rows: int = 0
    images: int = 0
    bytes: int = 0
    stages: tuple[str, ...] = ()  # for training data: the stages that read it


class _Facts(Protocol):  # orchestrator.plan.DataFacts, as far as this module reads it
    path: str
    fingerprint: str
    rows: int
    images: int
    bytes: int


def experiment_datasets(
    train: Mapping[str, _Facts], val: Mapping[str, str], test: Mapping[str, str] | None = None
) -> tuple[DatasetRef, ...]:
    """The training sets (stage → its data, as the plan resolved them), validation and test sets (name → path).

    Validation sets select checkpoints ("validation"); test sets are what the trial reports ("testing").
    """
    from workers.shards.format import read_manifest

    by_path: dict[str, list[str]] = {}
    facts: dict[str, _Facts] = {}
    for stage, data in train.items():
        by_path.setdefault(data.path, []).append(stage)
        facts[data.path] = data
    refs = [
        DatasetRef(
            _name(path), path, data.fingerprint, "training", data.rows, data.images, data.bytes, tuple(by_path[path])
        )
        for path, data in facts.items()
    ]
    sets = [(name, path, "validation") for name, path in val.items()]
    sets += [(name, path, "testing") for name, path in (test or {}).items()]
    for name, path, context in sets:
        manifest = read_manifest(path)
        refs.append(
            DatasetRef(
                name,
                path,
                str(manifest.data.get("fingerprint", "")),
                context,
                manifest.rows,
                manifest.images,
                int(manifest.data.get("bytes", 0)),
            )
        )
    return tuple(refs)


def _name(path: str) -> str:
    """A data set's name from its folder: the last two parts ("demo/train", "data/div2k-flickr2k")."""
    parts = [part for part in path.rstrip("/").replace("\\", "/").split("/") if part]
    return "/".join(parts[-2:]) or path


def dataset_inputs(refs: list[DatasetRef] | tuple[DatasetRef, ...]) -> list[DatasetInput]:
    """MLflow ``DatasetInput`` entities of `refs`, for ``MlflowClient.log_inputs``."""
    from mlflow.entities import DatasetInput, InputTag

    inputs = []
    for ref in refs:
        if not ref.fingerprint:
            raise ValueError(f"data set {ref.path}: its manifest has no fingerprint; prepare it again")
        tags = [InputTag(CONTEXT_TAG, ref.context)]
        if ref.stages:
            tags.append(InputTag(STAGES_TAG, ",".join(ref.stages)))
        inputs.append(DatasetInput(_dataset(ref)._to_mlflow_entity(), tags))
    return inputs


def _dataset(ref: DatasetRef) -> Any:
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    class ShardDataset(MetaDataset):
        """A MetaDataset with the manifest's counts and whole fingerprint as its profile."""

        @property
        def profile(self) -> dict[str, Any]:
            return {"rows": ref.rows, "images": ref.images, "bytes": ref.bytes, "fingerprint": ref.fingerprint}

        def to_dict(self) -> dict[str, str]:
            return super().to_dict() | {"profile": json.dumps(self.profile)}

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": local paths match two equal sources
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(ref.path)
    return ShardDataset(source, name=ref.name, digest=ref.fingerprint[:DIGEST_LENGTH], schema=_shard_schema())


def _shard_schema() -> Any:
    """The shards' columns (:data:`workers.shards.format.SHARD_SCHEMA`) as an MLflow schema."""
    import pyarrow as pa
    from mlflow.types.schema import ColSpec, Schema

    from workers.shards.format import SHARD_SCHEMA

    def kind(arrow: pa.DataType) -> str:
        if pa.types.is_binary(arrow):
            return "binary"
        if pa.types.is_integer(arrow):
            return "integer"
        return "string"

    return Schema([ColSpec(kind(f.type), f.name, required=not f.nullable) for f in SHARD_SCHEMA])
