"""The MLflow ``python_function`` loader of a logged derived network: tensors in/out, or PNG bytes in/out.

Why a loader module (MLmodel ``loader_module: search_space.serving``) and not a pickled
``PythonModel``: MLflow calls :func:`_load_pyfunc` with the model's ``data`` folder, which holds only
data (:mod:`search_space.weights`: safetensors + genotype JSON); the code is this module, shipped in
the model's ``code/`` folder (``code_paths``), so ``mlflow models serve`` needs neither this package
installed nor any unpickling. It imports no MLflow: ``search_space`` stays torch-only.

Two interfaces, chosen by the model's ``model_config`` (``{"io": "tensor"}`` or ``{"io": "png"}``):

* ``tensor``: a float32 N×3×H×W array in [0, 1] → the N×3×(s·H)×(s·W) array (not clamped).
* ``png``: a table with a binary column ``image`` (PNG or any image Pillow reads; JSON requests send
  it base64-encoded, as MLflow does for binary columns) → one record ``{"image": the ×s PNG}`` per
  row (base64 in the server's JSON answer). Any size.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch

from search_space.derived import DerivedNetwork
from search_space.weights import load_network

__all__ = ["IMAGE_COLUMN", "IO_KINDS", "ImageModel", "TensorModel", "png_to_png"]

IMAGE_COLUMN = "image"
IO_KINDS = ("tensor", "png")


class TensorModel:
    """pyfunc model: float32 N×3×H×W in [0, 1] → N×3×(s·H)×(s·W)."""

    def __init__(self, net: DerivedNetwork) -> None:
        self.net = net

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        batch = np.asarray(data, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected a float32 N×3×H×W array, got shape {batch.shape}")
        with torch.inference_mode():
            return self.net(torch.from_numpy(np.ascontiguousarray(batch))).numpy()


class ImageModel:
    """pyfunc model: a column ``image`` of encoded images → a column ``image`` of ×scale PNGs."""

    def __init__(self, net: DerivedNetwork) -> None:
        self.net = net

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> list[dict[str, bytes]]:
        """One record ``{"image": PNG bytes}`` per input row (JSON: ``{"predictions": [{"image": base64}]}``)."""
        return [{IMAGE_COLUMN: png_to_png(self.net, image, row)} for row, image in enumerate(_images_of(data))]


def png_to_png(net: DerivedNetwork, encoded: bytes, row: int = 0) -> bytes:
    """One encoded image (RGB, RGBA, grayscale, any size) super-resolved and encoded as PNG."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(encoded, bytes | bytearray):
        raise ValueError(f"{IMAGE_COLUMN}[{row}]: expected image bytes, got {type(encoded).__name__}")
    try:
        with Image.open(io.BytesIO(encoded)) as opened:
            pixels = np.asarray(opened.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{IMAGE_COLUMN}[{row}]: not an image Pillow can read ({err})") from None
    lr = torch.from_numpy(pixels.transpose(2, 0, 1).copy())[None]
    with torch.inference_mode():
        sr = net(lr)[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    out = io.BytesIO()
    Image.fromarray(sr, mode="RGB").save(out, format="PNG")
    return out.getvalue()


def _images_of(data: Any) -> list[bytes]:
    """The encoded images of a request: a DataFrame / dict with an ``image`` column, a list, or one bytes."""
    if isinstance(data, bytes | bytearray):
        return [bytes(data)]
    column = None
    if (hasattr(data, "columns") and IMAGE_COLUMN in data.columns) or (isinstance(data, dict) and IMAGE_COLUMN in data):
        column = data[IMAGE_COLUMN]
    elif isinstance(data, list):
        column = [row[IMAGE_COLUMN] if isinstance(row, dict) else row for row in data]
    if column is None:
        raise ValueError(
            f"expected a table with a binary column {IMAGE_COLUMN!r} (PNG bytes), got {type(data).__name__}"
        )
    values = list(column) if not isinstance(column, bytes | bytearray) else [column]
    return [bytes(v) if isinstance(v, bytearray) else v for v in values]


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> TensorModel | ImageModel:
    """MLflow's entry point (``loader_module``): the model in `data_path`, with the interface its config names."""
    kind = (model_config or {}).get("io", "tensor")
    if kind not in IO_KINDS:
        raise ValueError(f"model_config.io: expected one of {', '.join(IO_KINDS)}, got {kind!r}")
    net = load_network(data_path)
    return ImageModel(net) if kind == "png" else TensorModel(net)
