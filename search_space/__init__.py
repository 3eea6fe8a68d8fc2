"""Trilevel search space for efficient SR: supernet, ops, combiners, cost model, genotypes.

Pure PyTorch: importing this package never imports Ray or MLflow, so a researcher can build the
supernet, derive and count a genotype in a notebook with torch alone.
"""

from search_space.combiners import COMBINERS, combine, ordering_penalty, softmax, sparsemax, sparsestmax
from search_space.cost import Cost, count
from search_space.derived import DerivedNetwork, build_network
from search_space.genotype import Genotype, OpChoice, load_genotype, zoo_names
from search_space.ops import PRIMITIVES
from search_space.supernet import WIDTH_MODES, Supernet, SupernetConfig, WidthSample, inherit
from search_space.teacher import RRDBNet, TeacherWeightsError, load_teacher
from search_space.tree import PathTree

__all__ = [
    "COMBINERS",
    "PRIMITIVES",
    "WIDTH_MODES",
    "Cost",
    "DerivedNetwork",
    "Genotype",
    "OpChoice",
    "PathTree",
    "RRDBNet",
    "Supernet",
    "SupernetConfig",
    "TeacherWeightsError",
    "WidthSample",
    "build_network",
    "combine",
    "count",
    "inherit",
    "load_genotype",
    "load_teacher",
    "ordering_penalty",
    "softmax",
    "sparsemax",
    "sparsestmax",
    "zoo_names",
]
