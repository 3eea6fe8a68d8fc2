"""Random architectures of the same search space, FLOPs-matched to a searched one: NAS's sanity baseline.

A search is only worth its cost if it beats a random architecture of the same cost (Li & Talwalkar,
2019; Yu et al., ICLR 2020). :func:`random_genotype` draws uniformly from exactly what the supernet
could derive: a path among its eligible output nodes (the fixed path of a bilevel search), an op per
slot among its ops, a width per slot among its widths (the last slot outputs nf, as every derived
network's does). :func:`flops_matched` redraws until the draw's GFLOPs (256×256 LR input, the
derived networks' convention) are within ±`tolerance` of the searched genotype's, deterministically
from (seed, draw), so the k-th random network of a seed is the same in every run.
"""

from __future__ import annotations

import random

from search_space.backbones import required_ups
from search_space.cost import count
from search_space.genotype import SLOTS_PER_CELL, Genotype, OpChoice
from search_space.supernet import SupernetConfig
from search_space.tree import PathTree

__all__ = ["flops_matched", "random_genotype"]

_SEED_STRIDE = 1_000_003  # (seed, draw) → one RNG seed; distinct for any draw index below it


def _eligible_paths(config: SupernetConfig) -> list[tuple[int, ...]]:
    if config.levels == "bilevel":
        return [config.bilevel_path]
    ups = required_ups(config.backbone, config.scale)
    nodes = PathTree(config.num_cells, config.num_ups).nodes
    return [n.path for n in nodes if ups is None or n.num_ups == ups]


def random_genotype(config: SupernetConfig, rng: random.Random, name: str = "random") -> Genotype:
    """One architecture drawn uniformly, level by level, from the search space of `config`."""
    path = rng.choice(_eligible_paths(config))
    cells = []
    for _ in range(path.count(0)):
        widths = [rng.choice(config.widths) for _ in range(SLOTS_PER_CELL - 1)] + [config.nf]
        cells.append(tuple(OpChoice(rng.choice(config.ops), w) for w in widths))
    return Genotype(config.backbone, path, tuple(cells), nf=config.nf, scale=config.scale, name=name)


def flops_matched(
    config: SupernetConfig,
    reference: Genotype,
    seed: int,
    draw: int,
    tolerance: float = 0.1,
    max_tries: int = 5000,
) -> Genotype:
    """The `draw`-th random genotype of `seed` whose GFLOPs are within ±`tolerance` of `reference`'s.

    Redraws (from one RNG seeded by seed and draw) until one falls in the band; ValueError naming the
    band and the closest draw when none does in `max_tries`, e.g. a reference at the very edge of
    what the space can cost.
    """
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
    if draw < 0 or draw >= _SEED_STRIDE:
        raise ValueError(f"draw must be in 0..{_SEED_STRIDE - 1}, got {draw}")
    target = count(reference, config.cost_lr_size).gmacs
    low, high = target * (1 - tolerance), target * (1 + tolerance)
    rng = random.Random(seed * _SEED_STRIDE + draw)
    closest = None
    for _ in range(max_tries):
        genotype = random_genotype(config, rng, name=f"random-{draw} (seed {seed}, FLOPs-matched)")
        gflops = count(genotype, config.cost_lr_size).gmacs
        if low <= gflops <= high:
            return genotype
        if closest is None or abs(gflops - target) < abs(closest - target):
            closest = gflops
    raise ValueError(
        f"no random architecture within ±{tolerance:.0%} of {target:.3f} GFLOPs ({low:.3f}-{high:.3f}) in "
        f"{max_tries} draws (closest {closest:.3f}); the searched network is at the edge of what the space costs"
    )
