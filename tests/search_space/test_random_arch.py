"""The random, FLOPs-matched baseline: draws from the supernet's own space, within ±10 % of the searched GFLOPs."""

from __future__ import annotations

import random

import pytest

from search_space.cost import count
from search_space.random_arch import flops_matched, random_genotype
from search_space.supernet import Supernet, SupernetConfig

SMALL_A = SupernetConfig(backbone="A", nf=16, widths=(8, 12, 16), num_cells=2)  # the `small` preset's supernet


def test_draws_cover_the_space_the_supernet_can_derive():
    rng = random.Random(0)
    draws = [random_genotype(SMALL_A, rng) for _ in range(200)]
    assert {d.path for d in draws} == {(0, 1, 1), (0, 1, 0, 1), (0, 1, 1, 0), (0, 0, 1, 1)}  # A: both ups done
    slots = [c for d in draws for cell in d.cells for c in cell]
    assert {c.op for c in slots} == set(SMALL_A.ops) and {c.width for c in slots} == {8, 12, 16}
    assert all(cell[-1].width == 16 for d in draws for cell in d.cells)  # OP5 feeds the residual
    bilevel = SupernetConfig(backbone="A", nf=16, widths=(8, 12, 16), num_cells=2, levels="bilevel")
    assert {random_genotype(bilevel, rng).path for _ in range(20)} == {(0, 0, 1, 1)}  # the fixed path stays


def test_flops_matched_draws_fall_in_the_band_and_are_the_same_every_run():
    searched = Supernet(SMALL_A).derive()  # a genotype the search could have derived
    target = count(searched).gmacs
    draws = [flops_matched(SMALL_A, searched, seed=1, draw=k) for k in range(2)]
    for genotype in draws:
        assert abs(count(genotype).gmacs - target) <= 0.1 * target
    assert draws[0] != draws[1]  # two different architectures
    assert flops_matched(SMALL_A, searched, seed=1, draw=1) == draws[1]  # deterministic in (seed, draw)


def test_an_unreachable_band_is_a_clear_error():
    searched = Supernet(SMALL_A).derive()
    with pytest.raises(ValueError, match=r"no random architecture within ±1% of .* in 3 draws \(closest"):
        flops_matched(SMALL_A, searched, seed=0, draw=0, tolerance=0.01, max_tries=3)
