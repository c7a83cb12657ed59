"""The full-batch solver: scikit-learn's optimum (C = 1/(λ Σs), 2/(λ Σs) for two classes) with
sample weights, its tolerance and not-converged report, and how `probe fit` chooses it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from base.errors import UserError
from features.store import FeatureSet
from probe.api import fit_grid
from probe.fitting.dispatch import fit_method, plan_method
from probe.records.results import Result
from probe.train import solver
from probe.train.settings import Settings, user_settings
from probe.train.solver import Problem, lbfgs
from tests.test_trainer import waterbirds_like


def _data(n: int, d: int, C: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Correlated features (as embeddings are), labels from a noisy linear score, sample weights."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) / np.sqrt(d) + 0.3 * rng.standard_normal((n, d))
    y = (X @ rng.standard_normal((d, C)) + rng.gumbel(size=(n, C))).argmax(1)
    return X, y, rng.uniform(0.2, 3.0, n)


def _sklearn(X: np.ndarray, y: np.ndarray, sw: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's (C, d) weights and (C,) biases as a softmax head (binary: ±w/2; biases centred)."""
    C = int(y.max()) + 1
    sk = LogisticRegression(C=(2.0 if C == 2 else 1.0) / (lam * sw.sum()), tol=1e-12, max_iter=100_000)
    sk.fit(X, y, sample_weight=sw)
    if C == 2:
        return np.vstack([-sk.coef_ / 2, sk.coef_ / 2]), np.array([-1, 1]) * sk.intercept_[0] / 2
    return sk.coef_, sk.intercept_ - sk.intercept_.mean()


def _solve(X: np.ndarray, y: np.ndarray, w: np.ndarray, lam: list[float], dtype=torch.float64, **kw):
    pb = Problem(torch.as_tensor(X, dtype=dtype), torch.as_tensor(y), torch.as_tensor(w / w.sum(), dtype=dtype),
                 int(y.max()) + 1)
    return lbfgs(pb, torch.tensor(lam, dtype=torch.float64), **{"tol": 1e-10, "max_iter": 1000, **kw})


def _centred(theta: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    th = theta.numpy()
    return th[:, :-1], th[:, -1] - th[:, -1].mean()


# ------------------------------------------------------------------ sklearn's optimum


@pytest.mark.parametrize("C", [2, 4])
@pytest.mark.parametrize("precondition", [True, False])
def test_optimum_matches_sklearn_with_sample_weights(C: int, precondition: bool) -> None:
    X, y, sw = _data(400, 6, C)
    lams = [3e-3, 3e-2]
    sol = _solve(X, y, sw, lams, precondition=precondition)
    assert sol.status == ["ok", "ok"] and max(sol.grad_max) <= 1e-10
    for g, lam in enumerate(lams):
        W, b = _centred(sol.theta[g])
        W_sk, b_sk = _sklearn(X, y, sw, lam)
        scale = np.abs(W_sk).max()
        np.testing.assert_allclose(W, W_sk, rtol=0, atol=1e-4 * scale)
        np.testing.assert_allclose(b, b_sk, rtol=0, atol=1e-4 * max(scale, np.abs(b_sk).max()))


@pytest.mark.parametrize("refresh", [50, 3])
def test_float32_meets_its_tolerance_near_the_float64_optimum(monkeypatch, refresh: int) -> None:
    monkeypatch.setattr(solver, "REFRESH_EVERY", refresh)  # 3: the exact logits replace the updated ones
    X, y, sw = _data(2000, 20, 3, seed=1)
    exact = _solve(X, y, sw, [1e-3])
    single = _solve(X, y, sw, [1e-3], dtype=torch.float32, tol=1e-6)
    assert single.status == ["ok"] and single.grad_max[0] <= 1e-6 and single.iterations[0] > 3
    np.testing.assert_allclose(single.theta[0].numpy(), exact.theta[0].numpy(), atol=1e-3)


def test_heads_of_a_grid_are_what_they_are_alone() -> None:
    X, y, sw = _data(300, 5, 3, seed=2)
    lams = [1e-3, 1e-2, 1e-1]
    grid = _solve(X, y, sw, lams)
    for g, lam in enumerate(lams):
        alone = _solve(X, y, sw, [lam])
        np.testing.assert_allclose(grid.theta[g].numpy(), alone.theta[0].numpy(), rtol=0, atol=1e-7)
    # the strongest penalty converges first and leaves the matmuls
    assert grid.iterations[2] < grid.iterations[0]


def test_two_classes_stop_by_the_two_row_objectives_own_gradient() -> None:
    """Two classes are solved as one logit (probe.train.solver); what comes back is the
    two-row head [−v/2, v/2], and the objective it reports (f and max|∇f|) is that head's
    under the two-row objective, formed here by autograd."""
    X, y, sw = _data(300, 5, 2, seed=4)
    w = torch.as_tensor(sw / sw.sum())
    lam = 3e-2
    sol = _solve(X, y, sw, [lam], tol=1e-6, max_iter=3)  # stopped early: a gradient far from zero
    theta = sol.theta[0].clone().requires_grad_()
    Xt = torch.cat([torch.as_tensor(X), torch.ones(len(X), 1, dtype=torch.float64)], 1)
    ce = (torch.nn.functional.cross_entropy(Xt @ theta.T, torch.as_tensor(y), reduction="none") * w).sum()
    f = ce + lam / 2 * (theta[:, :-1] ** 2).sum()
    (g,) = torch.autograd.grad(f, theta)
    assert torch.equal(sol.theta[0][0], -sol.theta[0][1])
    assert abs(sol.loss[0][-1] - f.item()) < 1e-12
    assert abs(sol.grad_max[0] - float(g.abs().max())) < 1e-12 and sol.grad_max[0] > 1e-6


def test_a_head_out_of_budget_is_reported_not_converged() -> None:
    X, y, sw = _data(300, 5, 2, seed=3)
    sol = _solve(X, y, sw, [1e-2, 1e-2], max_iter=2)
    assert sol.status == ["not_converged"] * 2 and sol.iterations == [2, 2] and min(sol.grad_max) > 1e-10
    assert len(sol.loss[0]) == 2 and sol.loss[0][1] < sol.loss[0][0]
    X[0, 0] = np.nan
    assert _solve(X, y, sw, [1e-2]).status == ["diverged"]


@pytest.mark.cuda
def test_cuda_matches_cpu() -> None:
    X, y, sw = _data(500, 8, 3, seed=4)
    cpu = _solve(X, y, sw, [1e-2, 1e-3])
    pb = Problem(torch.as_tensor(X, device="cuda"), torch.as_tensor(y, device="cuda"),
                 torch.as_tensor(sw / sw.sum(), device="cuda"), 3)
    gpu = lbfgs(pb, torch.tensor([1e-2, 1e-3], device="cuda", dtype=torch.float64), tol=1e-10, max_iter=1000)
    assert gpu.status == ["ok", "ok"]
    np.testing.assert_allclose(gpu.theta.cpu().numpy(), cpu.theta.numpy(), atol=1e-7)


# ------------------------------------------------------------------- through probe fit


def _cfg(**kw):
    return {"lr": 1e-2, "weight_decay": 1e-2, "seed": 0, "preprocess": "standardize", **kw}


def _standardized(fs: FeatureSet) -> np.ndarray:
    tr = fs.split == 0
    return ((fs.features - fs.features[tr].mean(0)) / fs.features[tr].std(0, ddof=1))[tr].astype(np.float64)


@pytest.mark.parametrize(("method", "per_group"), [("erm", False), ("reweight", True)])
def test_erm_and_reweight_reach_sklearns_optimum(method: str, per_group: bool) -> None:
    """ERM's pooled CE is unit sample weights; reweight's mean of per-group means is
    sample weights 1/n_g (sklearn's C scales with their sum, which cancels)."""
    fs = waterbirds_like(n=(600, 100, 100), d=6)
    tr = fs.split == 0
    g = fs.group[tr]
    sw = 1.0 / np.bincount(g)[g] if per_group else np.ones(tr.sum())
    lam = 1e-2
    row = fit_method(fs, method, [_cfg(weight_decay=lam)], Settings(dtype=torch.float64, tol=1e-10))[0]
    assert row.status == "ok" and row.hparams["solver"] == "lbfgs" and row.history["grad_max"][-1] <= 1e-10
    W, b = _centred(row.theta)
    W_sk, b_sk = _sklearn(_standardized(fs), fs.y[tr], sw, lam)
    np.testing.assert_allclose(W, W_sk, rtol=0, atol=1e-4 * np.abs(W_sk).max())
    np.testing.assert_allclose(b, b_sk, rtol=0, atol=1e-4 * max(np.abs(W_sk).max(), np.abs(b_sk).max()))


def test_configurations_with_one_optimum_are_solved_once() -> None:
    fs = waterbirds_like(n=(300, 100, 100), d=4)
    cfgs = [_cfg(weight_decay=wd, seed=s, lr=lr) for wd in (1e-3, 1e-2) for s in (0, 1) for lr in (1e-2, 1e-1)]
    st = Settings(dtype=torch.float64)
    chunks = plan_method(fs, "erm", cfgs, st)
    assert len(chunks) == 1 and sorted(chunks[0].configs) == list(range(8))
    rows = fit_method(fs, "erm", cfgs, st)
    for r in rows:
        same = rows[0] if r.hparams["weight_decay"] == 1e-3 else rows[4]
        assert torch.equal(r.theta, same.theta) and r.metrics == same.metrics
        assert r is same or r.metrics is not same.metrics  # scored once, but each row owns its figures
    assert not torch.equal(rows[0].theta, rows[4].theta)
    # a memory budget of one head per chunk still keeps the duplicates together
    tight = plan_method(fs, "erm", cfgs, Settings(memory_bytes=1))
    assert [len(c) for c in tight] == [4, 4]


def test_run_folder_reports_not_converged_and_still_selects(tmp_path: Path) -> None:
    fs = waterbirds_like(n=(300, 100, 100), d=4)
    res = fit_grid(fs, ["erm", "cma"], {"weight_decay": [1e-3, 1e-2], "alpha": [1.0], "beta": [1.0]},
                   tmp_path / "run", max_iter=1, tol=1e-12, steps=20, batch_size=64, eval_every=10)
    rows = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    erm = [r for r in rows if r["method"] == "erm"]
    assert [r["status"] for r in erm] == ["not_converged"] * 2 and all(r["steps_run"] == 1 for r in erm)
    assert {"step", "loss", "ce", "val_wga", "val_acc", "objective", "grad_max"} <= set(erm[0]["history"])
    cma = [r for r in rows if r["method"] == "cma"]
    assert cma[0]["hparams"]["optimizer"] == "adam" and "solver" not in cma[0]["hparams"]
    summary = res["summary"].methods["erm"]
    assert summary.count("n_not_converged") == 2 and summary.selected is not None
    again = Result.from_json(erm[0])
    assert again.status == "not_converged" and Result.from_json({"method": "erm", "hparams": {}}).status == "ok"


def test_solver_setting_keeps_the_stochastic_path_and_refuses_lbfgs_for_penalised_methods(tmp_path: Path) -> None:
    fs = waterbirds_like(n=(300, 100, 100), d=4)
    st = Settings(steps=20, batch_size=64, eval_every=10, dtype=torch.float64, solver="adam")
    row = fit_method(fs, "erm", [_cfg()], st)[0]
    assert row.hparams["optimizer"] == "adam" and "solver" not in row.hparams and row.steps_run == 20
    with pytest.raises(UserError, match="`solver` lbfgs .*cma"):
        fit_grid(fs, ["erm", "cma"], {}, None, solver="lbfgs")
    with pytest.raises(UserError, match="`tol`"):
        Settings(tol=0.0)
    with pytest.raises(UserError, match="`tol`: True"):  # a bool is not a tolerance
        Settings(tol=True)
    with pytest.raises(UserError, match="`bias`"):
        Settings(bias=1)
    with pytest.raises(UserError, match="`solver` lbfgs fits heads with a bias"):
        fit_grid(fs, ["erm"], {}, None, solver="lbfgs", bias=False)
    row = fit_method(fs, "erm", [_cfg()], Settings(steps=20, batch_size=64, eval_every=10, dtype=torch.float64,
                                                    bias=False))[0]
    assert "solver" not in row.hparams and row.theta.shape[-1] == 4  # auto: a bias-free head is trained
    flags = {f.name: f.type for f in user_settings()}
    assert flags["solver"] == "str" and flags["tol"] == "float" and flags["max_iter"] == "int"


@pytest.mark.parametrize("owned", [False, True])
@pytest.mark.parametrize("blocks", [1, 3, 4, 7])
def test_the_preconditioners_second_moment_is_the_weighted_design_moment(blocks: int, owned: bool) -> None:
    X, _, sw = _data(50, 7, 2)
    Xt, w = torch.as_tensor(X), torch.as_tensor(sw / sw.sum())
    design = torch.cat([Xt, torch.ones(50, 1, dtype=Xt.dtype)], dim=1)
    expected = (design * w.unsqueeze(1)).T @ design
    scratch = Xt.clone()
    torch.testing.assert_close(solver._second_moment(scratch, w, blocks, owned), expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(scratch, Xt) != owned  # a caller's rows are kept unless they are scratch


def _two_loop(h: solver._Heads, pairs: list[tuple[torch.Tensor, torch.Tensor]], g: torch.Tensor) -> torch.Tensor:
    """The textbook two-loop recursion (Nocedal & Wright, Alg. 7.4) over ``pairs`` (s, y), oldest
    first, with the heads' H₀ = γ·h0; a skipped pair (zeros) has ρ = 0."""
    q = -g.flatten(1)
    rho = []
    for s, yv in pairs:
        sy = (s * yv).sum(-1)
        rho.append(torch.where(sy != 0, 1 / torch.where(sy != 0, sy, 1.0), 0.0))
    alpha = {}
    for i in reversed(range(len(pairs))):
        s, yv = pairs[i]
        alpha[i] = rho[i] * (s * q).sum(-1)
        q = q - alpha[i].unsqueeze(-1) * yv
    r = h.gamma.unsqueeze(-1) * h.h0(q)
    for i, (s, yv) in enumerate(pairs):
        r = r + (alpha[i] - rho[i] * (yv * r).sum(-1)).unsqueeze(-1) * s
    return r.view_as(g)


@pytest.mark.parametrize("C, pairs", [(2, 3), (2, 14), (4, 1), (4, 10)])
def test_the_compact_direction_is_the_two_loop_recursions(C: int, pairs: int) -> None:
    X, y, sw = _data(40, 5, C)
    pb = Problem(torch.as_tensor(X), torch.as_tensor(y), torch.as_tensor(sw / sw.sum()), C)
    h = solver._Heads(pb, torch.tensor([1e-3, 1e-1], dtype=torch.float64), precondition=True)
    gen = torch.Generator().manual_seed(C + pairs)
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []  # the memory as documented, oldest first
    for k in range(pairs):  # pairs with positive curvature, one with none (skipped), the memory overflowing
        s = torch.randn(h.g.shape, generator=gen, dtype=torch.float64).flatten(1)
        yv = s + 0.3 * torch.randn(s.shape, generator=gen, dtype=torch.float64)
        yv = -yv if k == 1 else yv
        curved = (s * yv).sum(-1) > 0
        assert bool(curved.all()) if k != 1 else not bool(curved.any())  # every head's pair kept, or none
        h.remember(s.view_as(h.g), yv.view_as(h.g))
        kept = (kept + [(s, yv) if k != 1 else (torch.zeros_like(s), torch.zeros_like(yv))])[-solver.MEMORY:]
        if k == pairs // 2:  # a head restarted (as the solver does when a direction points uphill)
            h.forget(torch.tensor([False, True]))
            head1 = torch.tensor([1])
            kept = [(s_.index_fill(0, head1, 0.0), y_.index_fill(0, head1, 0.0)) for s_, y_ in kept]
    assert h.pairs == len(kept) == min(pairs, solver.MEMORY)
    assert bool((h.SY.diagonal(dim1=1, dim2=2)[:, :h.pairs] == 0).any())  # a skipped pair is in the memory
    h.g = torch.randn(h.g.shape, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(h.direction(), _two_loop(h, kept, h.g), rtol=1e-9, atol=1e-12)
