"""The trilevel supernet: network-level tree × cell-level mixed ops × kernel-level slimmable widths.

Architecture parameters (method.md §4 naming in brackets):
- `alpha` [cells, 5, ops]: op logits per slot (paper α).
- `width_logits` [cells, 4, widths]: output-width logits of slots 1-4 (paper γ; slot 5 is nf).
- `path_logits` [nodes]: one distribution over every prefix path of the tree (paper β; code "gamma").

Forward = Σ_n p_n · h_n over tree nodes, each cell Σ_k w_k · op_k at sampled widths, then the
backbone head. Ops or subtrees whose combiner weight is exactly 0 are not computed ("sparse
execution"); because the combiners give exactly-zero weights zero gradient, this equals dense
execution in outputs and gradients, and makes late (nearly one-hot) sparsestmax searches cheap.

`recompute_cells` (share of cells, spread evenly) trades time for memory when most ops still carry
weight (dense early search): those cells keep only their input for backward and run their forward
again there (activation checkpointing), with the same outputs and gradients.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from search_space.backbones import BACKBONES, Head, UpLayer, make_stem, required_ups
from search_space.combiners import COMBINERS, combine
from search_space.cost import count_macs
from search_space.derived import DerivedNetwork, build_network
from search_space.genotype import SLOTS_PER_CELL, Genotype, OpChoice
from search_space.ops import PRIMITIVES, RESIDUAL_SCALE, build_op, slice_like
from search_space.tree import PathTree

__all__ = ["WIDTH_MODES", "MixedCell", "Supernet", "SupernetConfig", "WidthSample", "inherit"]

WIDTH_MODES: tuple[str, ...] = ("max", "min", "random", "gumbel", "argmax")
LEVELS: tuple[str, ...] = ("trilevel", "bilevel")


@dataclass(frozen=True)
class SupernetConfig:
    """Everything that shapes a supernet; the defaults are the paper's (method.md §1, §4)."""

    backbone: str = "B"
    nf: int = 64
    scale: int = 4
    num_cells: int = 5
    num_ups: int = 2
    widths: tuple[int, ...] = (24, 32, 40, 56, 64)
    ops: tuple[str, ...] = PRIMITIVES
    combiner: str = "sparsestmax"
    levels: str = "trilevel"
    # the path of a bilevel search; None: AGD's, every cell then the "1"-layers (`bilevel_path`)
    fixed_path: tuple[int, ...] | None = None
    sparse_execution: bool = True
    cost_lr_size: tuple[int, int] = (256, 256)
    alpha_init: float = 1e-3
    width_init: float = 1e-3
    path_init: float = 0.3
    omega_ops: float = 2 / 7  # ω1: FLOPs term at max widths, current ops and path
    omega_widths: float = 5 / 7  # ω2: FLOPs term at Gumbel widths, uniform ops
    recompute_cells: float = 0.0  # share of cells recomputed in backward instead of storing activations
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"supernet.{name}: {why}, got {getattr(self, name)!r}")

        if self.backbone not in BACKBONES:
            raise bad("backbone", f"must be one of {', '.join(BACKBONES)}")
        if self.combiner not in COMBINERS:
            raise bad("combiner", f"must be one of {', '.join(COMBINERS)}")
        if self.levels not in LEVELS:
            raise bad("levels", f"must be one of {', '.join(LEVELS)}")
        if not self.ops or any(op not in PRIMITIVES for op in self.ops) or len(set(self.ops)) != len(self.ops):
            raise bad("ops", f"must be distinct names from {', '.join(PRIMITIVES)}")
        if list(self.widths) != sorted(set(self.widths)) or self.widths[-1] != self.nf or self.widths[0] < 1:
            raise bad("widths", f"must be strictly increasing positive widths ending at nf={self.nf}")
        if self.num_cells < 1:
            raise bad("num_cells", "must be >= 1")
        if not 0.0 <= self.recompute_cells <= 1.0:
            raise bad("recompute_cells", "must be a share between 0 and 1")
        ups = required_ups(self.backbone, self.scale)
        if ups is not None and self.num_ups != ups:
            raise bad("num_ups", f"backbone A at scale {self.scale} needs exactly {ups} up-convs")
        if self.levels == "bilevel" and self.fixed_path is not None:  # the path a bilevel search keeps
            supernet = f"the supernet has num_cells={self.num_cells}, num_ups={self.num_ups}, backbone {self.backbone}"
            try:
                PathTree(self.num_cells, self.num_ups).index_of(self.fixed_path)
            except ValueError as err:
                raise bad("fixed_path", f"{err}; {supernet}") from None
            if ups is not None and list(self.fixed_path).count(1) != ups:
                raise bad("fixed_path", f"backbone A needs exactly {ups} ones (its up-convs); {supernet}")

    @property
    def bilevel_path(self) -> tuple[int, ...]:
        """The path a bilevel search keeps: `fixed_path`, else AGD's for this supernet (every cell, then the ups).

        AGD fixes [0,0,0,0,0,1,1] for its 5 cells and 2 up-convs; on a smaller supernet that is every
        cell it has followed by every "1"-layer, so `num_cells` changes it too.
        """
        if self.fixed_path is not None:
            return tuple(self.fixed_path)
        return (0,) * self.num_cells + (1,) * self.num_ups


@dataclass(frozen=True)
class WidthSample:
    """Output-width choice of every slot of every cell for one forward pass.

    `index` [cells][5] indexes `config.widths` (slot 5 always nf). `gates` [cells, 5] carries the
    straight-through Gumbel values (1 in the forward pass) through which the width logits get
    their gradient: a slot's output is scaled by gate_in · gate_out (AGD `arch_ratio`, §1).
    """

    index: tuple[tuple[int, ...], ...]
    gates: Tensor | None = None
    #: `index` as a [cells, 5] long tensor where the sample was drawn (the cost model's gather), if kept.
    index_tensor: Tensor | None = field(default=None, compare=False)

    def slot_gates(self) -> Tensor | None:
        if self.gates is None:
            return None
        gate_in = F.pad(self.gates[:, :-1], (1, 0), value=1.0)
        return gate_in * self.gates


def _accumulate(total: Tensor | None, term: Tensor) -> Tensor:
    """`total + term`, added into `total` when that gives the same tensor (same dtype and shape).

    Why: the weighted sums of a cell's ops and of the tree's paths add activations of the HR size; a new
    buffer per addition is an allocation the size of the image (page faults included) on the CPU. `total`
    is always a product the caller just made (`weight * activation`), which no autograd node saved
    (a product's backward keeps its factors), so adding into it changes nothing else; the addition is the
    same elementwise float add, so the result and every gradient are bit-identical. Mixed dtypes (bf16
    autocast with an fp32 shortcut) keep the promoting out-of-place add.
    """
    if total is None:
        return term
    if total.dtype == term.dtype and total.shape == term.shape:
        return total.add_(term)
    return total + term


class MixedCell(nn.Module):
    """One RiR cell of the supernet: 5 sequential slots, each a weighted sum of candidate ops."""

    def __init__(self, nf: int, ops: Sequence[str]) -> None:
        super().__init__()
        self.op_names = tuple(ops)
        self.slots = nn.ModuleList(
            nn.ModuleDict({name: build_op(name, nf, nf, slimmable=True) for name in ops}) for _ in range(SLOTS_PER_CELL)
        )

    def forward(
        self,
        x: Tensor,
        op_weights: Tensor,
        widths: Sequence[int],
        gates: Tensor | None = None,
        active: Sequence[Sequence[int]] | None = None,
    ) -> Tensor:
        """`op_weights` [5, ops]; `widths` output width per slot; `active[i]` the ops to compute."""
        h = x
        for i, slot in enumerate(self.slots):
            ops = range(len(self.op_names)) if active is None else active[i]
            mixed = None
            for k in ops:
                mixed = _accumulate(mixed, op_weights[i, k] * slot[self.op_names[k]](h, widths[i]))
            assert mixed is not None, "a slot needs at least one op with non-zero weight"
            h = mixed if gates is None else mixed * gates[i]
        return _accumulate(RESIDUAL_SCALE * h, x)  # = x + 0.2·h (a float add is commutative)


class Supernet(nn.Module):
    """The trilevel supernet of method.md §4 (55-node tree, 35 cells, 20 "1"-layers by default)."""

    def __init__(self, config: SupernetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or SupernetConfig()
        self.tree = tree = PathTree(config.num_cells, config.num_ups)
        self.stem = make_stem(config.nf)
        self.cells = nn.ModuleList(MixedCell(config.nf, config.ops) for _ in range(tree.num_cell_edges))
        self.ups = nn.ModuleList(UpLayer(config.backbone, config.nf) for _ in range(tree.num_up_edges))
        self.head = Head(config.backbone, config.nf, config.scale)
        n_cells, n_ops, n_widths = tree.num_cell_edges, len(config.ops), len(config.widths)
        self.alpha = nn.Parameter(torch.full((n_cells, SLOTS_PER_CELL, n_ops), config.alpha_init))
        self.width_logits = nn.Parameter(torch.full((n_cells, SLOTS_PER_CELL - 1, n_widths), config.width_init))
        self.path_logits = nn.Parameter(
            torch.full((len(tree),), config.path_init), requires_grad=config.levels == "trilevel"
        )
        self.register_buffer("radius", torch.zeros(()))
        # SSN freezing (method.md §5): rows whose combiner output became exactly one-hot are decided
        # for good. Buffers, so the frozen set is saved and restored with the search checkpoint.
        self.register_buffer("frozen_ops", torch.zeros(n_cells, SLOTS_PER_CELL, dtype=torch.bool))
        self.register_buffer("frozen_widths", torch.zeros(n_cells, SLOTS_PER_CELL - 1, dtype=torch.bool))
        self.register_buffer("frozen_path", torch.zeros((), dtype=torch.bool))
        # Nodes whose features may be the output: backbone A needs both up-convs done (ambiguity 2).
        ups_needed = required_ups(config.backbone, config.scale)
        eligible = [ups_needed is None or n.num_ups == ups_needed for n in tree.nodes]
        self.register_buffer("output_mask", torch.tensor(eligible), persistent=False)
        # Host copies of what the forward branches on: reading a device tensor there is a host-device
        # sync (one per node per pass), reading these is not.
        self._eligible = eligible
        eligible_index = torch.tensor([i for i, ok in enumerate(eligible) if ok], dtype=torch.long)
        self.register_buffer("_eligible_index", eligible_index, persistent=False)
        self._radius_value = 0.0
        self._fixing = False
        self._fixed_combined: tuple[Tensor, Tensor, list[list[list[int]]] | None, list[bool]] | None = None
        self.register_load_state_dict_post_hook(_sync_radius_value)
        self._resolution = [2**n.num_ups if config.backbone == "A" else 1 for n in tree.nodes]
        # Cost tables and index tensors as non-persistent buffers: they follow the net to its device
        # once (`.to`) instead of being copied there on every cost evaluation; not in the state dict.
        for name, table in self._build_cost_tables().items():
            self.register_buffer(f"_cost_{name}", table, persistent=False)
        share = config.recompute_cells  # spread evenly: cell c when ⌊(c+1)·share⌋ > ⌊c·share⌋
        self._recomputed = [int((c + 1) * share) > int(c * share) for c in range(tree.num_cell_edges)]

    # --- parameters -------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture parameters the search optimises (the path only when trilevel)."""
        params = [self.alpha, self.width_logits]
        return [*params, self.path_logits] if self.config.levels == "trilevel" else params

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in (self.alpha, self.width_logits, self.path_logits)}
        return [p for p in self.parameters() if id(p) not in arch]

    def set_radius(self, radius: float) -> None:
        """Sparsestmax radius r (0 = sparsemax, ≥ √(1−1/K) = one-hot); ignored by softmax."""
        self._radius_value = float(radius)
        self.radius.fill_(self._radius_value)

    # --- combiners --------------------------------------------------------------------------
    def op_weights(self, radius: float | None = None) -> Tensor:
        r = self._radius_value if radius is None else radius
        return combine(self.config.combiner, self.alpha, r, dim=-1)

    def path_weights(self, radius: float | None = None) -> Tensor:
        """One distribution over the tree's nodes (zero where a node cannot be the output)."""
        if self.config.levels == "bilevel":
            weights = torch.zeros_like(self.path_logits)
            weights[self.tree.index_of(self.config.bilevel_path)] = 1.0
            return weights
        r = self._radius_value if radius is None else radius
        mask = self.output_mask
        if all(self._eligible):
            return combine(self.config.combiner, self.path_logits, r, dim=-1)
        weights = torch.zeros_like(self.path_logits)
        return weights.masked_scatter(mask, combine(self.config.combiner, self.path_logits[mask], r, dim=-1))

    # --- SSN freezing ----------------------------------------------------------------------
    @torch.no_grad()
    def freeze_decided(self, counts: bool = True) -> dict[str, int]:
        """Freeze every row whose combiner output is exactly one-hot at the current radius (SSN).

        Why: once sparsestmax (or sparsemax) is one-hot the loss gives that row exactly zero
        gradient, but the ordering and FLOPs penalties still push its raw logits, and Adam turns a
        constant push into full steps, so a decided path would drift back out of its argmax over a
        long search. SSN fixes decided distributions instead. Rows: the ops of each slot and the
        network path (one row), the rows the combiner mixes. Softmax never freezes. Frozen stays frozen.

        Width rows are never frozen: widths are not mixed by the combiner but sampled (hard Gumbel,
        the sandwich passes; method.md, kernel level) and derived by argmax of their logits, so a
        sparsestmax of them being one-hot says nothing (with 3 widths it is one-hot by r ≈ 0.82 while
        the logits differ by ~1e-2) and would treat sparsestmax arms differently from softmax arms
        beyond their combiner. `frozen_widths` stays (all false) so older checkpoints still load.
        Returns the number of frozen rows per level (`counts=False`: {}, and no host read at all: the
        search step freezes after every arch step and needs no numbers).
        """
        if self.config.combiner != "softmax":
            self.frozen_ops |= _one_hot_rows(self.op_weights())
            if self.config.levels == "trilevel":
                path_w = self.path_weights()
                if not all(self._eligible):  # an index, not a boolean mask: no host-device sync
                    path_w = path_w.index_select(0, self._eligible_index)
                self.frozen_path |= _one_hot_rows(path_w)
        return self.frozen_counts() if counts else {}

    def frozen_counts(self) -> dict[str, int]:
        """How many rows are frozen per level: ops (slots), widths (slots), path (0 or 1)."""
        return {
            "frozen_ops": int(self.frozen_ops.sum()),
            "frozen_widths": int(self.frozen_widths.sum()),
            "frozen_path": int(self.frozen_path),
        }

    def frozen_masks(self) -> list[tuple[nn.Parameter, Tensor]]:
        """(architecture parameter, boolean mask of its frozen entries, same shape) pairs."""
        return [
            (self.alpha, self.frozen_ops.unsqueeze(-1).expand_as(self.alpha)),
            (self.width_logits, self.frozen_widths.unsqueeze(-1).expand_as(self.width_logits)),
            (self.path_logits, self.frozen_path.expand_as(self.path_logits)),
        ]

    @torch.no_grad()
    def zero_frozen_grads(self) -> None:
        """Zero the gradient of frozen rows from every term (loss, FLOPs and ordering penalties)."""
        for param, mask in self.frozen_masks():
            if param.grad is not None:
                param.grad.masked_fill_(mask, 0.0)

    # --- widths -----------------------------------------------------------------------------
    def sample_widths(self, mode: str = "max", generator: torch.Generator | None = None) -> WidthSample:
        """Width choice for every slot: max / min / uniform random / hard Gumbel straight-through /
        argmax of the width logits (what `derive` picks; used to validate the current architecture)."""
        n_cells, n_widths = self.tree.num_cell_edges, len(self.config.widths)
        top = n_widths - 1
        gates = None
        if mode in ("max", "min"):  # constants: the host index and the device tensor without a copy
            value = top if mode == "max" else 0
            row = (value,) * (SLOTS_PER_CELL - 1) + (top,)
            device = self.alpha.device
            full = torch.full((n_cells, SLOTS_PER_CELL), value, dtype=torch.long, device=device)
            full[:, -1] = top
            return WidthSample(tuple(row for _ in range(n_cells)), None, full)
        if mode == "argmax":
            index = self.width_logits.detach().argmax(dim=-1).cpu()
        elif mode == "random":
            index = torch.randint(n_widths, (n_cells, SLOTS_PER_CELL - 1), generator=generator)
        elif mode == "gumbel":
            logits = F.log_softmax(self.width_logits, dim=-1)
            uniform = torch.rand(logits.shape, generator=generator).to(logits.device)
            gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1.0 - 1e-7)))
            soft = F.softmax(logits + gumbel, dim=-1)
            index = soft.argmax(dim=-1)
            hard = F.one_hot(index, n_widths).to(soft) - soft.detach() + soft
            chosen = hard.gather(-1, index.unsqueeze(-1)).squeeze(-1)
            gates = F.pad(chosen, (0, 1), value=1.0)
        else:
            raise ValueError(f"width mode must be one of {', '.join(WIDTH_MODES)}, got {mode!r}")
        full = F.pad(index, (0, 1), value=top)
        return WidthSample(tuple(tuple(row) for row in full.tolist()), gates, full)

    # --- forward ----------------------------------------------------------------------------
    def forward(self, x: Tensor, widths: WidthSample | str = "max", generator: torch.Generator | None = None) -> Tensor:
        """SR image in [0, 1] for LR `x` under the current combiners and the given widths."""
        sample = self.sample_widths(widths, generator) if isinstance(widths, str) else widths
        op_w, path_w, active_ops, carries_weight = self._combined()
        gates = sample.slot_gates()
        needed = self._needed_nodes(carries_weight)
        widths_of = self.config.widths
        stem = self.stem(x)
        features: dict[int, Tensor] = {}
        out = None
        for node in self.tree.nodes:
            if not needed[node.index]:
                continue
            source = stem if node.parent is None else features[node.parent]
            if node.cell is not None:
                c = node.cell
                args = (
                    source,
                    op_w[c],
                    [widths_of[i] for i in sample.index[c]],
                    None if gates is None else gates[c],
                    None if active_ops is None else active_ops[c],
                )
                if self._recomputed[c] and torch.is_grad_enabled():
                    h = checkpoint(self.cells[c], *args, use_reentrant=False)
                else:
                    h = self.cells[c](*args)
            else:
                assert node.up is not None
                h = self.ups[node.up](source)
            features[node.index] = h
            if carries_weight[node.index] and self._eligible[node.index]:
                out = _accumulate(out, path_w[node.index] * h)
        assert out is not None, "no tree node carries path weight"
        return self.head(out)

    def _combined(self) -> tuple[Tensor, Tensor, list[list[list[int]]] | None, list[bool]]:
        """Op and path weights and (sparse execution) their non-zero pattern, read to the host once."""
        if self._fixed_combined is not None:
            return self._fixed_combined
        with _full_precision(self.alpha.device):  # under bf16 autocast too: they decide what runs and freezes
            op_w, path_w = self.op_weights(), self.path_weights()
        if self.config.sparse_execution:
            active_ops, carries_weight = _nonzero_pattern(op_w, path_w)
        else:
            active_ops, carries_weight = None, [True] * len(self.tree)
        combined = (op_w, path_w, active_ops, carries_weight)
        if self._fixing:
            self._fixed_combined = combined
        return combined

    @contextlib.contextmanager
    def fixed_architecture(self) -> Iterator[None]:
        """Passes inside share one evaluation of the combiners (and one host read of their pattern).

        Why: the passes of a weight step (and of pretrain) see the same architecture, so computing
        sparsestmax and reading its non-zero pattern to the host once per step instead of once per
        pass gives the same forward with fewer launches and syncs. The architecture parameters must
        need no gradient inside (the weights are constants then); the radius must not change.
        """
        moving = [name for name, p in (("alpha", self.alpha), ("path_logits", self.path_logits)) if p.requires_grad]
        if moving and torch.is_grad_enabled():
            raise RuntimeError(f"fixed_architecture: {', '.join(moving)} still require gradients; freeze them first")
        self._fixing, self._fixed_combined = True, None
        try:
            yield
        finally:
            self._fixing, self._fixed_combined = False, None

    def _needed_nodes(self, carries_weight: list[bool]) -> list[bool]:
        """A node is computed when it carries weight or a descendant does (reverse DFS order)."""
        needed = list(carries_weight)
        for node in reversed(self.tree.nodes):
            if needed[node.index] and node.parent is not None:
                needed[node.parent] = True
        return needed

    # --- differentiable cost ----------------------------------------------------------------
    def _build_cost_tables(self) -> dict[str, Tensor]:
        """Per-LR-pixel MACs of every op at every (Cin, Cout), and the fixed layers' MACs."""
        config = self.config
        widths, nf = config.widths, config.nf
        height, width = config.cost_lr_size
        pixels = height * width
        per_pixel = _per_pixel_op_macs(tuple(config.ops), tuple(widths)).clone()
        stem = count_macs(make_stem(nf), (1, 3, 1, 1), device="cpu") * pixels
        up_edge = []
        for node in self.tree.nodes:
            if node.up is None:
                up_edge.append(0.0)
                continue
            res_in = self._resolution[node.parent] if node.parent is not None else 1
            layer = UpLayer(config.backbone, nf)
            up_edge.append(float(count_macs(layer, (1, nf, res_in, res_in), device="cpu")) * pixels)
        res_out = max(self._resolution)
        head = count_macs(Head(config.backbone, nf, config.scale), (1, nf, res_out, res_out), device="cpu") * pixels
        pixel_scale = torch.tensor([float(r * r * pixels) for r in self._resolution])
        cell_nodes = [n.index for n in self.tree.nodes if n.cell is not None]
        return {
            "per_pixel": per_pixel,
            "fixed": torch.tensor(float(stem + head)),
            "up_edge": torch.tensor(up_edge),
            "cell_pixels": pixel_scale[cell_nodes],
            "cell_nodes": torch.tensor(cell_nodes, dtype=torch.long),
            "cell_of_node": torch.tensor([n.cell for n in self.tree.nodes if n.cell is not None], dtype=torch.long),
            "ancestry": self.tree.ancestry_matrix.clone(),
        }

    def expected_cost(self, op_weights: Tensor, path_weights: Tensor, widths: WidthSample) -> Tensor:
        """Differentiable expected MACs F at `config.cost_lr_size` (method.md §2).

        F = fixed layers + Σ_n p_n · (cumulative MACs of the root→n path), each cell costing
        Σ_slots Σ_k w_k · MACs_k(Cin, Cout) · gate_in · gate_out.
        """
        with _full_precision(op_weights.device):
            return self._expected_cost(op_weights, path_weights, widths)

    def _expected_cost(self, op_weights: Tensor, path_weights: Tensor, widths: WidthSample) -> Tensor:
        device = op_weights.device
        index = widths.index_tensor
        if index is None or index.device != device:
            index = torch.tensor(widths.index, device=device)  # [cells, 5]
        cin = F.pad(index[:, :-1], (1, 0), value=len(self.config.widths) - 1)
        per_slot = self._cost_per_pixel[:, cin, index].permute(1, 2, 0)  # [cells, 5, ops]
        slot_cost = (op_weights * per_slot).sum(-1)
        gates = widths.slot_gates()
        if gates is not None:
            slot_cost = slot_cost * gates
        cell_cost = slot_cost.sum(-1)  # per LR pixel at the cell's own resolution
        edge = self._cost_up_edge.index_put(
            (self._cost_cell_nodes,), cell_cost[self._cost_cell_of_node] * self._cost_cell_pixels
        )
        cumulative = self._cost_ancestry @ edge
        return self._cost_fixed + (path_weights * cumulative).sum()

    def flops_penalty(self, widths: WidthSample) -> Tensor:
        """ω1·F(α, widths = max) + ω2·F(α uniform, widths = the Gumbel sample), in MACs (AGD architect)."""
        op_w = self.op_weights()
        path_w = self.path_weights()
        at_max = self.expected_cost(op_w, path_w, self.sample_widths("max"))
        uniform = torch.full_like(op_w, 1.0 / op_w.shape[-1])
        sampled = self.expected_cost(uniform, path_w, widths)
        return self.config.omega_ops * at_max + self.config.omega_widths * sampled

    # --- derivation -------------------------------------------------------------------------
    @torch.no_grad()
    def derive(self, name: str = "") -> Genotype:
        """Argmax per level (method.md §4): path node, then op and width of every slot on it.

        Sparsestmax is evaluated at r = 1 (one-hot where the logits are not tied); ties go to the
        first index. The output width of slot 5 is always nf.
        """
        config = self.config
        if config.levels == "bilevel":
            node_index = self.tree.index_of(config.bilevel_path)
        else:
            path_w = self.path_weights(radius=1.0)
            scores = torch.where(self.output_mask, path_w, torch.full_like(path_w, -1.0))
            node_index = int(scores.argmax())
        op_w = self.op_weights(radius=1.0)
        width_index = self.width_logits.argmax(dim=-1).tolist()
        cells = []
        for i in self.tree.ancestry(node_index):
            node = self.tree.nodes[i]
            if node.cell is None:
                continue
            ops = op_w[node.cell].argmax(dim=-1).tolist()
            widths = [config.widths[w] for w in width_index[node.cell]] + [config.nf]
            cells.append(tuple(OpChoice(config.ops[k], w) for k, w in zip(ops, widths, strict=True)))
        return Genotype(
            backbone=config.backbone,
            path=self.tree.nodes[node_index].path,
            cells=tuple(cells),
            nf=config.nf,
            scale=config.scale,
            name=name,
        )


@functools.lru_cache(maxsize=16)
def _per_pixel_op_macs(ops: tuple[str, ...], widths: tuple[int, ...]) -> Tensor:
    """MACs per LR pixel of every op at every (Cin, Cout) width pair; counted once per process.

    The ops are built under a forked RNG: their weight init must not move the seeded global RNG, or the
    first supernet of a process would be initialised differently from the next (the count is cached).
    And on the CPU whatever the default device: a first supernet built under `torch.device("meta")` (a
    size estimate) would otherwise cache a meta table that every later supernet of the process copies.
    """
    with torch.device("cpu"), torch.random.fork_rng(devices=[]):
        table = torch.zeros(len(ops), len(widths), len(widths))
        for k, name in enumerate(ops):
            for a, cin in enumerate(widths):
                for b, cout in enumerate(widths):
                    op = build_op(name, cin, cout, slimmable=False)
                    table[k, a, b] = count_macs(op, (1, cin, 1, 1), call=lambda m, x, c=cout: m(x, c), device="cpu")
    return table


def _one_hot_rows(weights: Tensor) -> Tensor:
    """Rows (last dim) with exactly one non-zero weight."""
    return (weights > 0).sum(dim=-1) == 1


def _nonzero_pattern(op_weights: Tensor, path_weights: Tensor) -> tuple[list[list[list[int]]], list[bool]]:
    """([cells][slots] → ops with non-zero weight, nodes with non-zero path weight): one host read.

    Sparse execution must know on the host what to run; both masks come back in one transfer, the
    forward's only host-device sync.
    """
    n_ops = op_weights.numel()
    mask = torch.cat([op_weights.reshape(-1), path_weights.reshape(-1)]).gt(0).tolist()
    cells, slots, ops = op_weights.shape
    active = [[[k for k in range(ops) if mask[(c * slots + i) * ops + k]] for i in range(slots)] for c in range(cells)]
    return active, mask[n_ops:]


def _full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off: combiners and costs stay fp32 inside a bf16 forward (their matmuls would not)."""
    if device.type not in ("cpu", "cuda"):  # e.g. the meta device: no autocast there to turn off
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, enabled=False)


def _sync_radius_value(module: nn.Module, incompatible_keys: object) -> None:
    """After `load_state_dict`, the host copy of the radius follows the loaded buffer (one read, at load)."""
    module._radius_value = float(module.radius)


@torch.no_grad()
def inherit(supernet: Supernet, genotype: Genotype) -> DerivedNetwork:
    """The derived network with the supernet's weights sliced in along the genotype's path.

    Copies the stem, the chosen op of every slot of every RiR cell on the path (leading-channel
    slices, DwsBlock hidden = first 4·Cin channels, no projection shortcut where Cin == Cout),
    the "1"-layers on the path, and the head (method.md §4 "train from search", ambiguity 8).
    """
    config = supernet.config
    if genotype.backbone != config.backbone or genotype.nf != config.nf or genotype.scale != config.scale:
        raise ValueError(
            f"genotype (backbone {genotype.backbone}, nf {genotype.nf}, ×{genotype.scale}) does not fit the supernet "
            f"(backbone {config.backbone}, nf {config.nf}, ×{config.scale})"
        )
    net = build_network(genotype).to(next(supernet.parameters()).device)
    tree = supernet.tree
    chain = tree.ancestry(tree.index_of(genotype.path))
    net.stem.load_state_dict(supernet.stem.state_dict())
    net.head.load_state_dict(supernet.head.state_dict())
    blocks, ups = iter(net.blocks), iter(net.ups)
    for node_index in chain:
        node = tree.nodes[node_index]
        if node.cell is not None:
            block = next(blocks)
            cell = genotype.cells[node.path.count(0) - 1]
            for slot, (choice, op) in enumerate(zip(cell, block.ops, strict=True)):
                slice_like(supernet.cells[node.cell].slots[slot][choice.op], op)
        else:
            assert node.up is not None
            next(ups).load_state_dict(supernet.ups[node.up].state_dict())
    return net
