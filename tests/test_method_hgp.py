"""HGP: each domain's own H_e G_e in closed form, and the penalty's gradient, against autograd."""

from __future__ import annotations

import pytest
import torch
from torch.func import grad, hessian

from probe import moments
from probe.moments.products import hessian_vector_products
from tests.method_helpers import F64, ce, check, masks, pooled, problem


def _unbalanced(C: int, seed: int = 0):
    theta, batch = problem(G=2, N=23, d=3, C=C, K=3, seed=seed)
    batch.domains = torch.tensor([0] * 13 + [1] * 7 + [2] * 3)  # 13 / 7 / 3 rows
    batch.domain_share = torch.bincount(batch.domains, minlength=3).to(F64) / 23  # the pooled CE: plain mean
    batch.W, batch.ids = None, None
    batch.__post_init__()
    return theta, batch


def _autograd_hg(th: torch.Tensor, batch) -> list[torch.Tensor]:
    out = []
    for m in masks(batch):
        def ce_e(t, m=m):
            return ce(t, batch.X[m], batch.y[m])
        g = grad(ce_e)(th).reshape(-1)
        H = hessian(ce_e)(th).reshape(th.numel(), th.numel())
        out.append((H @ g).reshape(th.shape))
    return out


@pytest.mark.parametrize("C", [2, 10])
def test_each_domains_hessian_gradient_product_matches_autograd(C: int) -> None:
    theta, batch = _unbalanced(C)
    P = moments.probabilities(theta, batch.X)
    Xt = moments.augment(batch.X)
    Y = torch.nn.functional.one_hot(batch.y, C).to(F64)
    G = torch.einsum("nk,gnc,nd->gkcd", batch.W, P - Y, Xt)
    ours = hessian_vector_products(P, Xt, batch.domains, G)
    for g in range(theta.shape[0]):
        for k, want in enumerate(_autograd_hg(theta[g], batch)):
            torch.testing.assert_close(ours[g, k], want, rtol=1e-8, atol=1e-12)


def _hgp_ref(batch, alpha: float, beta: float):
    def f(th):
        Gs, HGs = [], []
        for m in masks(batch):
            def ce_e(t, m=m):
                return ce(t, batch.X[m], batch.y[m])
            g = grad(ce_e)(th).reshape(-1)
            Gs.append(g)
            HGs.append(hessian(ce_e)(th).reshape(th.numel(), th.numel()) @ g)
        Gs, HGs = torch.stack(Gs), torch.stack(HGs)
        var = lambda A: ((A - A.mean(0)) ** 2).sum(1).mean()  # noqa: E731
        return pooled(th, batch) + alpha * var(Gs) + beta * var(HGs)
    return f


@pytest.mark.parametrize("C", [2, 10])
def test_hgp_loss_and_its_gradient_match_double_backward(C: int) -> None:
    theta, batch = _unbalanced(C, seed=1)
    check("hgp", theta, batch, _hgp_ref(batch, 3.0, 5.0), tol=1e-8, alpha=3.0, beta=5.0)
