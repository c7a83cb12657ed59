"""probe.moments.domain_discrepancies against directly formed derivatives (torch.func, float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, hessian, jacfwd

import probe.moments as M
import probe.moments.discrepancy as discrepancy
from tests.test_moments import problem, rel


def direct_distances(theta, X, y, domains, bias=True):
    """(3, K', K') ‖∇ⁿL_e − ∇ⁿL_f‖_F with every derivative formed, and the (K',) losses."""
    Xt = M.design(X, bias)
    derivs = {1: [], 2: [], 3: []}
    losses = []
    for e in torch.unique(domains).tolist():
        m = domains == e

        def loss(th, m=m):
            return F.cross_entropy(Xt[m] @ th.T, y[m])

        losses.append(loss(theta))
        derivs[1].append(grad(loss)(theta).reshape(-1))
        derivs[2].append(hessian(loss)(theta).reshape(-1))
        derivs[3].append(jacfwd(jacfwd(grad(loss)))(theta).reshape(-1))
    out = []
    for n in (1, 2, 3):
        D = torch.stack(derivs[n])
        out.append((D.unsqueeze(1) - D.unsqueeze(0)).norm(dim=-1))
    return torch.stack(out), torch.stack(losses)


@pytest.mark.parametrize("form", ["features", "polynomial"])
@pytest.mark.parametrize("C, block", [(2, 4), (4, 5), (3, 1000)])
def test_distances_match_formed_derivatives(C, block, form, monkeypatch):
    if form == "polynomial":  # the many-class form, forced; chunks of one head
        monkeypatch.setattr(discrepancy, "FEATURE_CLASSES", 1)
        monkeypatch.setattr(discrepancy, "KERNEL_BLOCK_BYTES", 1)
    theta, X, y, dom = problem(N=13, d=2, C=C, K=3, G=2, seed=C, domains=[0] * 7 + [2] * 5 + [5])
    res = M.domain_discrepancies(theta, X, y, dom, block_rows=block)
    assert res.domain_ids.tolist() == [0, 2, 5]
    assert res.distances.shape == (2, 3, 3, 3)
    for h in range(2):
        want, losses = direct_distances(theta[h], X, y, dom)
        assert rel(res.distances[h], want) < 1e-10
        assert rel(res.losses[h], losses) < 1e-12
        torch.testing.assert_close(res.largest()[h], want.flatten(1).amax(1))


@pytest.mark.parametrize("C", [2, 4, 65])
def test_head_without_bias_matches_formed_derivatives(C):
    # a head (C, d) on x itself: the derivatives w.r.t. its weights only, as formed by autograd
    theta, X, y, dom = problem(N=9 if C == 65 else 13, d=2, C=C, K=3, G=2, seed=C + 1,
                               domains=None if C == 65 else [0] * 7 + [1] * 5 + [2])
    theta = theta[..., :-1].contiguous()
    for gram in (None, M.feature_gram(X, bias=False)):
        res = M.domain_discrepancies(theta, X, y, dom, block_rows=4, gram=gram, bias=False)
        for h in range(2):
            want, losses = direct_distances(theta[h], X, y, dom, bias=False)
            assert rel(res.distances[h], want) < 1e-10
            assert rel(res.losses[h], losses) < 1e-12
    with pytest.raises(ValueError, match="feature columns"):  # a head with a bias column, told it has none
        M.domain_discrepancies(torch.zeros(C, 4, dtype=X.dtype), X, y, dom, bias=False)


def test_single_head_gram_and_block_sizes_agree():
    theta, X, y, dom = problem(N=11, d=3, C=5, K=3, seed=4)
    whole = M.domain_discrepancies(theta, X, y, dom)
    assert whole.distances.shape == (3, 3, 3)
    blocked = M.domain_discrepancies(theta, X, y, dom, block_rows=3, gram=M.feature_gram(X))
    assert rel(blocked.distances, whole.distances) < 1e-12
    # symmetric with a zero diagonal
    assert torch.allclose(whole.distances, whole.distances.transpose(-1, -2))
    assert float(whole.distances.diagonal(dim1=-2, dim2=-1).abs().max()) == 0.0


def test_one_domain_has_no_discrepancy():
    theta, X, y, dom = problem(N=6, d=2, C=3, K=1, domains=[1] * 6)
    res = M.domain_discrepancies(theta, X, y, dom)
    assert res.largest().tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="block_rows"):
        M.domain_discrepancies(theta, X, y, dom, block_rows=0)


def test_float32_features_with_a_float64_head():
    theta, X, y, dom = problem(N=40, d=6, C=3, K=3, G=2, seed=9, scale=0.3)
    exact = M.domain_discrepancies(theta, X, y, dom)
    low = M.domain_discrepancies(theta, X.float(), y, dom, block_rows=16)
    assert low.distances.dtype == torch.float64
    assert rel(low.distances, exact.distances) < 1e-5 and rel(low.losses, exact.losses) < 1e-6
    with pytest.raises(ValueError, match="dtype"):
        M.third_order_variance(theta, X.float(), dom)  # the penalties keep one dtype


@pytest.mark.parametrize("C", [2, 3, 65])
def test_cumulant_kernels_in_place_and_differentiable_forms_match_formed_cumulants(C):
    """The in-place evaluation (no gradient wanted) and the autograd-safe one are the same
    polynomials: both equal the inner products of the formed cumulants A(p) and κ₃(p)."""
    from probe.moments.cumulants import cumulant_kernels, third_cumulants

    g = torch.Generator().manual_seed(C)
    Pi = torch.softmax(3 * torch.randn(2, 5, C, generator=g, dtype=torch.float64), -1)
    Pj = torch.softmax(3 * torch.randn(2, 4, C, generator=g, dtype=torch.float64), -1)
    A = {P: torch.diag_embed(P) - P.unsqueeze(-1) * P.unsqueeze(-2) for P in (Pi, Pj)}
    want = {2: torch.einsum("giab,gjab->gij", A[Pi], A[Pj]),
            3: torch.einsum("giabc,gjabc->gij", third_cumulants(Pi), third_cumulants(Pj))}
    with torch.no_grad():
        lean = cumulant_kernels(Pi, Pj)
    differentiable = cumulant_kernels(Pi.clone().requires_grad_(), Pj)
    for n in (2, 3):
        assert differentiable[n].requires_grad
        assert rel(lean[n], want[n]) < 1e-12
        assert rel(differentiable[n].detach(), want[n]) < 1e-12
    assert set(cumulant_kernels(Pi, Pj, (2,))) == {2}
