"""CORAL on the logits: DomainBed's pairwise form, a real gradient, zero when the moments agree."""

from __future__ import annotations

import itertools

import torch

from probe import moments
from tests.method_helpers import F64, check, masks, pooled, problem, run


def _coral_ref(batch, gamma: float):
    def f(th):
        zs = [moments.augment(batch.X[m]) @ th.T for m in masks(batch)]
        pen = 0.0
        pairs = list(itertools.combinations(range(len(zs)), 2))
        for i, j in pairs:
            pen = pen + (zs[i].mean(0) - zs[j].mean(0)).pow(2).mean()
            pen = pen + (torch.cov(zs[i].T) - torch.cov(zs[j].T)).pow(2).mean()
        return pooled(th, batch) + gamma * pen / len(pairs)
    return f


def test_coral_matches_the_pairwise_definition_with_its_gradient() -> None:
    theta, batch = problem(G=2, N=30, d=3, C=4, K=3)
    check("coral", theta, batch, _coral_ref(batch, 2.5), gamma=2.5)


def test_coral_vanishes_when_the_domains_logit_moments_agree_and_has_a_gradient_otherwise() -> None:
    theta, batch = problem(G=2, N=20, d=3, C=3, K=2)
    same = batch.X.clone()
    same[batch.domains == 1] = batch.X[batch.domains == 0].flip(0)  # the same rows, another order
    batch.X = same
    torch.testing.assert_close(run("coral", theta, batch, gamma=7.0), run("erm", theta, batch))
    theta, batch = problem(G=2, N=20, d=3, C=3, K=2, seed=3)
    th = theta.clone().requires_grad_(True)
    pen = run("coral", th, batch, gamma=1.0) - run("erm", th, batch)
    assert bool((pen > 0).all())
    (g,) = torch.autograd.grad(pen.sum(), th)
    assert g.abs().max() > 1e-6 and g.dtype == F64
