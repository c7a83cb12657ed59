"""Each method's loss, and its gradient, against a direct autograd implementation (float64).

The references form per-domain gradients, Hessians and per-sample gradients with
torch.func, exactly as the papers define the penalties; the objectives use closed forms.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, hessian, jacfwd, vmap

from probe import moments
from probe.methods import REGISTRY
from probe.train.data import Batch, forward
from probe.train.settings import Settings
from tests.method_helpers import F64, ce, check, masks, pooled, problem, run

# ------------------------------------------------------------------------ references


def _cma_ref(batch, alpha, beta, gamma=0.0):
    def f(th):
        Gs, Hs, Ts = [], [], []
        for m in masks(batch):
            def ce_e(t, m=m):
                return ce(t, batch.X[m], batch.y[m])
            Gs.append(grad(ce_e)(th).reshape(-1))
            Hs.append(hessian(ce_e)(th).reshape(-1))
            Ts.append(jacfwd(jacfwd(grad(ce_e)))(th).reshape(-1))
        r_g, r_h, r_3 = (((D - D.mean(0)) ** 2).sum(1).mean() for D in map(torch.stack, (Gs, Hs, Ts)))
        return pooled(th, batch) + alpha * r_g + beta * r_h + gamma * r_3
    return f


def _irm_ref(batch, lam):
    def f(th):
        pen = 0.0
        for m in masks(batch):
            z = moments.augment(batch.X[m]) @ th.T
            dw = grad(lambda w, z=z, m=m: F.cross_entropy(w * z, batch.y[m]))(torch.tensor(1.0, dtype=F64))
            pen = pen + dw**2
        return pooled(th, batch) + lam * pen
    return f


def _vrex_ref(batch, lam):
    def f(th):
        losses = torch.stack([ce(th, batch.X[m], batch.y[m]) for m in masks(batch)])
        return pooled(th, batch) + lam * ((losses - losses.mean()) ** 2).mean()
    return f


def _fishr_ref(batch, lam):
    def sample_loss(th, x, y):
        return F.cross_entropy(moments.augment(x[None]) @ th.T, y[None])

    def f(th):
        V = []
        for m in masks(batch):
            per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))(th, batch.X[m], batch.y[m])
            V.append(per_sample.var(0, unbiased=False))
        V = torch.stack(V)
        return pooled(th, batch) + lam * ((V - V.mean(0)) ** 2).sum((1, 2)).mean()
    return f


# ------------------------------------------------------------------------------ tests


def test_erm_is_pooled_mean_ce_and_reweight_is_domain_mean() -> None:
    theta, batch = problem()
    check("erm", theta, batch, lambda th: pooled(th, batch))

    def domain_mean(th):
        return torch.stack([ce(th, batch.X[m], batch.y[m]) for m in masks(batch)]).mean()

    check("reweight", theta, batch, domain_mean)


def test_pooled_weighting_uses_training_shares_not_batch_shares() -> None:
    theta, batch = problem(N=30, K=3)
    # A balanced batch (10 rows per domain) of a training set with shares 0.6/0.3/0.1.
    batch.domain_share = torch.tensor([0.6, 0.3, 0.1], dtype=F64)
    losses = torch.stack([torch.stack([ce(theta[g], batch.X[m], batch.y[m]) for m in masks(batch)])
                          for g in range(3)])
    torch.testing.assert_close(run("erm", theta, batch), losses @ batch.domain_share)


def test_ce_weighting_override() -> None:
    theta, batch = problem()
    torch.testing.assert_close(run("erm", theta, batch, weighting="domain"), run("reweight", theta, batch))
    torch.testing.assert_close(run("reweight", theta, batch, weighting="pooled"), run("erm", theta, batch))


@pytest.mark.parametrize(("alpha", "beta", "gamma"), [(4.0, 0.5, 0.0), (0.0, 2.0, 0.0), (3.0, 0.0, 0.0),
                                                   (1.0, 0.5, 0.2), (0.0, 0.0, 1.5)])
def test_cma_matches_autograd_derivative_variances(alpha: float, beta: float, gamma: float) -> None:
    theta, batch = problem(G=2, N=24, d=2, C=3)
    check("cma", theta, batch, _cma_ref(batch, alpha, beta, gamma), alpha=alpha, beta=beta, gamma=gamma)


def test_cma_third_order_term_only_when_some_gamma_is_nonzero() -> None:
    theta, batch = problem(G=2, N=18, d=2, C=2)
    cls = REGISTRY["cma"]

    def logged(gammas):
        hp = {"alpha": torch.ones(2, dtype=F64), "beta": torch.ones(2, dtype=F64),
              "gamma": torch.tensor(gammas, dtype=F64)}
        return cls(hp, Settings(dtype=F64)).loss(forward(theta, batch), batch, torch.ones(2, dtype=torch.bool))

    off_loss, off_logs = logged([0.0, 0.0])
    assert "third" not in off_logs  # neither computed nor logged: today's runs are unchanged
    on_loss, on_logs = logged([0.0, 2.0])
    torch.testing.assert_close(on_loss[0], off_loss[0])
    torch.testing.assert_close(on_loss[1], off_loss[1] + 2.0 * on_logs["third"][1])
    assert float(on_logs["third"][1]) > 0


def test_irm_penalty_matches_autograd() -> None:
    theta, batch = problem()
    check("irm", theta, batch, _irm_ref(batch, 7.0), lam=7.0)


def test_vrex_penalty_matches_direct() -> None:
    theta, batch = problem()
    check("vrex", theta, batch, _vrex_ref(batch, 3.0), lam=3.0)


def test_fishr_penalty_matches_per_sample_autograd() -> None:
    theta, batch = problem()
    check("fishr", theta, batch, _fishr_ref(batch, 2.0), lam=2.0)


@pytest.mark.parametrize("name", ["cma", "irm", "vrex", "fishr"])
def test_penalty_off_while_annealing_equals_erm(name: str) -> None:
    theta, batch = problem()
    torch.testing.assert_close(run(name, theta, batch, on=False), run("erm", theta, batch))


def test_groupdro_exponentiated_gradient_weights() -> None:
    theta, batch = problem(G=2)
    eta = torch.tensor([0.5, 0.0], dtype=F64)
    obj = REGISTRY["groupdro"]({"eta": eta}, Settings(dtype=F64))
    losses = torch.stack([torch.stack([ce(theta[g], batch.X[m], batch.y[m]) for m in masks(batch)])
                          for g in range(2)])
    for _ in range(5):
        robust = obj.loss(forward(theta, batch), batch, torch.tensor([True, True]))[0]
    # q_k ∝ exp(η · steps · loss_k) from uniform, per head; η = 0 stays uniform.
    torch.testing.assert_close(obj.q[0], torch.softmax(0.5 * 5 * losses[0], 0))
    torch.testing.assert_close(obj.q[1], torch.full((3,), 1 / 3, dtype=F64))
    torch.testing.assert_close(robust, (obj.q * losses).sum(1))
    assert int(obj.q[0].argmax()) == int(losses[0].argmax())


def test_single_domain_batch_has_zero_variance_penalties() -> None:
    # Variances across one domain vanish (IRMv1's penalty is no variance and does not).
    theta, batch = problem()
    one = Batch(batch.X, batch.y, torch.zeros_like(batch.domains), 1, torch.ones(1, dtype=F64))
    for name in ("cma", "vrex", "fishr"):
        torch.testing.assert_close(run(name, theta, one), run("erm", theta, one), msg=name)


def test_fishr_moving_average_of_the_domain_variances() -> None:
    theta, batch = problem()
    other = problem(seed=1)[1]  # a second batch with other rows
    G = theta.shape[0]
    hp = {"lam": torch.full((G,), 2.0, dtype=F64), "ema": torch.full((G,), 0.9, dtype=F64)}
    fishr = REGISTRY["fishr"](hp, Settings(dtype=F64))
    first = fishr.penalty_terms(forward(theta, batch), batch, None)["fishr"]
    # The first step's average is the batch's own variance: the penalty without averaging.
    torch.testing.assert_close(first, run("fishr", theta, batch, lam=1.0, ema=0.0) - run("erm", theta, batch))
    th = theta.clone().requires_grad_(True)
    second = fishr.penalty_terms(forward(th, other), other, None)["fishr"]
    # The Fishr code's corrected average: (0.9 · 0.1 v1 + 0.1 v2) / 0.1, no gradient through v1.
    v1 = fishr.domain_variances(forward(theta, batch), batch)
    v2 = fishr.domain_variances(forward(th, other), other)
    mixed = (0.9 * 0.1 * v1 + 0.1 * v2) / 0.1
    want = ((mixed - mixed.mean(2, keepdim=True)) ** 2).sum((1, 3)).mean(1)
    torch.testing.assert_close(second, want)
    (g_ours,) = torch.autograd.grad(second.sum(), th, retain_graph=True)
    (g_want,) = torch.autograd.grad(want.sum(), th)
    torch.testing.assert_close(g_ours, g_want)


@pytest.mark.parametrize("name", ["cma", "hgp", "irm", "vrex", "coral", "hutchinson", "fishr"])
def test_a_step_that_logs_nothing_computes_the_penalty_only_where_it_counts(name: str) -> None:
    """Heads still annealing, or with every weight 0, are left out of the penalty's work on
    the steps whose terms nobody reads: the loss and its gradient are those of the full work."""
    theta, batch = problem(G=4, N=24, d=2, C=3)
    cls = REGISTRY[name]
    hp = {p.name: torch.full((4,), float(p.default or 1.0), dtype=F64) for p in cls.params}
    for weight in {p.weight for p in cls.penalties.values()}:
        hp[weight] = torch.tensor([1.0, 2.0, 0.0, 3.0], dtype=F64)  # head 2: no penalty at all
    on = torch.tensor([True, False, True, True])  # head 1: annealing
    results = []
    for log in (True, False):
        th = theta.clone().requires_grad_(True)
        objective = cls(hp, Settings(dtype=F64))
        loss, logs = objective.loss(forward(th, batch), batch, on, log=log)
        (g,) = torch.autograd.grad(loss.sum(), th)
        results.append((loss.detach(), g, logs))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-12, atol=1e-12)
    assert set(results[0][2]) >= set(cls.penalties) - {"third"} and (cls.stateful or not results[1][2].keys()
                                                                         - {"ce"})
