"""Property tests for search_space.combiners: simplex outputs, SSN sparsestmax, exact gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from search_space.combiners import (
    COMBINERS,
    combine,
    ordering_penalty,
    softmax,
    sparsemax,
    sparsestmax,
)

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(shape: tuple[int, ...], seed: int, scale: float = 1.0, dtype: torch.dtype = F64) -> torch.Tensor:
    return (scale * torch.randn(shape, generator=_gen(seed), dtype=F64)).to(dtype)


# ---------------------------------------------------------------- numpy references (per row)


def ref_sparsemax(v: np.ndarray) -> np.ndarray:
    """Martins & Astudillo closed form: sort, largest k with 1 + k z_(k) > sum_{j<=k} z_(j)."""
    zs = np.sort(v)[::-1]
    css = np.cumsum(zs)
    ks = np.arange(1, len(v) + 1)
    kstar = ks[1 + ks * zs > css][-1]
    tau = (css[kstar - 1] - 1.0) / kstar
    return np.maximum(v - tau, 0.0)


def ref_sparsestmax(v: np.ndarray, r: float, u_prev: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """SSN recursion written row by row; returns (output, radius used on the output's face)."""
    w = ref_sparsemax(v)
    supp = w > 0
    if supp.sum() == 1:
        return w, r
    u = supp / supp.sum()
    if u_prev is not None:
        r = math.sqrt(max(r * r - float(np.sum((u - u_prev) ** 2)), 0.0))
    d = float(np.linalg.norm(w - u))
    if d >= r or d == 0.0:
        return w, r
    p = u + r * (w - u) / d
    if (p < 0).any():
        return ref_sparsestmax(p, r, u)
    return np.clip(p, 0.0, 1.0), r


def _is_one_hot(row: torch.Tensor) -> bool:
    return int((row > 0).sum()) == 1 and float(row.max()) == 1.0


def _row_jacobian(fn, z: torch.Tensor) -> torch.Tensor:
    """Per-row Jacobians [N, K_out, K_in] of a row-wise map on a (N, K) batch."""
    jac = torch.autograd.functional.jacobian(lambda x: fn(x).sum(0), z)  # [K_out, N, K_in]
    return jac.permute(1, 0, 2)


# ---------------------------------------------------------------- simplex


SHAPES_DIMS = [((7,), -1), ((3, 4), -1), ((3, 4), 0), ((2, 3, 5), 1), ((35, 5, 4), -1), ((4, 55), 1)]


@pytest.mark.parametrize("kind", COMBINERS)
@pytest.mark.parametrize(("shape", "dim"), SHAPES_DIMS)
def test_outputs_on_simplex(kind: str, shape: tuple[int, ...], dim: int) -> None:
    for seed, (scale, radius) in enumerate([(0.1, 0.2), (1.0, 0.5), (3.0, 0.8), (1.0, 1.0)]):
        z = _randn(shape, seed, scale)
        out = combine(kind, z, radius=radius, dim=dim)
        assert out.shape == z.shape
        assert torch.isfinite(out).all()
        assert (out >= 0).all() and (out <= 1).all()
        torch.testing.assert_close(out.sum(dim), torch.ones_like(out.sum(dim)), atol=1e-12, rtol=0)


@pytest.mark.parametrize("kind", COMBINERS)
def test_float32_simplex(kind: str) -> None:
    z = _randn((35, 5, 4), 11, dtype=torch.float32)
    out = combine(kind, z, radius=0.4)
    assert out.dtype == torch.float32
    assert (out >= 0).all()
    torch.testing.assert_close(out.sum(-1), torch.ones(35, 5), atol=1e-5, rtol=0)


def test_softmax_is_torch_softmax() -> None:
    z = _randn((3, 6), 0)
    torch.testing.assert_close(softmax(z, dim=0), torch.softmax(z, dim=0), atol=0, rtol=0)


# ---------------------------------------------------------------- sparsemax


@pytest.mark.parametrize(("k", "scale"), [(2, 1.0), (4, 0.3), (5, 1.0), (55, 0.2), (55, 3.0)])
def test_sparsemax_matches_sort_reference(k: int, scale: float) -> None:
    z = _randn((40, k), k, scale) + 5.0  # a common offset must not matter (max is subtracted)
    out = sparsemax(z).numpy()
    ref = np.stack([ref_sparsemax(row) for row in z.numpy()])
    np.testing.assert_allclose(out, ref, atol=1e-12, rtol=0)


def test_sparsemax_dim_and_leading_dims() -> None:
    z = _randn((3, 6, 2, 4), 5)
    out = sparsemax(z, dim=1)
    ref = sparsemax(z.movedim(1, -1).reshape(-1, 6)).reshape(3, 2, 4, 6).movedim(-1, 1)
    torch.testing.assert_close(out, ref, atol=0, rtol=0)


def test_sparsemax_large_logits_stable() -> None:
    z = torch.tensor([[1e8, 1e8 - 0.5, -1e8], [1e30, 0.0, 0.0]], dtype=F64)
    out = sparsemax(z)
    torch.testing.assert_close(out, torch.tensor([[0.75, 0.25, 0.0], [1.0, 0.0, 0.0]], dtype=F64))


def test_sparsemax_jacobian_exact() -> None:
    z = _randn((20, 6), 3)
    jac = _row_jacobian(sparsemax, z)
    s = (sparsemax(z) > 0).to(F64)
    expected = torch.diag_embed(s) - s[:, :, None] * s[:, None, :] / s.sum(-1)[:, None, None]
    torch.testing.assert_close(jac, expected, atol=1e-15, rtol=0)


# ---------------------------------------------------------------- sparsestmax


def test_sparsestmax_r0_is_sparsemax_exactly() -> None:
    z = _randn((35, 5, 4), 2)
    assert torch.equal(sparsestmax(z, 0.0), sparsemax(z))
    assert torch.equal(sparsestmax(z, torch.tensor(0.0)), sparsemax(z))
    assert torch.equal(combine("sparsestmax", z, 0.0, dim=1), sparsemax(z, dim=1))


@pytest.mark.parametrize("k", [3, 4, 5, 55])
@pytest.mark.parametrize("radius", [0.1, 0.3, 0.5, 0.7, 0.85])
def test_sparsestmax_matches_ssn_reference(k: int, radius: float) -> None:
    scale = 0.15 if k == 55 else 0.5
    z = _randn((60, k), 100 * k + int(10 * radius), scale)
    out = sparsestmax(z, radius)
    for row, zr in zip(out.numpy(), z.numpy(), strict=True):
        ref, _ = ref_sparsestmax(zr, radius)
        np.testing.assert_allclose(row, ref, atol=1e-9, rtol=0)


@pytest.mark.parametrize("k", [4, 5, 55])
@pytest.mark.parametrize("radius", [0.2, 0.5, 0.8])
def test_sparsestmax_distance_constraints(k: int, radius: float) -> None:
    scale = 0.15 if k == 55 else 0.5
    z = _randn((80, k), 7 * k, scale)
    out = sparsestmax(z, radius)
    centre = torch.full((k,), 1.0 / k, dtype=F64)
    for row, zr in zip(out, z.numpy(), strict=True):
        if _is_one_hot(row):
            continue
        # SSN's constraint ‖p − 1/K‖ ≥ r, for full and partial supports alike.
        assert float(torch.linalg.norm(row - centre)) >= radius - 1e-9
        # Within the output's own face: distance to that face's centre ≥ the reduced radius.
        supp = (row > 0).to(F64)
        face_centre = supp / supp.sum()
        _, reduced = ref_sparsestmax(zr, radius)
        assert float(torch.linalg.norm(row - face_centre)) >= reduced - 1e-9
        if int(supp.sum()) == k:
            assert float(torch.linalg.norm(row - centre)) >= radius - 1e-9


def test_sparsestmax_some_rows_recurse() -> None:
    """Guard that the reference test exercises partial supports, pushes and recursions."""
    z = _randn((60, 5), 100 * 5 + 5, 0.5)
    w = sparsemax(z)
    out = sparsestmax(z, 0.5)
    n_w, n_out = (w > 0).sum(-1), (out > 0).sum(-1)
    assert (n_out < n_w).any()  # a coordinate dropped by the recursion
    assert ((n_out == n_w) & (out - w).abs().amax(-1).gt(1e-6)).any()  # a single radial push
    assert (n_out > 1).any()


@pytest.mark.parametrize("k", [4, 5, 55])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_sparsestmax_one_hot_beyond_vertex_distance(k: int, dtype: torch.dtype) -> None:
    z = _randn((300, k), 31 * k, 0.5, dtype)
    for radius in (math.sqrt(1.0 - 1.0 / k), 0.95, 1.0, 1.5):
        if radius < math.sqrt(1.0 - 1.0 / k):
            continue
        out = sparsestmax(z, radius)
        assert ((out > 0).sum(-1) == 1).all()
        assert (out.amax(-1) == 1.0).all()
        assert torch.equal(out.argmax(-1), z.argmax(-1))  # the vertex of the largest logit


def test_sparsestmax_batched_equals_rowwise_and_dims() -> None:
    z = _randn((35, 5, 4), 9)
    out = sparsestmax(z, 0.6)
    rows = torch.stack([sparsestmax(r, 0.6) for r in z.reshape(-1, 4)]).reshape(35, 5, 4)
    torch.testing.assert_close(out, rows, atol=1e-14, rtol=0)
    out_dim0 = sparsestmax(z.movedim(-1, 0).contiguous(), 0.6, dim=0)
    torch.testing.assert_close(out_dim0.movedim(0, -1), out, atol=1e-14, rtol=0)


def test_sparsestmax_tensor_radius_and_validation() -> None:
    z = _randn((6, 5), 4)
    assert torch.equal(sparsestmax(z, torch.tensor(0.4, dtype=F64)), sparsestmax(z, 0.4))
    with pytest.raises(ValueError, match="radius"):
        sparsestmax(z, torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="radius"):
        sparsestmax(z, -0.1)


# ---------------------------------------------------------------- gradients


def _margin_ok(fn, z: torch.Tensor, eps: float = 1e-4) -> bool:
    """Inputs are 'away from ties/kinks' if small perturbations keep every support unchanged."""
    base = fn(z) > 0
    for seed in range(4):
        pert = z + eps * torch.randn(z.shape, generator=_gen(1000 + seed), dtype=F64)
        if not torch.equal(fn(pert) > 0, base):
            return False
    return True


def test_gradcheck_sparsemax() -> None:
    z = _randn((4, 3, 5), 21).requires_grad_()
    assert _margin_ok(sparsemax, z.detach())
    assert torch.autograd.gradcheck(lambda x: sparsemax(x, dim=1), (z,))
    assert torch.autograd.gradcheck(sparsemax, (z,))


@pytest.mark.parametrize("radius", [0.2, 0.5, 0.75])
def test_gradcheck_sparsestmax(radius: float) -> None:
    z = _randn((12, 5), 40 + int(100 * radius), 0.6)
    assert _margin_ok(lambda x: sparsestmax(x, radius), z)
    zz = z.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: sparsestmax(x, radius), (zz,))
    zt = z.t().contiguous().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: sparsestmax(x, radius, dim=0), (zt,))


def test_gradcheck_sparsestmax_path_logits() -> None:
    z = _randn((55,), 77, 0.15)
    assert _margin_ok(lambda x: sparsestmax(x, 0.3), z)
    assert torch.autograd.gradcheck(lambda x: sparsestmax(x, 0.3), (z.clone().requires_grad_(),))


@pytest.mark.parametrize("fn_name", ["sparsemax", "sparsestmax"])
@pytest.mark.parametrize("radius", [0.3, 0.6, 0.9])
def test_zero_outputs_have_zero_jacobian_rows(fn_name: str, radius: float) -> None:
    """No gradient flows out of a weight that is exactly 0, so skipping that op matches dense."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        return sparsemax(x) if fn_name == "sparsemax" else sparsestmax(x, radius)

    z = _randn((50, 5), 60 + int(10 * radius), 0.5)
    out = fn(z)
    zero = out == 0
    assert zero.any()
    jac = _row_jacobian(fn, z)
    assert (jac.abs().sum(-1)[zero] == 0).all()
    # Logits the first sparsemax already dropped get exactly zero gradient too (columns).
    dropped = sparsemax(z) == 0
    assert (jac.abs().sum(-2)[dropped] == 0).all()
    if fn_name == "sparsemax":
        assert (jac.abs().sum(-2)[zero] == 0).all()
    # One-hot outputs are locally constant: the whole Jacobian row block is zero.
    one_hot = (out > 0).sum(-1) == 1
    assert (jac[one_hot] == 0).all()


@pytest.mark.parametrize("radius", [0.0, 0.4, 0.7])
def test_skipping_zero_weight_ops_matches_dense(radius: float) -> None:
    """Supernet use: Σ_k w_k op_k with ops of weight 0 skipped must give the same α gradient."""
    alpha = _randn((35, 5, 4), 3, 0.5).requires_grad_()
    feats = _randn((35, 5, 4), 4)  # stands in for <dL/dout, op_k(x)> per op
    w = sparsestmax(alpha, radius)
    (g_dense,) = torch.autograd.grad((w * feats).sum(), alpha)
    w = sparsestmax(alpha, radius)
    keep = (w != 0).detach()
    (g_sparse,) = torch.autograd.grad((w[keep] * feats[keep]).sum(), alpha)
    assert (~keep).any()
    assert torch.equal(g_dense, g_sparse)


@pytest.mark.parametrize("radius", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("k", [4, 55])
def test_uniform_logits_no_nan(radius: float, k: int) -> None:
    for dtype in (F64, torch.float32):
        z = torch.full((3, k), 1e-3, dtype=dtype, requires_grad=True)
        out = sparsestmax(z, radius)
        torch.testing.assert_close(out, torch.full_like(out, 1.0 / k))  # the centre, unchanged
        weights = torch.arange(3 * k, dtype=dtype).reshape(3, k)
        (grad,) = torch.autograd.grad((out * weights).sum(), z)
        assert torch.isfinite(out).all() and torch.isfinite(grad).all()
        # At the centre the gradient is the (full-support) sparsemax Jacobian applied to the weights.
        torch.testing.assert_close(grad, weights - weights.mean(-1, keepdim=True))


def test_tied_face_centre_no_nan() -> None:
    """A recursion that lands exactly on a sub-face centre (tied logits) must stay finite too."""
    z = torch.tensor([[0.3, 0.3, 0.0, 0.0], [0.2, 0.2, 0.2, -0.5]], dtype=F64, requires_grad=True)
    for radius in (0.3, 0.8, 1.0):
        out = sparsestmax(z, radius)
        (grad,) = torch.autograd.grad(out[:, 0].sum() + 2 * out[:, 1].sum(), z)
        assert torch.isfinite(out).all() and torch.isfinite(grad).all()
        torch.testing.assert_close(out.sum(-1), torch.ones(2, dtype=F64))


# ---------------------------------------------------------------- combine / ordering penalty


def test_combine_dispatch() -> None:
    z = _randn((5, 4), 8)
    assert COMBINERS == ("softmax", "sparsemax", "sparsestmax")
    assert torch.equal(combine("softmax", z), softmax(z))
    assert torch.equal(combine("sparsemax", z, radius=0.7), sparsemax(z))
    assert torch.equal(combine("sparsestmax", z, 0.6), sparsestmax(z, 0.6))
    assert torch.equal(combine("sparsestmax", z, 0.6, dim=0), sparsestmax(z, 0.6, dim=0))


def test_combine_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError) as err:
        combine("gumbel", _randn((2, 3), 0))
    msg = str(err.value)
    assert "gumbel" in msg
    for name in COMBINERS:
        assert name in msg


def test_ordering_penalty_hand_computed() -> None:
    # Tree: 0 -> 1 -> {2, 3};  0 -> 4 -> 5.  Full paths root->leaf, node indices.
    gamma = torch.tensor([0.5, 1.0, -2.0, 3.0, 0.25, 4.0], dtype=F64, requires_grad=True)
    paths = torch.tensor([[0, 1, 2], [0, 1, 3], [0, 4, 5]])
    lam = 0.1
    pen = ordering_penalty(gamma, paths, lam)
    # Per path Σ_k (γ[k+1] − γ[k]):  (1−0.5)+(−2−1) = −2.5;  (1−0.5)+(3−1) = 2.5;  (0.25−0.5)+(4−0.25) = 3.5
    expected = lam * (-2.5 + 2.5 + 3.5)
    assert pen.dim() == 0
    torch.testing.assert_close(pen, torch.tensor(expected, dtype=F64))
    (grad,) = torch.autograd.grad(pen, gamma)
    # Telescoped: +λ per path at its leaf, −λ per path at its root, internal nodes cancel.
    torch.testing.assert_close(grad, torch.tensor([-3 * lam, 0.0, lam, lam, 0.0, lam], dtype=F64))


def test_ordering_penalty_telescopes_on_random_tree() -> None:
    gamma = _randn((55,), 12)
    paths = torch.randint(0, 55, (15, 7), generator=_gen(13))
    pen = ordering_penalty(gamma, paths, 1e-2)
    torch.testing.assert_close(pen, 1e-2 * (gamma[paths[:, -1]] - gamma[paths[:, 0]]).sum())
    with pytest.raises(ValueError, match=r"path_logits must be 1-D, got shape \(1, 55\)"):
        ordering_penalty(gamma[None], paths, 1.0)
    with pytest.raises(ValueError, match=r"full_paths must be 2-D \[P, L\], got shape \(7,\)"):
        ordering_penalty(gamma, paths[0], 1.0)
