"""A derived network on disk as data: its weights in safetensors and its genotype as JSON, nothing pickled.

Why: a logged model is read back by whoever can reach the tracking server, so it must not be able to
run code on their machine. A pickle can (unpickling calls whatever the file names); a safetensors
file is a JSON header and raw tensor bytes, and the genotype is validated JSON. The network itself
is rebuilt from this package's code (:func:`search_space.derived.build_network`), never from the file.

Both files live in one directory (the ``data`` folder of a logged MLflow model, see
:mod:`search_space.serving`); every problem is a :class:`WeightsError` naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from search_space.derived import DerivedNetwork, build_network
from search_space.genotype import Genotype

__all__ = ["GENOTYPE_FILE", "WEIGHTS_FILE", "WeightsError", "load_network", "save_network"]

WEIGHTS_FILE = "model.safetensors"
GENOTYPE_FILE = "genotype.json"


class WeightsError(ValueError):
    """A weights directory that is missing a file, holds something else, or does not fit its genotype."""


def save_network(net: DerivedNetwork, directory: str | os.PathLike[str]) -> Path:
    """Write `net`'s weights (CPU, contiguous) and genotype into `directory` (created); returns it."""
    from safetensors.torch import save_file

    genotype = getattr(net, "genotype", None)
    if not isinstance(genotype, Genotype):
        raise TypeError(f"save_network needs a DerivedNetwork (a module with a genotype), got {type(net).__name__}")
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().cpu().contiguous() for key, value in net.state_dict().items()}
    save_file(tensors, str(target / WEIGHTS_FILE), metadata={"format": "pt", "genotype": genotype.to_json(None)})
    (target / GENOTYPE_FILE).write_text(genotype.to_json())
    return target


def load_network(directory: str | os.PathLike[str]) -> DerivedNetwork:
    """The network saved by :func:`save_network` in `directory`, in eval mode on the CPU.

    The genotype is validated (:meth:`Genotype.from_json`), the network built from it, and the
    weights must match its parameters exactly (no missing, extra or reshaped tensors).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root = Path(directory)
    genotype_path, weights_path = root / GENOTYPE_FILE, root / WEIGHTS_FILE
    for path in (genotype_path, weights_path):
        if not path.is_file():
            raise WeightsError(f"{path}: missing (a saved network is {GENOTYPE_FILE} + {WEIGHTS_FILE})")
    try:
        genotype = Genotype.from_json(genotype_path.read_text(), source=str(genotype_path))
    except (ValueError, UnicodeDecodeError) as err:
        raise WeightsError(f"{genotype_path}: {err}") from None
    try:
        tensors = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as err:
        raise WeightsError(f"{weights_path}: not a safetensors file ({err})") from None
    net = build_network(genotype)
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise WeightsError(
            f"{weights_path}: the weights do not fit the network of {genotype_path} ({' '.join(first[:3])})"
        ) from None
    return net.eval()
