"""The options the CMA authors' protocol needs: a bias-free head, plain SGD, nn.Linear's init,
shuffled batches, the final step's head, and the SEM tie-break; and, together, the authors'
training loop reimplemented in plain PyTorch, step for step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import grad, hessian

from probe.records.results import Result
from probe.runs.selection import select
from probe.train.data import ShuffledSampler
from probe.train.settings import Settings
from tests.h5craft import toy_arrays, write_feature_file
from tests.method_helpers import F64, masks, problem, run


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


def _authors_preprocessing(X: np.ndarray, y: np.ndarray, a: np.ndarray, k: int, seed: int,
                           isr_class: int = 0) -> np.ndarray:
    """The authors' `fit_data`, `fit_isr_mean` and `transform`, written out: scikit-learn's
    PCA(n_components=k) drawing from numpy's generator seeded with the run's seed, the mean
    of class `isr_class` in each environment, a helper PCA of those means for the spurious
    direction, its complete QR basis U, and the rows mapped to ``Z U diag(scales)`` with the
    spurious coordinate's scale 0."""
    from sklearn.decomposition import PCA

    np.random.seed(seed)  # as their eval script does, right before fit_data
    pca = PCA(n_components=k).fit(X)
    Z = pca.transform(X)
    means = np.vstack([Z[(y == isr_class) & (a == e)].mean(0) for e in np.unique(a)])
    U = np.linalg.qr(PCA(n_components=1).fit(means).components_.T, mode="complete")[0]
    scales = np.ones(k)
    scales[:1] = 0.0
    return Z @ U @ np.diag(scales)


def test_the_protocols_cma_head_equals_the_authors_loop(tmp_path: Path) -> None:
    """`--protocol cma-paper` resolved for a Waterbirds file, PCA and ISR-Mean included, against
    the authors' pipeline written out here: their preprocessing (scikit-learn's randomized PCA
    at this size: 1,100 training rows of 120 columns), a bias-free nn.Linear from
    torch.manual_seed(seed), plain SGD at lr 1e-3 re-created at the anneal step, batches of
    500 (two full and one of 100 per epoch) drawn by this loop from numpy's permutation of
    each epoch, the penalties divided by d·C, off for the first 5 steps."""
    from probe.api import fit_grid

    arrays = toy_arrays(275, 120, seed=2)
    path = write_feature_file(tmp_path / "wb.h5", arrays, dataset="waterbirds")
    seed, steps, k, anneal = 3, 12, 6, 5  # 4 epochs of 3 batches
    grid = {"seed": [seed], "alpha": [300.0], "beta": [2000.0], "anneal": [anneal]}
    fast = {"eval_every": steps, "bounds_curve_rows": 0, "bounds_rows": 64}  # what the head does not depend on
    ours = fit_grid(path, "cma", grid, protocol="cma-paper", steps=steps, pca_dim=k, dtype="float64",
                    **fast)["rows"]["cma"][0]
    tr = arrays["split"] == 0
    Z = _authors_preprocessing(arrays["features"][tr].astype(np.float64), arrays["y"][tr], arrays["a"][tr], k, seed)
    want = _authors_loop(torch.as_tensor(Z), torch.as_tensor(arrays["y"][tr]), torch.as_tensor(arrays["a"][tr]), 2,
                         300.0, 2000.0, anneal, steps, seed=seed, batch=500)
    assert ours.theta.shape == want.shape == (2, k) and ours.best_step == steps
    assert ours.hparams["preprocess"] == "pca+isr-mean"
    torch.testing.assert_close(ours.theta, want, rtol=1e-6, atol=1e-9)
    assert not torch.allclose(want, torch.zeros_like(want))
    # the comparison sees the preprocessing: probe's exact PCA, or ISR-Mean's projection form
    for other in ({"pca_solver": "exact"}, {"isr_form": "project"}):
        theta = fit_grid(path, "cma", grid, protocol="cma-paper", steps=steps, pca_dim=k, dtype="float64",
                         **fast, **other)["rows"]["cma"][0].theta
        assert float((theta - want).norm() / want.norm()) > 1e-3, other  # against 1e-6 above
