"""Combiners: map architecture logits to mixing weights on the probability simplex.

TrilevelNAS relaxes two discrete choices into continuous mixtures: the operation in every cell slot
(α, shape [35, 5, 4], mixed over the last dim) and the network-level node the supernet reads out
(γ_path, shape [55], one distribution over all prefix paths).  A *combiner* turns those raw logits
into the mixing weights.

- ``softmax`` is AGD's combiner (and the Table 7 ablation): dense, never exactly one-hot, so a
  search with it needs a separate discretisation (argmax) step at the end.
- ``sparsemax`` (Martins & Astudillo, 2016) is the Euclidean projection onto the simplex: it can
  put exact zeros on weak candidates, and the supernet skips ops whose weight is exactly 0.
- ``sparsestmax`` (Shao et al., SSN, CVPR 2019) is sparsemax with an extra constraint
  ``‖p − 1/K‖ ≥ r``.  The search grows r linearly from 0 (= sparsemax) to 1; once
  ``r ≥ sqrt(1 − 1/K)`` the only feasible points are the simplex vertices, so every distribution is
  exactly one-hot at the end of the search and *no discretisation step is needed*: the network that
  was trained is the network that is derived (method.md §4 "Sparsestmax schedule", §5).

``ordering_penalty`` is the "sorted sparsestmax" ordering constraint on the raw path logits
(method.md §4, ambiguity 1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "COMBINERS",
    "combine",
    "ordering_penalty",
    "softmax",
    "sparsemax",
    "sparsestmax",
]

COMBINERS: tuple[str, ...] = ("softmax", "sparsemax", "sparsestmax")

# Value written at coordinates outside the current face before recursing.  The face entries of p sum
# to 1, so max(p) > 0 and the sparsemax threshold tau >= max(p) - 1 > -1: -3 is always dropped, for
# any radius.  In exact arithmetic those coordinates are 0 and dropped anyway (tau > 0 whenever some
# p_i < 0); the constant only stops round-off (sum(p) = 1 - 1e-16) re-admitting them at ~1e-16.
_OFF_FACE = -3.0


def softmax(logits: Tensor, dim: int = -1) -> Tensor:
    """Dense softmax weights: AGD's combiner and the softmax-vs-sparsestmax ablation (Table 7)."""
    return torch.softmax(logits, dim=dim)


def _sparsemax_lastdim(z: Tensor) -> Tensor:
    """Forward sparsemax over the last dim (no autograd): sort-based threshold, max-shifted."""
    z = z - z.amax(dim=-1, keepdim=True)
    zs, _ = torch.sort(z, dim=-1, descending=True)
    k = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype, device=z.device)
    csum = zs.cumsum(dim=-1)
    # The condition 1 + k z_(k) > cumsum_k holds on a prefix of the sorted order; k* = its length.
    # k* >= 1 always (z_(1) = 0 after the shift), so the gather index is valid.
    kstar = (1.0 + k * zs > csum).sum(dim=-1, keepdim=True)
    tau = (csum.gather(-1, kstar - 1) - 1.0) / kstar.to(z.dtype)
    return torch.clamp(z - tau, min=0.0)


class _SparsemaxFn(torch.autograd.Function):
    """Sparsemax over the last dim with the exact Jacobian ``diag(s) − s sᵀ/|S|``."""

    @staticmethod
    def forward(ctx, z: Tensor) -> Tensor:  # type: ignore[override]
        out = _sparsemax_lastdim(z)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> Tensor:  # type: ignore[override]
        (out,) = ctx.saved_tensors
        supp = (out > 0).to(grad_out.dtype)
        n = supp.sum(dim=-1, keepdim=True)  # >= 1 for any finite input
        mean = (grad_out * supp).sum(dim=-1, keepdim=True) / n
        # Off-support entries get exactly 0 (supp == 0), so a zero weight never leaks gradient.
        return supp * (grad_out - mean)


def sparsemax(logits: Tensor, dim: int = -1) -> Tensor:
    """Sparsemax (Euclidean projection onto the simplex) along ``dim``, batched over all other dims.

    Why: it yields exact zeros, which the supernet exploits to skip ops, and it is the r = 0 case of
    sparsestmax.  Backward uses the exact sparsemax Jacobian, so gradients to, and from, zero
    outputs are exactly 0.
    """
    z = logits.movedim(dim, -1)
    if z.numel() == 0:
        return logits.clone()
    return _SparsemaxFn.apply(z).movedim(-1, dim)


def _sparsestmax_rows(z: Tensor, radius: Tensor) -> Tensor:
    """Vectorised SSN sparsestmax on a (N, K) tensor; ``radius`` is a detached 0-d tensor."""
    n_rows, k = z.shape
    r_cur = radius.expand(n_rows, 1).clone()
    out = torch.zeros_like(z)
    active = torch.ones(n_rows, 1, dtype=torch.bool, device=z.device)
    x = z
    u_prev: Tensor | None = None
    tol = 32.0 * torch.finfo(z.dtype).eps
    # Each recursion strictly shrinks the support, so K + 1 rounds always suffice.
    for _ in range(k + 1):
        w = _SparsemaxFn.apply(x)
        supp = (w > 0).detach()
        n_supp = supp.sum(dim=-1, keepdim=True)
        u = supp.to(z.dtype) / n_supp.to(z.dtype)  # centre of the current face (constant)
        if u_prev is not None:
            # Points of the sub-face are at distance sqrt(r² − ‖u − u_prev‖²) from its own centre.
            shift2 = (u - u_prev).square().sum(dim=-1, keepdim=True)
            r_cur = torch.sqrt(torch.clamp(r_cur.square() - shift2, min=0.0))
        diff = w - u
        d2 = diff.square().sum(dim=-1, keepdim=True)
        # Safe norm: never evaluate sqrt'(0) nor divide by 0, even in the branch torch.where discards.
        pos = d2 > 0
        d = torch.where(pos, torch.sqrt(torch.where(pos, d2, torch.ones_like(d2))), torch.zeros_like(d2))
        d_safe = torch.where(pos, d, torch.ones_like(d))
        # Return w as is when it is one-hot or exactly at the face centre (push direction undefined:
        # the centre is returned unchanged, see sparsestmax()).
        keep_w = (n_supp == 1) | ~pos
        # Vertex shortcut: a radius reaching the vertex distance sqrt(1 - 1/|S|) of the face can only
        # end at the vertex of the largest weight; return it exactly (needs a unique maximum).
        top = w.amax(dim=-1, keepdim=True)
        is_top = (w == top).detach()
        vertex2 = 1.0 - 1.0 / n_supp.to(z.dtype)
        snap = ~keep_w & (is_top.sum(dim=-1, keepdim=True) == 1) & (r_cur.square() >= vertex2 - tol)
        keep_w = keep_w | (~snap & (d >= r_cur))
        p = u + r_cur * diff / d_safe
        has_neg = (p < 0).any(dim=-1, keepdim=True)
        push = ~keep_w & ~snap
        out = torch.where(active & keep_w, w, out)
        out = torch.where(active & snap, is_top.to(z.dtype), out)
        out = torch.where(active & push & ~has_neg, torch.clamp(p, 0.0, 1.0), out)
        active = active & push & has_neg
        if not bool(active.any()):
            return out
        # Recurse on p; coordinates off the current face are pinned far below any threshold.
        x = torch.where(supp, p, torch.full_like(p, _OFF_FACE))
        u_prev = u
    # Unreachable in exact arithmetic; guard against round-off by projecting what is left.
    return torch.where(active, _SparsemaxFn.apply(x), out)


def sparsestmax(logits: Tensor, radius: float | Tensor, dim: int = -1) -> Tensor:
    """SSN sparsestmax along ``dim``: sparsemax pushed at least ``radius`` away from the face centre.

    Why: growing ``radius`` from 0 to 1 drives every distribution to an exact one-hot vector
    (``r ≥ sqrt(1 − 1/K)``), so the searched supernet *is* the derived network.

    Algorithm (SSN ``utils/ssn_utils.py``, method.md §5), vectorised over all rows with masks and at
    most K + 1 rounds (no Python loop over rows):

    1. ``w = sparsemax(x)``; if ``w`` is one-hot, return it.
    2. ``u`` = centre of ``w``'s face (``1/|S|`` on the support ``S``).  On a recursive round the
       radius shrinks to ``r' = sqrt(max(r² − ‖u − u_prev‖², 0))``.  As in SSN, the first round does
       *not* shrink ``r`` even when sparsemax already dropped coordinates (``u_prev`` is unset).
    3. If ``‖w − u‖ ≥ r``, return ``w``; else push radially ``p = u + r (w − u)/‖w − u‖``.
    4. If some ``p_i < 0``, recurse on ``p`` (its sparsemax drops them); else return ``clamp(p, 0, 1)``.

    Every output satisfies ``‖p − 1/K‖ ≥ r`` unless it is one-hot or an exact face centre (below),
    and ``radius = 0`` returns exactly ``sparsemax``.

    Vertex shortcut (same result as SSN in exact arithmetic): once the current radius reaches the
    face's vertex distance ``sqrt(1 − 1/|S|)`` (within a few ulps) the recursion can only end at a
    vertex, and since the radial map and sparsemax both preserve the order of the coordinates it is
    the vertex of the largest weight.  That exact one-hot is returned directly (zero gradient, like
    SSN's one-hot case).  This makes ``r ≥ sqrt(1 − 1/K)`` give exact one-hots despite round-off (which
    otherwise leaves ~1e-16 weights on ~1% of rows at the boundary radius) and skips the recursion at
    the end of the schedule.  Rows whose maximum is tied skip the shortcut.

    Gradients: plain autograd through the radial map with the support indicators, ``u`` and the
    radius held constant, plus the exact sparsemax Jacobian for every ``sparsemax`` call.  A zero
    output has an exactly zero Jacobian row (no gradient flows out of a weight that is exactly 0), so
    skipping ops of weight 0 matches dense execution.  Logits already dropped by the first sparsemax
    also get exactly 0; a logit dropped later by the recursion keeps the true (nonzero) derivative it
    has through the normalisation of the earlier push.

    Face centre: if ``w`` equals ``u`` exactly (e.g. exactly uniform logits, as at initialisation),
    the push direction is undefined.  We then return the centre unchanged (no push, gradient = the
    sparsemax Jacobian), where SSN's code would divide 0 by 0; a double ``torch.where`` safe norm
    keeps forward and backward free of NaN/inf.  Any perturbation of the logits resolves it.

    ``radius`` may be a float or a 0-d tensor; it is a schedule value and receives no gradient.
    """
    if isinstance(radius, Tensor):
        if radius.dim() != 0:
            raise ValueError(f"radius must be a scalar or a 0-d tensor, got shape {tuple(radius.shape)}")
        r_value = float(radius)  # a host read (a device sync for a GPU tensor): pass floats in loops
    else:
        r_value = float(radius)
    r = torch.as_tensor(radius, dtype=logits.dtype, device=logits.device).detach()
    if not math.isfinite(r_value) or r_value < 0:
        raise ValueError(f"radius must be finite and >= 0, got {r_value}")
    z = logits.movedim(dim, -1)
    if z.numel() == 0:
        return logits.clone()
    if r_value == 0.0:
        return _SparsemaxFn.apply(z).movedim(-1, dim)
    lead = z.shape[:-1]
    rows = _sparsestmax_rows(z.reshape(-1, z.shape[-1]), r)
    return rows.reshape(*lead, z.shape[-1]).movedim(-1, dim)


def combine(kind: str, logits: Tensor, radius: float = 0.0, dim: int = -1) -> Tensor:
    """Dispatch by name so the supernet config picks the combiner (``radius`` only for sparsestmax)."""
    if kind == "softmax":
        return softmax(logits, dim=dim)
    if kind == "sparsemax":
        return sparsemax(logits, dim=dim)
    if kind == "sparsestmax":
        return sparsestmax(logits, radius, dim=dim)
    raise ValueError(f"unknown combiner {kind!r}; allowed values: {', '.join(COMBINERS)}")


def ordering_penalty(path_logits: Tensor, full_paths: Tensor, lam: float) -> Tensor:
    """Ordering constraint ("sorted sparsestmax") on the raw network-path logits γ.

    ``λ · Σ_{P ∈ full_paths} Σ_k (γ[P[k+1]] − γ[P[k]])``: the linear code form of method.md §4
    (ambiguity 1), evaluated on the *raw* logits along every full root→leaf path (rows of
    ``full_paths``, node indices root first).  It telescopes to ``λ · Σ_P (γ[leaf] − γ[root])``:
    minimising it pushes deep nodes down and the root up, favouring shallow networks.  Its gradient
    is +λ per path ending at a leaf and −λ per path starting at a root.

    Why linear, not a hinge: it is what the released code does; the hinge variant is left out.
    """
    if path_logits.dim() != 1:
        raise ValueError(f"path_logits must be 1-D, got shape {tuple(path_logits.shape)}")
    if full_paths.dim() != 2:
        raise ValueError(f"full_paths must be 2-D [P, L], got shape {tuple(full_paths.shape)}")
    idx = full_paths.to(device=path_logits.device, dtype=torch.long)
    gamma = path_logits[idx]  # [P, L] gather along each path
    steps = gamma[:, 1:] - gamma[:, :-1]
    return lam * steps.sum()
