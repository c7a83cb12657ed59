"""The options the CMA authors' protocol needs: a bias-free head, plain SGD, nn.Linear's init,
shuffled batches, the final step's head, and the SEM tie-break; and, together, the authors'
training loop reimplemented in plain PyTorch, step for step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, hessian

from probe.fitting.dispatch import fit_method
from probe.records.results import Result
from probe.runs.selection import select
from probe.train.data import ShuffledSampler
from probe.train.settings import Settings
from tests.method_helpers import F64, masks, problem, run
from tests.test_trainer import waterbirds_like


def _ce_nobias(th, X, y):
    return F.cross_entropy(X @ th.T, y)


def test_a_bias_free_heads_penalties_are_those_of_its_weights_alone() -> None:
    theta, batch = problem(G=2, N=24, d=3, C=3)
    batch.bias = False
    theta = theta[:, :, :3].contiguous()  # (G, C, d): no bias column

    def ref(th):
        Gs, Hs = [], []
        for m in masks(batch):
            def ce_e(t, m=m):
                return _ce_nobias(t, batch.X[m], batch.y[m])
            Gs.append(grad(ce_e)(th).reshape(-1))
            Hs.append(hessian(ce_e)(th).reshape(th.numel(), th.numel()))
        Gs, Hs = torch.stack(Gs), torch.stack(Hs)
        return (_ce_nobias(th, batch.X, batch.y) + 2.0 * ((Gs - Gs.mean(0)) ** 2).sum(1).mean()
                + 0.5 * ((Hs - Hs.mean(0)) ** 2).sum((1, 2)).mean())

    th = theta.clone().requires_grad_(True)
    ours = run("cma", th, batch, settings=Settings(dtype=F64, bias=False), alpha=2.0, beta=0.5)
    (g,) = torch.autograd.grad(ours.sum(), th)
    for h in range(2):
        torch.testing.assert_close(ours[h], ref(theta[h]))
        torch.testing.assert_close(g[h], grad(ref)(theta[h]))


def test_shuffled_batches_are_epochs_of_a_permutation() -> None:
    s = ShuffledSampler(11, 4, seed=3)
    first = [s.next() for _ in range(3)]
    assert [len(b) for b in first] == [4, 4, 3] and sorted(np.concatenate(first).tolist()) == list(range(11))
    rng = np.random.default_rng(3)
    np.testing.assert_array_equal(np.concatenate(first), rng.permutation(11))
    np.testing.assert_array_equal(s.next(), rng.permutation(11)[:4])  # the next epoch, freshly shuffled


def test_ties_go_to_the_smaller_standard_error_when_asked() -> None:
    def row(cfg: float, seed: int, wga: float) -> Result:
        return Result("erm", {"lr": cfg, "seed": seed}, {"val": {"wga": wga}})

    rows = [row(1, 0, 0.5), row(1, 1, 0.7), row(2, 0, 0.6), row(2, 1, 0.6)]  # equal means, SEM 0.1 vs 0
    assert select(rows)[0].hparams["lr"] == 1
    assert select(rows, ties="sem")[0].hparams["lr"] == 2


def test_ties_go_to_the_higher_validation_accuracy_by_default() -> None:
    def row(cfg: float, seed: int, wga: float, acc: float) -> Result:
        return Result("cma", {"alpha": cfg, "seed": seed}, {"val": {"wga": wga, "acc": acc}})

    # configurations 1 and 2 tie on mean validation WGA; 2 has the higher mean validation accuracy
    rows = [row(1, 0, 0.9, 0.95), row(1, 1, 0.8, 0.93), row(2, 0, 0.85, 0.97), row(2, 1, 0.85, 0.96),
            row(3, 0, 0.84, 0.99), row(3, 1, 0.84, 0.99)]
    assert select(rows)[0].hparams["alpha"] == 2
    assert select(rows, ties="first")[0].hparams["alpha"] == 1
    # accuracy breaks ties only: a better mean WGA wins whatever its accuracy
    rows.append(row(4, 0, 0.9, 0.5))
    rows.append(row(4, 1, 0.9, 0.5))
    assert select(rows)[0].hparams["alpha"] == 4


def _authors_loop(X, y, env, C, alpha, beta, anneal, steps, seed, lr=1e-3, batch=64):
    """The CMA authors' linear-probing loop as their code runs it, written out plainly: a
    bias-free nn.Linear from torch.manual_seed(seed), plain SGD re-created at the anneal
    step, shuffled epochs, the mean over environments of each environment's mean CE, and
    the variances of the per-environment gradients and Hessians divided by d·C."""
    n, d = X.shape
    torch.manual_seed(seed)
    model = torch.nn.Linear(d, C, bias=False).double()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    rng, order, pos = np.random.default_rng(seed), None, n
    for step in range(steps):
        if pos >= n:
            order, pos = rng.permutation(n), 0
        idx = torch.as_tensor(order[pos:pos + batch])
        pos += len(idx)
        if step == anneal and anneal > 0:
            opt = torch.optim.SGD(model.parameters(), lr=lr)
        Xb, yb, eb = X[idx], y[idx], env[idx]
        envs = torch.unique(eb)

        def per_env(w, e, Xb=Xb, yb=yb, eb=eb):
            return F.cross_entropy(Xb[eb == e] @ w.T, yb[eb == e])

        w = model.weight
        ce = torch.stack([per_env(w, e) for e in envs]).mean()
        Gs = torch.stack([grad(per_env)(w, e).reshape(-1) / (d * C) for e in envs])
        Hs = torch.stack([hessian(per_env)(w, e).reshape(w.numel(), -1) / (d * C) for e in envs])
        pen = alpha * ((Gs - Gs.mean(0)) ** 2).sum(1).mean() + beta * ((Hs - Hs.mean(0)) ** 2).sum((1, 2)).mean()
        loss = ce + (pen if step >= anneal else 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.weight.detach()


@pytest.mark.parametrize("anneal", [0, 7])
def test_the_protocols_cma_head_equals_the_authors_loop(anneal: int) -> None:
    fs = waterbirds_like(n=(150, 60, 60), d=5, seed=1)
    settings = Settings(steps=20, batch_size=64, eval_every=5, optimizer="sgd", momentum=0.0, bias=False,
                        init="torch-linear", batches="shuffled", ce_weighting="domain", domain="a", normalize="dC",
                        select_checkpoint="last", dtype=F64)
    cfg = {"alpha": 300.0, "beta": 2000.0, "lr": 1e-3, "weight_decay": 0.0, "anneal": anneal, "seed": 4,
           "preprocess": "none"}
    ours = fit_method(fs, "cma", [cfg], settings)[0]
    tr = fs.split == 0
    want = _authors_loop(torch.as_tensor(fs.features[tr], dtype=F64), torch.as_tensor(fs.y[tr]),
                         torch.as_tensor(fs.a[tr]), 2, 300.0, 2000.0, anneal, 20, seed=4, batch=64)
    assert ours.theta.shape == want.shape == (2, 5) and ours.best_step == 20
    torch.testing.assert_close(ours.theta, want, rtol=1e-5, atol=1e-9)
    assert not torch.allclose(want, torch.zeros_like(want))
