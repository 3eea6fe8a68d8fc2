"""The network-level search space: a tree of prefix paths of RiR cells ("0") and "1"-layers.

From the stem cell (the root, path [0]) every node with c cells and u "1"-layers branches to a new
cell if c < num_cells and to a new "1"-layer if u < num_ups. It is a tree, not a shared trellis:
every edge owns its weights and its architecture rows (method.md §4). Nodes are numbered by an
iterative DFS that pushes the cell child first, so the "1"-child is expanded first: index 0 = [0],
1 = [0, 1], 21 = [0, 0], 54 = [0, 0, 0, 0, 0, 1, 1] for the default (5 cells, 2 "1"-layers).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

__all__ = ["Node", "PathTree"]


@dataclass(frozen=True)
class Node:
    """One node: the feature map after the path `path` (its last entry is the edge into it)."""

    index: int
    path: tuple[int, ...]
    parent: int | None
    cell: int | None  # index into the supernet's cells when the edge into this node is a RiR cell
    up: int | None  # index into the supernet's "1"-layers when the edge is a "1"-layer

    @property
    def num_cells(self) -> int:
        return self.path.count(0)

    @property
    def num_ups(self) -> int:
        return self.path.count(1)


class PathTree:
    """All prefix paths of at most `num_cells` cells and `num_ups` "1"-layers, in DFS order."""

    def __init__(self, num_cells: int = 5, num_ups: int = 2) -> None:
        if num_cells < 1 or num_ups < 0:
            raise ValueError(f"need num_cells >= 1 and num_ups >= 0, got {num_cells}, {num_ups}")
        self.num_cells = num_cells
        self.num_ups = num_ups
        nodes: list[Node] = []
        cells = ups = 0
        stack: list[tuple[tuple[int, ...], int | None]] = [((0,), None)]
        while stack:
            path, parent = stack.pop()
            if path[-1] == 0:
                cell, up, cells = cells, None, cells + 1
            else:
                cell, up, ups = None, ups, ups + 1
            node = Node(len(nodes), path, parent, cell, up)
            nodes.append(node)
            if node.num_cells < num_cells:
                stack.append(((*path, 0), node.index))
            if node.num_ups < num_ups:
                stack.append(((*path, 1), node.index))
        self.nodes: tuple[Node, ...] = tuple(nodes)
        self.num_cell_edges = cells
        self.num_up_edges = ups
        self._index = {n.path: n.index for n in nodes}

    def __len__(self) -> int:
        return len(self.nodes)

    def index_of(self, path: tuple[int, ...] | list[int]) -> int:
        """Node index of `path`; ValueError naming the path when the tree has no such node."""
        key = tuple(path)
        if key not in self._index:
            raise ValueError(
                f"path {list(key)} is not in the search space "
                f"(it must start with 0 and hold at most {self.num_cells} zeros and {self.num_ups} ones)"
            )
        return self._index[key]

    def ancestry(self, index: int) -> list[int]:
        """Node indices from the root to `index`, both included."""
        chain = [index]
        while (parent := self.nodes[chain[-1]].parent) is not None:
            chain.append(parent)
        return chain[::-1]

    @cached_property
    def full_paths(self) -> torch.Tensor:
        """[P, L] node indices of every root→leaf path with all cells and "1"-layers (15 by default)."""
        leaves = [n.index for n in self.nodes if n.num_cells == self.num_cells and n.num_ups == self.num_ups]
        return torch.tensor([self.ancestry(i) for i in leaves], dtype=torch.long)

    @cached_property
    def ancestry_matrix(self) -> torch.Tensor:
        """[N, N] 0/1 matrix: row n has ones at n and its ancestors (cumulative cost = M @ edge cost)."""
        matrix = torch.zeros(len(self), len(self))
        for node in self.nodes:
            matrix[node.index, self.ancestry(node.index)] = 1.0
        return matrix

    @cached_property
    def children(self) -> tuple[tuple[int, ...], ...]:
        kids: list[list[int]] = [[] for _ in self.nodes]
        for node in self.nodes:
            if node.parent is not None:
                kids[node.parent].append(node.index)
        return tuple(tuple(k) for k in kids)
