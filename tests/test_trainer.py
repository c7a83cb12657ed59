"""The batched trainer: sklearn agreement, grid = separate runs, chunking, annealing and
its optimizer reset, divergence, Ctrl-C, preprocessing, the estimator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression

from features.store import FeatureSet, read_features
from probe.api import LinearHead, fit_grid
from probe.fitting.dispatch import fit_method, plan_method
from probe.preprocessing import Preprocessor
from probe.preprocessing.pca import default_pca_dim
from probe.train.optim import BatchedOptimizer
from probe.train.settings import Settings
from tests.h5craft import toy_arrays, write_feature_file


def _fs(tmp_path: Path, n: int = 12, dim: int = 6, seed: int = 0) -> FeatureSet:
    return read_features(write_feature_file(tmp_path / "toy.h5", toy_arrays(n, dim, seed)))


def _cfg(**kw):
    base = {"lr": 1e-2, "weight_decay": 1e-3, "anneal": 0, "seed": 0, "preprocess": "standardize"}
    return {**base, **kw}


def waterbirds_like(n=(1000, 400, 400), d=8, seed=0, agree=(0.95, 0.5, 0.5), core=1.0, spurious=2.5) -> FeatureSet:
    """Gaussian class features (dim 0) plus a stronger spurious one (dim 1) agreeing
    with y in 95% of train and 50% of val/test, like Waterbirds."""
    rng = np.random.default_rng(seed)
    parts = []
    for split, (m, p) in enumerate(zip(n, agree, strict=True)):
        y = rng.integers(0, 2, m)
        a = np.where(rng.random(m) < p, y, 1 - y)
        X = rng.standard_normal((m, d))
        X[:, 0] += core * (2 * y - 1)
        X[:, 1] += spurious * (2 * a - 1)
        parts.append((X, y, a, np.full(m, split)))
    X, y, a, s = (np.concatenate(v) for v in zip(*parts, strict=True))
    return FeatureSet(X.astype(np.float32), y.astype(np.int64), a.astype(np.int64), (2 * y + a).astype(np.int64),
                      s.astype(np.int8), np.arange(len(y)).astype(str).astype(object), ["c0", "c1"],
                      ["c0/a0", "c0/a1", "c1/a0", "c1/a1"], path="<synthetic>")


def _sklearn_same_model(fs: FeatureSet, wd: float) -> tuple[LogisticRegression, np.ndarray]:
    tr = fs.split == 0
    Z = (fs.features - fs.features[tr].mean(0)) / fs.features[tr].std(0, ddof=1)
    # A 2-class softmax head with λ/2(‖w0‖²+‖w1‖²) equals binary LR with λ/4‖w1-w0‖²: C = 2/(λN).
    sk = LogisticRegression(C=2.0 / (wd * tr.sum()), max_iter=10000, tol=1e-12).fit(Z[tr], fs.y[tr])
    return sk, Z


# --------------------------------------------------------------------- sklearn agreement


def test_erm_matches_sklearn_logistic_regression(tmp_path: Path) -> None:
    fs = _fs(tmp_path, n=40, dim=8)
    te = fs.split == 2
    wd = 1e-2
    sk, Z = _sklearn_same_model(fs, wd)
    st = Settings(steps=3000, batch_size=0, eval_every=3000, dtype=torch.float64)
    row = fit_method(fs, "erm", [_cfg(weight_decay=wd)], st)[0]
    theta = row.theta.numpy()
    w, b = theta[1, :-1] - theta[0, :-1], theta[1, -1] - theta[0, -1]
    np.testing.assert_allclose(w, sk.coef_[0], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(b, sk.intercept_[0], atol=1e-3)
    assert abs(row.metrics["test"]["acc"] - (sk.predict(Z[te]) == fs.y[te]).mean()) <= 0.005


def test_erm_matches_sklearn_on_waterbirds_like_data_in_float32() -> None:
    fs = waterbirds_like(n=(2000, 400, 1000), d=16)
    te = fs.split == 2
    wd = 1e-3
    sk, Z = _sklearn_same_model(fs, wd)
    # The default float32 path, full batch: within half an accuracy point of sklearn.
    row = fit_method(fs, "erm", [_cfg(weight_decay=wd, lr=5e-2)], Settings(steps=1500, batch_size=0,
                                                                            eval_every=1500))[0]
    sk_acc = float((sk.predict(Z[te]) == fs.y[te]).mean())
    assert abs(row.metrics["test"]["acc"] - sk_acc) <= 0.005


def test_cma_selected_by_val_wga_beats_erm_on_test_wga() -> None:
    fs = waterbirds_like(seed=1)
    res = fit_grid(fs, ["erm", "cma"], {"alpha": [1e2], "beta": [1e1, 1e2], "lr": [1e-2]}, None, steps=300,
                   batch_size=128, eval_every=25, device="cpu")

    def selected_test_wga(method: str) -> float:
        rows = res["rows"][method]
        return max(rows, key=lambda r: r.metrics["val"]["wga"]).metrics["test"]["wga"]

    assert selected_test_wga("cma") > selected_test_wga("erm") + 0.2


# ------------------------------------------------------------------ batching invariance


def test_grid_equals_separate_runs(tmp_path: Path) -> None:
    fs = _fs(tmp_path)
    st = Settings(steps=60, batch_size=16, eval_every=20, dtype=torch.float64)
    configs = [_cfg(alpha=a, beta=b, lr=lr, anneal=an) for a, b in ((0.0, 5.0), (10.0, 0.0), (10.0, 5.0))
               for lr in (1e-2, 5e-2) for an in (0, 30)][:9]
    grid = fit_method(fs, "cma", configs, st)
    for cfg, row in zip(configs, grid, strict=True):
        alone = fit_method(fs, "cma", [cfg], st)[0]
        torch.testing.assert_close(row.theta, alone.theta, rtol=1e-9, atol=1e-12)
        # the same predictions, hence the same counts; the cross-entropy as close as the heads
        ces = [{s: m.pop("ce") for s, m in r.metrics.items()} for r in (row, alone)]
        assert row.metrics == alone.metrics
        assert ces[0] == pytest.approx(ces[1], rel=1e-9)
        assert row.best_step == alone.best_step


@pytest.mark.parametrize("method", ["groupdro", "fishr", "irm", "vrex"])
def test_other_methods_grid_equals_separate_runs(tmp_path: Path, method: str) -> None:
    fs = _fs(tmp_path)
    st = Settings(steps=30, batch_size=16, eval_every=10, dtype=torch.float64)
    key = "eta" if method == "groupdro" else "lam"
    configs = [_cfg(**{key: v}) for v in (0.1, 10.0)]
    grid = fit_method(fs, method, configs, st)
    for cfg, row in zip(configs, grid, strict=True):
        torch.testing.assert_close(row.theta, fit_method(fs, method, [cfg], st)[0].theta,
                                   rtol=1e-9, atol=1e-12)


def test_chunked_cohort_equals_one_batch(tmp_path: Path) -> None:
    fs = _fs(tmp_path)
    configs = [_cfg(alpha=a, beta=b) for a in (0.0, 1.0, 10.0) for b in (0.0, 5.0)]
    st = Settings(steps=30, batch_size=16, eval_every=10, dtype=torch.float64)
    chunked = Settings(steps=30, batch_size=16, eval_every=10, dtype=torch.float64, max_heads=4)
    assert [len(c) for c in plan_method(fs, "cma", configs, chunked)] == [3, 3]
    for a, b in zip(fit_method(fs, "cma", configs, st), fit_method(fs, "cma", configs, chunked), strict=True):
        torch.testing.assert_close(a.theta, b.theta, rtol=1e-9, atol=1e-12)
        assert a.run_id == b.run_id


def test_plan_chunks_by_memory_estimate(tmp_path: Path) -> None:
    fs = _fs(tmp_path)
    configs = [_cfg(alpha=float(a), seed=s) for a in range(5) for s in (0, 1)]
    roomy = plan_method(fs, "cma", configs, Settings(batch_size=16))
    assert [c.seed for c in roomy] == [0, 1] and [len(c) for c in roomy] == [5, 5]
    # A budget below one head's estimate: one head per chunk, still every config once.
    tight = plan_method(fs, "cma", configs, Settings(batch_size=16, memory_bytes=1))
    assert sorted(i for c in tight for i in c.configs) == list(range(10)) and all(len(c) == 1 for c in tight)


def test_seeds_change_batches_but_not_full_batch(tmp_path: Path) -> None:
    fs = _fs(tmp_path)
    # The stochastic trainer's batches (the full-batch solver ignores the seed: tests/test_solver.py).
    mini = Settings(steps=30, batch_size=8, eval_every=30, dtype=torch.float64, solver="adam")
    a, b = fit_method(fs, "erm", [_cfg(seed=0), _cfg(seed=1)], mini)
    assert not torch.allclose(a.theta, b.theta)
    full = Settings(steps=30, batch_size=0, eval_every=30, dtype=torch.float64, solver="adam")
    a, b = fit_method(fs, "erm", [_cfg(seed=0), _cfg(seed=1)], full)
    torch.testing.assert_close(a.theta, b.theta)


def test_ce_weighting_setting(tmp_path: Path) -> None:
    fs = _fs(tmp_path, n=10)
    # Unbalanced training domains so the two weightings differ.
    keep = ~((fs.split == 0) & (fs.group == 1) & (np.arange(len(fs.y)) % 2 == 0))
    fs = FeatureSet(fs.features[keep], fs.y[keep], fs.a[keep], fs.group[keep], fs.split[keep], fs.ids[keep],
                    fs.class_names, fs.group_names)
    st = dict(steps=20, batch_size=0, eval_every=20, dtype=torch.float64)
    erm = fit_method(fs, "erm", [_cfg()], Settings(**st))[0]
    rw = fit_method(fs, "reweight", [_cfg()], Settings(**st))[0]
    rw_pooled = fit_method(fs, "reweight", [_cfg()], Settings(**st, ce_weighting="pooled"))[0]
    erm_domain = fit_method(fs, "erm", [_cfg()], Settings(**st, ce_weighting="domain"))[0]
    assert not torch.allclose(erm.theta, rw.theta)
    torch.testing.assert_close(rw_pooled.theta, erm.theta)
    torch.testing.assert_close(erm_domain.theta, rw.theta)
    assert erm.hparams["ce_weighting"] == "pooled" and erm_domain.hparams["ce_weighting"] == "domain"


# ---------------------------------------------------------------------------- annealing


def test_annealing_switches_penalty_on_at_the_right_step(tmp_path: Path) -> None:
    fs = _fs(tmp_path)
    st = Settings(steps=40, batch_size=0, eval_every=1, dtype=torch.float64)
    erm, cma_late, cma_now = fit_method(
        fs, "cma", [_cfg(alpha=0.0, beta=0.0), _cfg(alpha=50.0, beta=50.0, anneal=20),
                    _cfg(alpha=50.0, beta=50.0, anneal=0)], st)
    loss_erm, loss_late = erm.history["loss"], cma_late.history["loss"]
    # Identical to ERM for steps 1..20 (history index 19 is step 20), then the penalty enters.
    np.testing.assert_allclose(loss_late[:20], loss_erm[:20], rtol=1e-12)
    assert loss_late[20] > loss_erm[20] + 1e-9
    assert cma_now.history["loss"][0] > loss_erm[0] + 1e-9
    # No checkpoint from the ERM phase is kept for the annealed head.
    assert cma_late.best_step > 20


def test_annealing_resets_the_optimizer_of_exactly_those_heads(tmp_path: Path) -> None:
    fs = _fs(tmp_path)
    wd, lr = 1e-3, 5e-2
    st = Settings(steps=40, batch_size=0, eval_every=40, dtype=torch.float64, solver="adam")
    # α = β = 0: the only difference between the heads is the optimizer reset at step 20.
    plain, reset = fit_method(fs, "cma", [_cfg(alpha=0.0, beta=0.0, lr=lr, weight_decay=wd),
                                          _cfg(alpha=0.0, beta=0.0, lr=lr, weight_decay=wd, anneal=20)], st)
    erm = fit_method(fs, "erm", [_cfg(lr=lr, weight_decay=wd)], st)[0]
    torch.testing.assert_close(plain.theta, erm.theta)
    assert not torch.allclose(plain.theta, reset.theta)

    # Reference: torch.optim.Adam (L2 on the weights only), restarted after 20 steps.
    tr = fs.split == 0
    X = torch.as_tensor(fs.features[tr], dtype=torch.float64)
    X = (X - X.mean(0)) / X.std(0)
    y = torch.as_tensor(fs.y[tr])
    W = torch.zeros(2, X.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    for _phase in range(2):
        opt = torch.optim.Adam([{"params": [W], "weight_decay": wd}, {"params": [b], "weight_decay": 0.0}], lr=lr)
        for _ in range(20):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(X @ W.T + b, y).backward()
            opt.step()
    want = torch.cat([W.detach(), b.detach()[:, None]], 1)
    torch.testing.assert_close(reset.theta, want, rtol=1e-7, atol=1e-9)


def test_optimizer_reset_only_touches_switching_heads() -> None:
    p = torch.zeros(3, 2, 4, dtype=torch.float64)
    opt = BatchedOptimizer(p, torch.full((3,), 0.1, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    g = torch.ones_like(p)
    for _ in range(3):
        opt.step(g, torch.ones(3, dtype=torch.bool))
    m_before, v_before = opt.m.clone(), opt.v.clone()
    opt.reset(torch.tensor([False, True, False]))
    assert torch.equal(opt.m[0], m_before[0]) and torch.equal(opt.v[2], v_before[2])
    assert opt.m[1].abs().sum() == 0 and opt.v[1].abs().sum() == 0 and opt.t.view(-1)[1] == 0
    # After a reset Adam's first step is again lr * sign(g) (bias correction restarts).
    before = p.clone()
    opt.step(g, torch.ones(3, dtype=torch.bool))
    torch.testing.assert_close(before[1] - p[1], torch.full_like(p[1], 0.1), rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------- robustness


@pytest.mark.parametrize(("optimizer", "bad"), [("sgd", {"alpha": 1e30, "beta": 1e30, "lr": 1e30}),
                                                 ("adam", {"lr": 1e38, "alpha": 1.0, "beta": 1.0})])
def test_diverging_configuration_does_not_stop_the_grid(tmp_path: Path, optimizer: str, bad: dict) -> None:
    fs = _fs(tmp_path)
    st = Settings(steps=50, batch_size=0, eval_every=10, optimizer=optimizer, dtype=torch.float32)
    good_cfg = _cfg(alpha=1.0, beta=1.0, lr=1e-1)
    rows = fit_method(fs, "cma", [good_cfg, _cfg(**bad)], st)
    assert rows[0].status == "ok" and rows[1].status == "diverged"
    assert rows[0].metrics["test"]["wga"] is not None
    assert rows[1].steps_run < 50
    # The healthy head is exactly what it is alone.
    torch.testing.assert_close(rows[0].theta, fit_method(fs, "cma", [good_cfg], st)[0].theta)


def test_patience_stops_a_head_early(tmp_path: Path) -> None:
    fs = _fs(tmp_path)
    st = Settings(steps=200, batch_size=0, eval_every=5, patience=2, dtype=torch.float64, solver="adam")
    row = fit_method(fs, "erm", [_cfg(lr=0.5)], st)[0]
    assert row.steps_run < 200
    assert row.steps_run - row.best_step == 2 * 5


def test_keyboard_interrupt_keeps_finished_configurations(tmp_path: Path) -> None:
    fs = _fs(tmp_path)
    calls = {"n": 0}

    class Stop:
        def total(self, n: int) -> None:
            pass

        def advance(self, n: int) -> None:
            calls["n"] += n
            if calls["n"] > 30 + 5:  # the second cohort (seed 1) is under way
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as info:
        fit_grid(fs, ["erm"], {"seed": [0, 1]}, tmp_path / "run", steps=30, batch_size=16, eval_every=10,
                 progress=Stop(), solver="adam")
    assert info.value.probe_written == str(tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert [r["hparams"]["seed"] for r in rows] == [0]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["methods"]["erm"]["selected"]


# ------------------------------------------------------------------------- run folder


def test_fit_grid_writes_run_folder_and_selects_by_val_wga(tmp_path: Path) -> None:
    fs = _fs(tmp_path)
    res = fit_grid(fs, ["erm", "cma"], {"alpha": [0.0, 10.0], "beta": [1.0], "anneal": [0], "seed": [0, 1]}, tmp_path / "run",
                   steps=40, batch_size=16, eval_every=10, command="probe fit toy.h5")
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert {r["method"] for r in rows} == {"erm", "cma"} and len(rows) == 2 + 4
    assert len({r["run_id"] for r in rows}) == len(rows)
    for r in rows:
        # cma: the stochastic trainer (its penalty-free counterpart, every rule's own checkpoint);
        # erm: solved to its optimum, one head for every rule
        penalised = {"penalty_free", "rule_checkpoints"} if r["method"] == "cma" else set()
        assert set(r) == {"run_id", "method", "hparams", "status", "steps_run", "best_step", "metrics", "history",
                          "bounds", *penalised}
        assert set(r["metrics"]) == {"train", "val", "test"}
        assert {"acc", "acc_train_weighted", "acc_group_mean", "wga", "per_group"} <= set(r["metrics"]["test"])
        assert {"step", "loss", "ce", "penalty", "val_wga", "val_acc"} <= set(r["history"])
    assert set(rows[-1]["history"]["penalty"]) == {"grad", "hess"}
    summary = json.loads((run / "summary.json").read_text())
    sel = summary["methods"]["cma"]["selected"]
    assert "seed" not in sel["hparams"] and len(sel["run_ids"]) == 2
    by_cfg: dict[float, list[float]] = {}
    for r in rows:
        if r["method"] == "cma":
            by_cfg.setdefault(r["hparams"]["alpha"], []).append(r["metrics"]["val"]["wga"])
    best_alpha = max(by_cfg, key=lambda k: np.mean(by_cfg[k]))
    assert sel["hparams"]["alpha"] == best_alpha
    assert summary["methods"]["cma"]["seeds"]["test"]["n_seeds"] == 2
    prov = summary["provenance"]
    assert prov["features"]["dataset"] == "toy" and prov["command"] == "probe fit toy.h5"
    assert prov["settings"]["steps"] == 40 and prov["grid"]["alpha"] == [0.0, 10.0]
    with safe_open(str(run / "heads" / "cma.safetensors"), "pt") as f:
        # the default preprocessing is pca: the head reads default_pca_dim components, plus its bias
        width = default_pca_dim(int((fs.split == 0).sum()), fs.features.shape[1])
        assert width < fs.features.shape[1] and f.get_tensor("theta").shape == (2, width + 1)
        assert {"pre.mean", "pre.proj"} <= set(f.keys()) and f.get_tensor("pre.proj").shape == (fs.features.shape[1], width)
        config = json.loads(f.metadata()["config"])
        assert config["run_id"] == sel["run_ids"][0] and json.loads(f.metadata()["provenance"])
    assert res["summary"].methods["erm"].count("n_configs") == 2


def test_overwrite_replaces_the_run_and_drops_stale_heads(tmp_path: Path) -> None:
    fs = _fs(tmp_path)
    run = tmp_path / "run"
    fit_grid(fs, ["erm", "reweight"], {}, run, steps=5, batch_size=0, eval_every=5)
    assert (run / "heads" / "reweight.safetensors").exists()
    from base.errors import UserError

    with pytest.raises(UserError, match="`overwrite`"):
        fit_grid(fs, ["erm"], {}, run, steps=5, batch_size=0, eval_every=5)
    fit_grid(fs, ["erm"], {}, run, overwrite=True, steps=5, batch_size=0, eval_every=5)
    assert not (run / "heads" / "reweight.safetensors").exists()
    assert set(json.loads((run / "summary.json").read_text())["methods"]) == {"erm"}


# ------------------------------------------------------------------------ preprocessing


def test_pca_and_l2_preprocessing(tmp_path: Path) -> None:
    fs = _fs(tmp_path, dim=8)
    st = Settings(steps=10, batch_size=0, eval_every=10, options={"pca_dim": 3}, dtype=torch.float64)
    row = fit_method(fs, "erm", [_cfg(preprocess="pca")], st)[0]
    assert row.theta.shape == (2, 4) and row.pre["proj"].shape == (8, 3)
    again = fit_method(fs, "erm", [_cfg(preprocess="pca")], st)[0]
    torch.testing.assert_close(row.theta, again.theta)
    X = torch.randn(5, 8, dtype=torch.float64)
    torch.testing.assert_close(Preprocessor("l2").transform(X).norm(dim=1), torch.ones(5, dtype=torch.float64))


# ---------------------------------------------------------------------------- estimator


def test_linear_head_estimator() -> None:
    fs = waterbirds_like(n=(400, 200, 200), d=5)
    tr, va = fs.split == 0, fs.split == 1
    labels = np.array(["land", "water"])[fs.y]
    head = LinearHead("cma", alpha=10.0, beta=1.0, steps=150, batch_size=0, eval_every=10, device="cpu")
    assert not hasattr(head, "coef_")
    assert clone(head).get_params()["alpha"] == 10.0
    head.fit(fs.features[tr], labels[tr], fs.group[tr], fs.features[va], labels[va], fs.group[va])
    assert list(head.classes_) == ["land", "water"]
    proba = head.predict_proba(fs.features)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    assert set(head.predict(fs.features)) <= {"land", "water"}
    assert head.score(fs.features[va], labels[va]) > 0.6
    assert head.result_.best_step % 10 == 0
    with pytest.raises(ValueError, match="lam"):
        LinearHead("cma", lam=1.0, steps=2).fit(fs.features[tr], fs.y[tr], fs.group[tr])


@pytest.mark.parametrize(("grid", "fragment"), [
    ({"seed": [1.5]}, "`seed`: 1.5 is not a whole number"),
    ({"lr": [-1e-3]}, "`lr`: -0.001 is not allowed"),
    ({"alpha": ["big"]}, "`alpha`: 'big' is not a number"),
    ({"weight_decay": [float("nan")]}, "`weight_decay`: nan is not allowed"),
    ({"preprocess": ["whiten"]}, "`preprocess` 'whiten'"),
    ({"zeta": [1.0]}, "unknown hyperparameter 'zeta'"),
])
def test_fit_grid_checks_a_grid_given_in_python(tmp_path: Path, grid: dict, fragment: str) -> None:
    import re

    from base.errors import UserError

    with pytest.raises(UserError, match=re.escape(fragment)):
        fit_grid(_fs(tmp_path), ["cma"], grid, None, steps=2)
