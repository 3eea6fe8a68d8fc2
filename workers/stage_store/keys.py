"""A stage run's key: the hash of everything that determines its output, and nothing else.

What goes in (`stage_key_inputs`), per stage:

- every stage: its name, the seed, the SR scale, the LR patch size, its optimisation phase(s), the
  supervision (kind; for a teacher its weights file's content hash and shape), the VGG weights'
  content hash when a phase uses the perceptual loss, the fingerprint of each training data set it
  reads with the role it reads (χ1, χ2 or all) and the validation set's fingerprint and image limit
  (its per-epoch metrics are part of what is stored), the world size, the torch threads per worker,
  the device kind, the precision (fp32/bf16) and deterministic kernels (they change floating-point
  sums), and the code version;
- `pretrain`: the supernet's configuration as it acts at radius 0 (see `PRETRAIN_SAME_COMBINERS`);
  it never reads the search settings (λ_order, λ_flops, arch lr, …);
- `search`: the supernet configuration, the search settings and the pretrain key;
- `train`: its own settings (from_search, genotype, fine-tuning, the random baseline's draw) and
  `checkpoint_every` (the best checkpoint is chosen among the checkpointed epochs); the supernet
  configuration and the search key only when it reads them (inherited weights, a random draw of the
  space, or the searched genotype).

Fields that change how a run is executed but not its numbers are left out: `recompute_cells` (same
gradients bit for bit), checkpoint retention, data caching, `data.cut_threads` (the same batches in the
same order), concurrency, retries, tracking. A data set's pixel encoding (`data prepare --encoding`)
stays in, through its fingerprint (the manifest's options), although raw and PNG shards decode to the
same pixels: raw rows are larger, so shards close at other rows (`max_shard_bytes`) and Ray Data's
blocks differ, and with several workers `streaming_split` may then hand each worker other rows in
another order. Switching a data set's encoding recomputes its stages once; reusing them could be wrong.
`fixed_path` counts only for the bilevel search space, which is the only one that reads it.

The *code version* is a hash of the sources of the packages that compute a stage (`workers` and
`search_space`, every ``.py`` file, by relative path and content) plus the torch version: any edit
there makes every stored stage a stranger, which is conservative (an edited docstring recomputes)
but never reuses a stage that newer code would compute differently. The orchestrator does not
compute stages, so its edits keep stored stages valid.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workers.shards.format import read_manifest
from workers.stage_store.stage_key import StageKey

if TYPE_CHECKING:
    from workers.settings import StageSettings

__all__ = [
    "CODE_PACKAGES",
    "PRETRAIN_SAME_COMBINERS",
    "StageKey",
    "canonical",
    "code_version",
    "data_fingerprint",
    "file_fingerprint",
    "reads_upstream",
    "stage_key",
    "stage_key_inputs",
]

CODE_PACKAGES: tuple[str, ...] = ("workers", "search_space")
# Combiners whose pretraining is the same bit for bit, measured (tests/workers/test_stage_store.py): pretraining
# keeps the architecture logits at their equal initial values, and at radius 0 every combiner maps equal logits to
# the same uniform weights, so 3 pretrain steps on backbones A and B left identical state dicts. The bilevel space
# (one fixed path) pretrains differently: 194 of its tensors differed after the same 3 steps.
PRETRAIN_SAME_COMBINERS: frozenset[str] = frozenset({"softmax", "sparsemax", "sparsestmax"})
_NEUTRAL_SUPERNET = ("recompute_cells", "extra")


def stage_key(inputs: dict[str, Any]) -> str:
    """The hex SHA-256 (first 32 digits) of the inputs as canonical JSON."""
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@functools.cache
def code_version(packages: tuple[str, ...] = CODE_PACKAGES) -> str:
    """Hash of the `.py` sources of `packages` (relative path and bytes) and the torch version."""
    import torch

    digest = hashlib.sha256(f"torch={torch.__version__}".encode())
    for package in packages:
        root = Path(__import__(package).__file__).parent
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root.parent)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def data_fingerprint(path: str) -> str:
    """A prepared data set's identity: its manifest's fingerprint (input file names and sizes, and options)."""
    return str(read_manifest(path).data.get("fingerprint", ""))


@functools.cache
def _content_hash(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:32]


def file_fingerprint(path: str | None) -> str | None:
    """Content hash of a local weights file (cached by path, size and mtime); a URI is named as is."""
    if path is None:
        return None
    if "://" in path or not os.path.isfile(path):
        return f"path:{path}"
    stat = os.stat(path)
    return _content_hash(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


def _supernet(settings: StageSettings) -> dict[str, Any]:
    config = {k: v for k, v in asdict(settings.supernet).items() if k not in _NEUTRAL_SUPERNET}
    if config["levels"] != "bilevel":
        config.pop("fixed_path")
    if settings.stage == "pretrain" and config["combiner"] in PRETRAIN_SAME_COMBINERS:
        config["combiner"] = "|".join(sorted(PRETRAIN_SAME_COMBINERS))
    return config


def _losses(settings: StageSettings) -> set[str]:
    losses = {settings.optim.loss}
    if settings.train is not None and settings.train.finetune is not None:
        losses.add(settings.train.finetune.loss)
    return losses


def stage_key_inputs(
    settings: StageSettings,
    *,
    val_max_images: int | None,
    threads: int,
    upstream: str | None,
    data: dict[str, str],
    val: str | None,
    workers: int,
    device: str,
    code: str,
) -> dict[str, Any]:
    """What determines `settings`' output (module docstring); `data`: role → fingerprint of what it reads.

    `upstream` is the key of the stage whose output it reads (None for pretrain, and for a train stage
    that reads neither the searched weights nor the searched genotype); `val` the validation set's
    fingerprint.
    """
    sup = settings.supervision
    inputs: dict[str, Any] = {
        "stage": settings.stage,
        "seed": settings.seed,
        "scale": settings.scale,
        "patch": settings.patch,
        "optim": asdict(settings.optim),
        "supervision": {"kind": sup.kind}
        | (
            {"weights": file_fingerprint(sup.weights), "nb": sup.nb, "nf": sup.nf, "gc": sup.gc}
            if sup.kind == "teacher"
            else {}
        ),
        "vgg": file_fingerprint(settings.vgg_weights) if "perceptual" in _losses(settings) else None,
        "data": {role: data[role] for role in sorted(settings.datasets)},
        "val": {"fingerprint": val, "max_images": val_max_images},
        "workers": workers,
        "threads": threads,
        "device": device,
        "precision": settings.precision,  # bf16 autocast changes every sum
        "deterministic": settings.deterministic,  # other kernels, other rounding
        "code": code,
        "upstream": upstream,
    }
    if settings.crops_per_image != 1:  # absent at 1: keys of stages from before the option read the same
        inputs["crops_per_image"] = settings.crops_per_image
    if settings.stage in ("pretrain", "search"):
        inputs["supernet"] = _supernet(settings)
    if settings.search is not None:
        inputs["search"] = asdict(settings.search)
    if settings.train is not None:
        train = settings.train
        inputs["train"] = {
            "from_search": train.from_search,
            "genotype": None if train.genotype is None else train.genotype.to_dict(),
            "finetune": None if train.finetune is None else asdict(train.finetune),
            "random_draw": train.random_draw,  # the random baseline: the k-th FLOPs-matched draw of the space
            "random_tolerance": None if train.random_draw is None else train.random_tolerance,
        }
        inputs["checkpoint_every"] = settings.checkpoint_every
        if train.from_search or train.random_draw is not None:
            inputs["supernet"] = _supernet(settings)
    return canonical(inputs)


def canonical(inputs: dict[str, Any]) -> dict[str, Any]:
    """The inputs as their JSON reads back (tuples as lists): what a stored entry is compared with."""
    return json.loads(json.dumps(inputs, sort_keys=True, default=str))


def reads_upstream(settings: StageSettings) -> bool:
    """Whether the stage reads the previous stage's output.

    Search always does; train unless it has its own genotype and starts from scratch.
    """
    if settings.stage == "pretrain":
        return False
    if settings.train is not None:
        return settings.train.from_search or settings.train.genotype is None or settings.train.random_draw is not None
    return True
