"""A derived architecture as immutable plain data, with a versioned JSON form and the paper's table.

A genotype holds the three levels of a search result: the network-level path ("0" = RiR block,
"1" = up/conv layer, starting with the stem block), and for every RiR block on it the op and the
output width of each of its 5 slots (the cell and kernel levels). Tables 1-4 of the paper are
shipped as a zoo (`zoo/*.json`, `load_genotype("trilevel-b-psnr")`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from search_space.backbones import BACKBONES, required_ups
from search_space.ops import OP_DISPLAY_NAMES, PRIMITIVES

__all__ = [
    "SCHEMA_VERSION",
    "SLOTS_PER_CELL",
    "Genotype",
    "OpChoice",
    "load_genotype",
    "zoo_names",
]

SCHEMA_VERSION = 1
SLOTS_PER_CELL = 5
_DISPLAY_TO_OP = {v.replace("×", "x").lower(): k for k, v in OP_DISPLAY_NAMES.items()}


def _op_name(raw: Any, where: str) -> str:
    """Accept our op names and the paper's display names ("Conv 3×3", "DwsBlock")."""
    if isinstance(raw, str):
        key = raw.strip()
        if key in PRIMITIVES:
            return key
        folded = key.replace("×", "x").lower()
        if folded in _DISPLAY_TO_OP:
            return _DISPLAY_TO_OP[folded]
    raise ValueError(f"{where}: unknown op {raw!r}; allowed: {', '.join(PRIMITIVES)}")


@dataclass(frozen=True)
class OpChoice:
    """One slot of a RiR block: the op and its output width."""

    op: str
    width: int

    def __str__(self) -> str:
        return f"({OP_DISPLAY_NAMES[self.op]}, {self.width})"


@dataclass(frozen=True)
class Genotype:
    """Path, ops and widths of a derived network. Validated on construction."""

    backbone: str
    path: tuple[int, ...]
    cells: tuple[tuple[OpChoice, ...], ...]
    nf: int = 64
    scale: int = 4
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"genotype.backbone: must be one of {', '.join(BACKBONES)}, got {self.backbone!r}")
        for attr in ("nf", "scale"):
            value = getattr(self, attr)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"genotype.{attr}: must be a positive integer, got {value!r}")
        if not self.path or any(p not in (0, 1) for p in self.path) or self.path[0] != 0:
            raise ValueError(f"genotype.path: must be a non-empty list of 0/1 starting with 0, got {list(self.path)}")
        ups = required_ups(self.backbone, self.scale)
        if ups is not None and self.path.count(1) != ups:
            raise ValueError(
                f"genotype.path: backbone A at scale {self.scale} needs exactly {ups} ones (upsamplings), "
                f"got {list(self.path)}"
            )
        if len(self.cells) != self.path.count(0):
            raise ValueError(
                f"genotype.cells: the path has {self.path.count(0)} RiR blocks but {len(self.cells)} cells are given"
            )
        for c, cell in enumerate(self.cells):
            if len(cell) != SLOTS_PER_CELL:
                raise ValueError(f"genotype.cells[{c}]: needs {SLOTS_PER_CELL} ops, got {len(cell)}")
            for s, choice in enumerate(cell):
                where = f"genotype.cells[{c}][{s}]"
                if choice.op not in PRIMITIVES:
                    raise ValueError(f"{where}.op: unknown op {choice.op!r}; allowed: {', '.join(PRIMITIVES)}")
                if (
                    not isinstance(choice.width, int)
                    or isinstance(choice.width, bool)
                    or not 0 < choice.width <= self.nf
                ):
                    raise ValueError(f"{where}.width: must be an integer in 1..{self.nf}, got {choice.width!r}")
            if cell[-1].width != self.nf:
                raise ValueError(
                    f"genotype.cells[{c}][4].width: OP5 feeds the block's residual and must output nf={self.nf}, "
                    f"got {cell[-1].width}"
                )

    # --- JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "backbone": self.backbone,
            "nf": self.nf,
            "scale": self.scale,
            "path": list(self.path),
            "cells": [[{"op": c.op, "width": c.width} for c in cell] for cell in self.cells],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Any) -> Genotype:
        """Build from the JSON form; every problem is a ValueError naming the field."""
        if not isinstance(data, dict):
            raise ValueError(f"genotype: expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"genotype.schema_version: expected {SCHEMA_VERSION}, got {version!r}")
        unknown = set(data) - {"schema_version", "name", "backbone", "nf", "scale", "path", "cells"}
        if unknown:
            raise ValueError(f"genotype: unknown field(s) {', '.join(sorted(unknown))}")
        for key in ("backbone", "path", "cells"):
            if key not in data:
                raise ValueError(f"genotype.{key}: missing")
        if not isinstance(data["path"], list):
            raise ValueError(f"genotype.path: expected a list of 0/1, got {data['path']!r}")
        if not isinstance(data["cells"], list):
            raise ValueError(f"genotype.cells: expected a list of cells, got {type(data['cells']).__name__}")
        cells = []
        for c, cell in enumerate(data["cells"]):
            if not isinstance(cell, list):
                raise ValueError(f"genotype.cells[{c}]: expected a list of {SLOTS_PER_CELL} ops")
            slots = []
            for s, slot in enumerate(cell):
                where = f"genotype.cells[{c}][{s}]"
                if isinstance(slot, dict):
                    if set(slot) != {"op", "width"}:
                        raise ValueError(f"{where}: expected keys op and width, got {sorted(slot)}")
                    op, width = slot["op"], slot["width"]
                elif isinstance(slot, list | tuple) and len(slot) == 2:
                    op, width = slot
                else:
                    raise ValueError(f"{where}: expected {{'op': ..., 'width': ...}}, got {slot!r}")
                slots.append(OpChoice(_op_name(op, f"{where}.op"), width))
            cells.append(tuple(slots))
        return cls(
            backbone=data["backbone"],
            path=tuple(data["path"]),
            cells=tuple(cells),
            nf=data.get("nf", 64),
            scale=data.get("scale", 4),
            name=str(data.get("name", "")),
        )

    @classmethod
    def from_json(cls, text: str, source: str = "genotype") -> Genotype:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{source}: not valid JSON ({err})") from None
        return cls.from_dict(data)

    # --- presentation -----------------------------------------------------------------------
    def table(self) -> str:
        """The paper's Tables 1-4 layout as a Markdown table."""
        header = "| RiR Block ID | " + " | ".join(f"OP{i + 1}" for i in range(SLOTS_PER_CELL)) + " |"
        rule = "|---" * (SLOTS_PER_CELL + 1) + "|"
        rows = [f"| {b} | " + " | ".join(str(c) for c in cell) + " |" for b, cell in enumerate(self.cells)]
        title = f"Path: {list(self.path)}  (backbone {self.backbone}, ×{self.scale})"
        return "\n".join([title, "", header, rule, *rows])


def zoo_names() -> list[str]:
    """Names of the shipped genotypes (the paper's Tables 1-4)."""
    return sorted(
        p.name[: -len(".json")] for p in resources.files("search_space.zoo").iterdir() if p.name.endswith(".json")
    )


def load_genotype(name_or_path: str | Path) -> Genotype:
    """A zoo name (e.g. "trilevel-b-psnr") or a JSON file path; errors name the file or list the zoo."""
    text_path = Path(name_or_path)
    if text_path.suffix == ".json" or text_path.exists():
        if not text_path.is_file():
            raise ValueError(f"{text_path}: no such genotype file")
        return Genotype.from_json(text_path.read_text(), source=str(text_path))
    entry = resources.files("search_space.zoo") / f"{name_or_path}.json"
    if not entry.is_file():
        raise ValueError(
            f"unknown genotype {str(name_or_path)!r}; zoo: {', '.join(zoo_names())}, or a path to a .json file"
        )
    return Genotype.from_json(entry.read_text(), source=f"zoo/{name_or_path}.json")
