"""Each objective's loss against a direct autograd implementation (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from probe import moments
from probe.objectives import OBJECTIVES, Batch

F64 = torch.float64


def _problem(G=3, N=30, d=4, C=3, K=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, d, generator=g, dtype=F64)
    y = torch.randint(0, C, (N,), generator=g)
    dom = torch.arange(N) % K
    theta = torch.randn(G, C, d + 1, generator=g, dtype=F64)
    share = torch.bincount(dom, minlength=K).double() / N
    return theta, Batch(X, y, dom, K, share)


def _ce(theta_g, X, y):
    return F.cross_entropy(moments.augment(X) @ theta_g.T, y)


def _domains(batch):
    return [batch.domains == k for k in range(batch.num_domains)]


def _pooled(theta_g, batch):
    return _ce(theta_g, batch.X, batch.y)


def _run(name, theta, batch, on=True, **hp):
    cls = OBJECTIVES[name]
    G = theta.shape[0]
    hps = {k: torch.full((G,), float(hp.get(k, v)), dtype=F64) for k, v in cls.hparams.items()}
    return cls(hps).loss(theta, batch, torch.full((G,), on))[0]


def test_erm_is_pooled_mean_ce_and_reweight_is_domain_mean() -> None:
    theta, batch = _problem()
    for g in range(theta.shape[0]):
        torch.testing.assert_close(_run("erm", theta, batch)[g], _pooled(theta[g], batch))
        want = torch.stack([_ce(theta[g], batch.X[m], batch.y[m]) for m in _domains(batch)]).mean()
        torch.testing.assert_close(_run("reweight", theta, batch)[g], want)


def test_irm_penalty_matches_autograd() -> None:
    theta, batch = _problem()
    lam = 7.0
    for g in range(theta.shape[0]):
        pen = 0.0
        for m in _domains(batch):
            w = torch.tensor(1.0, dtype=F64, requires_grad=True)
            z = moments.augment(batch.X[m]) @ theta[g].T
            (dw,) = torch.autograd.grad(F.cross_entropy(w * z, batch.y[m]), w)
            pen = pen + dw**2
        want = _pooled(theta[g], batch) + lam * pen
        torch.testing.assert_close(_run("irm", theta, batch, lam=lam)[g], want)


def test_vrex_penalty_matches_direct() -> None:
    theta, batch = _problem()
    for g in range(theta.shape[0]):
        losses = torch.stack([_ce(theta[g], batch.X[m], batch.y[m]) for m in _domains(batch)])
        want = _pooled(theta[g], batch) + 3.0 * ((losses - losses.mean()) ** 2).mean()
        torch.testing.assert_close(_run("vrex", theta, batch, lam=3.0)[g], want)


def test_fishr_penalty_matches_per_sample_autograd() -> None:
    theta, batch = _problem()

    def sample_loss(th, x, y):
        return F.cross_entropy((moments.augment(x[None]) @ th.T), y[None])

    for g in range(theta.shape[0]):
        variances = []
        for m in _domains(batch):
            per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))(theta[g], batch.X[m], batch.y[m])
            variances.append(per_sample.var(0, unbiased=False))
        V = torch.stack(variances)
        want = _pooled(theta[g], batch) + 2.0 * ((V - V.mean(0)) ** 2).sum((1, 2)).mean()
        torch.testing.assert_close(_run("fishr", theta, batch, lam=2.0)[g], want)


def test_cma_is_ce_plus_weighted_moment_variances() -> None:
    theta, batch = _problem()
    want = (torch.stack([_pooled(theta[g], batch) for g in range(3)])
            + 4.0 * moments.gradient_variance(theta, batch.X, batch.y, batch.domains)
            + 0.5 * moments.hessian_variance(theta, batch.X, batch.domains))
    torch.testing.assert_close(_run("cma", theta, batch, alpha=4.0, beta=0.5), want)


@pytest.mark.parametrize("name", ["cma", "irm", "vrex", "fishr"])
def test_penalty_off_while_annealing_equals_erm(name: str) -> None:
    theta, batch = _problem()
    torch.testing.assert_close(_run(name, theta, batch, on=False), _run("erm", theta, batch))


def test_groupdro_upweights_the_worst_domain() -> None:
    theta, batch = _problem(G=1)
    cls = OBJECTIVES["groupdro"]
    obj = cls({"eta": torch.tensor([0.5], dtype=F64)})
    losses = moments.per_domain_losses(theta, batch.X, batch.y, batch.domains)[0]
    for _ in range(5):
        obj.loss(theta, batch, torch.tensor([True]))
    q = obj.q[0]
    # Exponentiated gradient: q_k ∝ exp(η · steps · loss_k) from uniform.
    want = torch.softmax(0.5 * 5 * losses, 0)
    torch.testing.assert_close(q, want)
    assert int(q.argmax()) == int(losses.argmax())
