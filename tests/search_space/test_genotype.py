"""Genotype JSON, validation errors, the paper's table rendering, and the zoo (Tables 1-4)."""

from __future__ import annotations

import json

import pytest
import torch

from search_space.derived import build_network
from search_space.genotype import Genotype, load_genotype, zoo_names

ZOO = ["trilevel-a-vis", "trilevel-b-aim", "trilevel-b-psnr", "trilevel-b-vis"]


def test_zoo_ships_tables_1_to_4():
    assert zoo_names() == ZOO


@pytest.mark.parametrize("name", ZOO)
def test_zoo_json_round_trip_and_network(name):
    genotype = load_genotype(name)
    assert Genotype.from_json(genotype.to_json()) == genotype
    with torch.no_grad():
        out = build_network(genotype)(torch.rand(1, 3, 8, 8))
    assert out.shape == (1, 3, 32, 32)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_table_3_renders_like_the_paper():
    table = load_genotype("trilevel-b-psnr").table()
    assert "Path: [0, 0, 0, 0, 0, 1]" in table
    assert "| 1 | (DwsBlock, 32) | (ResBlock, 40) | (DwsBlock, 56) | (Conv 3×3, 40) | (Conv 3×3, 64) |" in table
    assert "| 4 | (DwsBlock, 32) | (Conv 3×3, 64) | (Conv 3×3, 64) | (Conv 3×3, 24) | (Conv 3×3, 64) |" in table


def test_paper_display_names_are_accepted():
    data = load_genotype("trilevel-b-aim").to_dict()
    data["cells"][0][0] = ["Conv 1x1", 40]
    data["cells"][1][0] = {"op": "DwsBlock", "width": 64}
    assert Genotype.from_dict(data) == load_genotype("trilevel-b-aim")


def _aim() -> dict:
    return load_genotype("trilevel-b-aim").to_dict()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(backbone="C"), r"genotype.backbone: must be one of A, B, got 'C'"),
        (lambda d: d.update(path=[1, 0]), r"genotype.path: must be a non-empty list of 0/1 starting with 0"),
        (lambda d: d.update(path=[0, 0, 0, 1]), r"genotype.cells: the path has 3 RiR blocks but 2 cells"),
        (lambda d: d["cells"][1].pop(), r"genotype.cells\[1\]: needs 5 ops, got 4"),
        (lambda d: d["cells"][0][2].update(op="sepconv"), r"genotype.cells\[0\]\[2\].op: unknown op 'sepconv'"),
        (lambda d: d["cells"][0][2].update(width=80), r"genotype.cells\[0\]\[2\].width: must be an integer in 1..64"),
        (lambda d: d["cells"][0][4].update(width=32), r"genotype.cells\[0\]\[4\].width: OP5 .* must output nf=64"),
        (lambda d: d.update(schema_version=7), r"genotype.schema_version: expected 1, got 7"),
        (lambda d: d.pop("cells"), r"genotype.cells: missing"),
        (lambda d: d.update(colour="red"), r"genotype: unknown field\(s\) colour"),
        (
            lambda d: d.update(backbone="A", path=[0, 0, 1]),
            r"genotype.path: backbone A at scale 4 needs exactly 2 ones",
        ),
    ],
)
def test_invalid_genotypes_name_the_field(mutate, message):
    data = _aim()
    mutate(data)
    with pytest.raises(ValueError, match=message):
        Genotype.from_dict(data)


def test_bad_json_and_unknown_names(tmp_path):
    bad = tmp_path / "g.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"g.json: not valid JSON"):
        load_genotype(bad)
    with pytest.raises(ValueError, match=r"no such genotype file"):
        load_genotype(tmp_path / "missing.json")
    with pytest.raises(ValueError, match=r"unknown genotype 'nope'; zoo: trilevel-a-vis"):
        load_genotype("nope")
    good = tmp_path / "ok.json"
    good.write_text(json.dumps(_aim()))
    assert load_genotype(good) == load_genotype("trilevel-b-aim")
