"""Shared pieces of the method tests: a random problem, running a registered method's
loss on it, and checking value and gradient against a torch.func reference (float64)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import grad

from probe import moments
from probe.methods import REGISTRY
from probe.train.data import Batch, forward
from probe.train.settings import Settings

F64 = torch.float64


def problem(G=3, N=30, d=3, C=3, K=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, d, generator=g, dtype=F64)
    y = torch.randint(0, C, (N,), generator=g)
    dom = torch.arange(N) % K
    theta = torch.randn(G, C, d + 1, generator=g, dtype=F64)
    # Shares of this batch: the pooled CE is then the plain mean over its rows.
    share = torch.bincount(dom, minlength=K).double() / N
    return theta, Batch(X, y, dom, K, share)


def ce(theta_g, X, y):
    return F.cross_entropy(moments.augment(X) @ theta_g.T, y)


def masks(batch):
    return [batch.domains == k for k in range(batch.num_domains)]


def run(name, theta, batch, on=True, weighting=None, settings=None, **hp):
    cls = REGISTRY[name]
    G = theta.shape[0]
    hps = {p.name: torch.full((G,), float(hp.get(p.name, p.default)), dtype=F64) for p in cls.params}
    st = settings or Settings(ce_weighting=weighting, dtype=F64)
    return cls(hps, st).loss(forward(theta, batch), batch, torch.full((G,), on))[0]


def check(name, theta, batch, reference, tol=None, **hp):
    """Value and gradient of the objective equal the reference's, head by head
    (``tol``: relative, with an absolute floor 100× smaller; default torch's float64 tolerance)."""
    th = theta.clone().requires_grad_(True)
    ours = run(name, th, batch, **hp)
    (g_ours,) = torch.autograd.grad(ours.sum(), th)
    close = {} if tol is None else {"rtol": tol, "atol": tol / 100}
    for g in range(theta.shape[0]):
        torch.testing.assert_close(ours[g], reference(theta[g]), **close)
        torch.testing.assert_close(g_ours[g], grad(reference)(theta[g]), **close)


def pooled(th, batch):
    return ce(th, batch.X, batch.y)
