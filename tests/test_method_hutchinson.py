"""Hutchinson: each domain's Hessian-diagonal estimate converges to the exact one, as the
probe count says it should."""

from __future__ import annotations

import torch
from torch.func import hessian

from probe import moments
from probe.moments.products import (
    domain_variance,
    exact_hessian_diagonals,
    hutchinson_diagonals,
    rademacher,
)
from tests.method_helpers import F64, ce, masks, problem


def test_exact_diagonal_is_the_diagonal_of_the_autograd_hessian() -> None:
    theta, batch = problem(G=1, N=20, d=2, C=3, K=2)
    P, Xt = moments.probabilities(theta, batch.X), moments.augment(batch.X)
    ours = exact_hessian_diagonals(P, Xt, batch.W)
    for k, m in enumerate(masks(batch)):
        H = hessian(lambda t, m=m: ce(t, batch.X[m], batch.y[m]))(theta[0]).reshape(9, 9)
        torch.testing.assert_close(ours[0, k].reshape(-1), torch.diagonal(H))


def test_many_probes_approach_the_exact_diagonal_variance() -> None:
    theta, batch = problem(G=1, N=24, d=2, C=3, K=3)
    P, Xt = moments.probabilities(theta, batch.X), moments.augment(batch.X)
    exact = domain_variance(exact_hessian_diagonals(P, Xt, batch.W))[0]
    # E[estimate] = exact + (1/K) Σ_e Σ_i (1/R) (Σ_j ΔH_e[i,j]² − ΔH_e[i,i]²), ΔH_e = H_e − H̄
    # (Rademacher probes shared by the domains); the spread of R-probe estimates shrinks as 1/√R.
    Hs = torch.stack([hessian(lambda t, m=m: ce(t, batch.X[m], batch.y[m]))(theta[0]).reshape(9, 9)
                      for m in masks(batch)])
    dH = Hs - Hs.mean(0)
    R = 4000
    bias = ((dH**2).sum(-1) - torch.diagonal(dH, dim1=-2, dim2=-1) ** 2).sum(-1).mean() / R
    runs = torch.stack([domain_variance(hutchinson_diagonals(P, Xt, batch.W, rademacher((R, 3, 3), s, F64, P.device)))[0]
                        for s in range(8)])
    se = runs.std() / runs.numel() ** 0.5
    assert abs(float(runs.mean() - (exact + bias))) < 4 * float(se) + 1e-12
    assert float(bias) < 0.05 * float(exact)  # at this R the estimate is close to exact
    few = domain_variance(hutchinson_diagonals(P, Xt, batch.W, rademacher((4, 3, 3), 0, F64, P.device)))[0]
    assert abs(float(few - exact)) > abs(float(runs.mean() - exact))  # and 4 probes are not
