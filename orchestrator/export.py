"""Export a trained network to a file a deployment can run without this package: ONNX, any image size.

Why it looks like this:

* **The dynamo exporter.** ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` + onnxscript) is
  PyTorch's exporter from 2.9 on; the TorchScript one (``dynamo=False``) is deprecated and slated for
  removal. Batch, height and width are declared dynamic (``torch.export.Dim``), so the file takes any
  image size, as the network does; the output's size is written in terms of the input's
  (``4*height``).
* **Checked, not trusted.** Every export is run once in ONNX Runtime on an input of a size other than
  the one it was traced with and compared with PyTorch (:func:`check_onnx`); a file that disagrees is
  an error, not a deliverable.
* **Self-describing.** The file's metadata carries the scale and the genotype JSON, so whoever
  deploys it knows what it is without this package.
* **Atomic.** Written to ``.<name>.partial`` beside the target and renamed, so a crash never leaves a
  half-written model where a deployment would pick it up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from search_space.latency import median_seconds

if TYPE_CHECKING:
    import onnxruntime

__all__ = [
    "FORMATS",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "ExportError",
    "OnnxExport",
    "check_onnx",
    "export_onnx",
    "log_export",
    "onnx_latency",
    "onnx_session",
    "run_onnx",
]

FORMATS = ("onnx",)
INPUT_NAME = "lr"  # float32 [batch, 3, height, width] in [0, 1]
OUTPUT_NAME = "sr"  # float32 [batch, 3, scale·height, scale·width], not clamped
EXPORT_ARTIFACT_DIR = "export"
_TOLERANCE = 1e-4  # max |ONNX Runtime - PyTorch| on the check input
_TRACE_HW = (32, 32)
_CHECK_HW = (37, 53)  # not the traced size: proves height and width are free


class ExportError(RuntimeError):
    """A model that cannot be exported, or an export that does not match PyTorch; the message says which."""


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote and how well it matches PyTorch."""

    path: Path
    opset: int
    max_abs_error: float  # ONNX Runtime vs PyTorch on a 1×3×37×53 input
    input_shape: list[str | int]  # e.g. ["batch", 3, "height", "width"]
    output_shape: list[str | int]


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's own chatter (torchvision ops it skips, pytree deprecations) says nothing to a user."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def _metadata(model: nn.Module, scale: int) -> dict[str, str]:
    props = {"trilevel.scale": str(scale), "trilevel.input": f"{INPUT_NAME}: float32 NCHW RGB in [0, 1]"}
    genotype = getattr(model, "genotype", None)
    if genotype is not None and hasattr(genotype, "to_json"):
        props["trilevel.genotype"] = genotype.to_json()
    return props


def export_onnx(model: nn.Module, out: str | os.PathLike[str], scale: int, *, opset: int | None = None) -> OnnxExport:
    """Write `model` to `out` as ONNX with dynamic batch, height and width, then check it in ONNX Runtime.

    Raises :class:`ExportError` when the exporter refuses the model, the file cannot be written, or
    ONNX Runtime's output differs from PyTorch's by more than 1e-4.
    """
    import onnx

    target = Path(out)
    if target.is_dir():
        raise ExportError(f"{target}: is a directory; give the ONNX file to write, e.g. {target / 'model.onnx'}")
    model = model.cpu().eval()
    example = torch.rand(1, 3, *_TRACE_HW, generator=torch.Generator().manual_seed(0))
    dims = {
        0: torch.export.Dim("batch", min=1),
        2: torch.export.Dim("height", min=1),
        3: torch.export.Dim("width", min=1),
    }
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=(dims,),
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
    except Exception as err:  # the exporter raises many types; all mean "this model does not export"
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ExportError(f"ONNX export failed ({type(err).__name__}: {first})") from err
    proto = program.model_proto
    onnx.helper.set_model_props(proto, _metadata(model, scale))
    partial = target.with_name(f".{target.name}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        onnx.save_model(proto, str(partial))
        error = check_onnx(model, partial, scale)
        os.replace(partial, target)
    except OSError as err:
        raise ExportError(f"{target}: cannot write the ONNX model ({err})") from None
    finally:
        partial.unlink(missing_ok=True)
    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)

    def shape(value: onnx.ValueInfoProto) -> list[str | int]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return OnnxExport(target, opset_used, error, shape(proto.graph.input[0]), shape(proto.graph.output[0]))


def onnx_session(path: str | os.PathLike[str], threads: int | None = None) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session on `path` (`threads` intra-op threads; None: as many as torch uses)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3  # errors only
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session: onnxruntime.InferenceSession, lr: np.ndarray) -> np.ndarray:
    """The session's output for a float32 [N, 3, H, W] batch in [0, 1]."""
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(lr, dtype=np.float32)})[0]


def check_onnx(model: nn.Module, path: str | os.PathLike[str], scale: int) -> float:
    """Max |ONNX Runtime - PyTorch| on a 1×3×37×53 input (not the traced size); ExportError above 1e-4."""
    lr = torch.rand(1, 3, *_CHECK_HW, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model(lr).numpy()
    try:
        got = run_onnx(onnx_session(path), lr.numpy())
    except Exception as err:  # onnxruntime's errors are its own types
        raise ExportError(f"ONNX Runtime cannot run the exported model ({type(err).__name__}: {err})") from err
    if got.shape != expected.shape or got.shape[-2:] != (_CHECK_HW[0] * scale, _CHECK_HW[1] * scale):
        raise ExportError(f"the ONNX model made {got.shape} from {tuple(lr.shape)}; PyTorch made {expected.shape}")
    error = float(np.max(np.abs(got - expected)))
    if not error <= _TOLERANCE:
        raise ExportError(f"the ONNX model differs from PyTorch by up to {error:.2e} (allowed {_TOLERANCE:.0e})")
    return error


def onnx_latency(model: nn.Module, scale: int, lr_size: tuple[int, int] = (256, 256), repeats: int = 3) -> float:
    """Median seconds of one ONNX Runtime CPU pass on a 1×3×H×W input, timed as PyTorch's (``median_seconds``)."""
    with tempfile.TemporaryDirectory(prefix="trilevel-onnx-") as tmp:
        exported = export_onnx(model, Path(tmp) / "model.onnx", scale)
        session = onnx_session(exported.path)
        lr = np.random.default_rng(0).random((1, 3, *lr_size), dtype=np.float32)
        return median_seconds(lambda: run_onnx(session, lr), repeats)


def log_export(tracking_uri: str, run_id: str, path: str | os.PathLike[str]) -> str:
    """Upload the exported file to the run's ``export/`` artifacts; returns the artifact path."""
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=tracking_uri).log_artifact(run_id, str(path), EXPORT_ARTIFACT_DIR)
    return f"{EXPORT_ARTIFACT_DIR}/{Path(path).name}"
