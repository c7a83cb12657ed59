"""The batched trainer: sklearn agreement, grid = separate runs, annealing, divergence, Ctrl-C."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from features.store import FeatureSet, read_features
from probe.api import LinearHead, fit_grid
from probe.optim import BatchedOptimizer
from probe.trainer import Settings, fit_method
from tests.h5craft import toy_arrays, write_feature_file


def _fs(tmp_path: Path, n: int = 12, dim: int = 6, seed: int = 0) -> FeatureSet:
    return read_features(write_feature_file(tmp_path / "toy.h5", toy_arrays(n, dim, seed)))


def _cfg(**kw):
    base = {"lr": 1e-2, "weight_decay": 1e-3, "anneal": 0, "seed": 0, "preprocess": "standardize"}
    return {**base, **kw}


def test_erm_matches_sklearn_logistic_regression(tmp_path: Path) -> None:
    fs = _fs(tmp_path, n=40, dim=8)
    tr, te = fs.split == 0, fs.split == 2
    X = fs.features
    Z = (X - X[tr].mean(0)) / X[tr].std(0, ddof=1)
    wd = 1e-2
    # A 2-class softmax head with λ/2(‖w0‖²+‖w1‖²) equals binary LR with λ/4‖w1-w0‖²: C = 2/(λN).
    sk = LogisticRegression(C=2.0 / (wd * tr.sum()), max_iter=10000, tol=1e-12).fit(Z[tr], fs.y[tr])
    st = Settings(steps=3000, batch_size=0, eval_every=3000, dtype=torch.float64)
    row = fit_method(fs, "erm", [_cfg(weight_decay=wd)], st)[0]
    theta = row["_theta"].numpy()
    w, b = theta[1, :-1] - theta[0, :-1], theta[1, -1] - theta[0, -1]
    np.testing.assert_allclose(w, sk.coef_[0], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(b, sk.intercept_[0], atol=1e-3)
    assert abs(row["metrics"]["test"]["acc"] - (sk.predict(Z[te]) == fs.y[te]).mean()) <= 0.005


def test_grid_equals_separate_runs(tmp_path: Path) -> None:
    fs = _fs(tmp_path)
    st = Settings(steps=60, batch_size=16, eval_every=20, dtype=torch.float64)
    configs = [_cfg(alpha=a, beta=b, lr=lr, anneal=an) for a in (0.0, 10.0) for b in (0.0, 5.0)
               for lr in (1e-2, 5e-2) for an in (0, 30)]
    grid = fit_method(fs, "cma", configs, st)
    for cfg, row in zip(configs, grid, strict=True):
        alone = fit_method(fs, "cma", [cfg], st)[0]
        torch.testing.assert_close(row["_theta"], alone["_theta"], rtol=1e-9, atol=1e-12)
        assert row["metrics"] == alone["metrics"]
        assert row["best_step"] == alone["best_step"]


def test_seeds_change_batches_but_not_full_batch(tmp_path: Path) -> None:
    fs = _fs(tmp_path)
    mini = Settings(steps=30, batch_size=8, eval_every=30, dtype=torch.float64)
    a, b = fit_method(fs, "erm", [_cfg(seed=0), _cfg(seed=1)], mini)
    assert not torch.allclose(a["_theta"], b["_theta"])
    full = Settings(steps=30, batch_size=0, eval_every=30, dtype=torch.float64)
    a, b = fit_method(fs, "erm", [_cfg(seed=0), _cfg(seed=1)], full)
    torch.testing.assert_close(a["_theta"], b["_theta"])


def test_annealing_switches_penalty_on_at_the_right_step(tmp_path: Path) -> None:
    fs = _fs(tmp_path)
    st = Settings(steps=40, batch_size=0, eval_every=1, dtype=torch.float64)
    erm, cma_late, cma_now = fit_method(
        fs, "cma", [_cfg(alpha=0.0, beta=0.0), _cfg(alpha=50.0, beta=50.0, anneal=20),
                    _cfg(alpha=50.0, beta=50.0, anneal=0)], st)
    loss_erm, loss_late = erm["history"]["loss"], cma_late["history"]["loss"]
    # Identical to ERM until step 20, then the penalty enters the loss.
    np.testing.assert_allclose(loss_late[:20], loss_erm[:20], rtol=1e-12)
    assert loss_late[20] > loss_erm[20] + 1e-9
    assert cma_now["history"]["loss"][0] > loss_erm[0] + 1e-9
    # No checkpoint from the ERM phase is kept for the annealed head.
    assert cma_late["best_step"] > 20


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


def test_diverging_configuration_does_not_stop_the_grid(tmp_path: Path) -> None:
    fs = _fs(tmp_path)
    st = Settings(steps=50, batch_size=0, eval_every=10, optimizer="sgd", dtype=torch.float32)
    rows = fit_method(fs, "cma", [_cfg(alpha=1.0, beta=1.0, lr=1e-1), _cfg(alpha=1e30, beta=1e30, lr=1e30)], st)
    assert rows[0]["status"] == "ok" and rows[1]["status"] == "diverged"
    assert rows[0]["metrics"]["test"]["wga"] is not None
    assert rows[1]["steps_run"] < 50


def test_fit_grid_writes_run_folder_and_selects_by_val_wga(tmp_path: Path) -> None:
    fs = _fs(tmp_path)
    res = fit_grid(fs, ["erm", "cma"], {"alpha": [0.0, 10.0], "beta": [1.0], "seed": [0, 1]}, tmp_path / "run",
                   steps=40, batch_size=16, eval_every=10)
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert {r["method"] for r in rows} == {"erm", "cma"} and len(rows) == 2 + 4
    summary = json.loads((run / "summary.json").read_text())
    sel = summary["methods"]["cma"]["selected"]
    assert "seed" not in sel["hparams"] and len(sel["run_ids"]) == 2
    by_cfg: dict[float, list[float]] = {}
    for r in rows:
        if r["method"] == "cma":
            by_cfg.setdefault(r["hparams"]["alpha"], []).append(r["metrics"]["val"]["wga"])
    best_alpha = max(by_cfg, key=lambda k: np.mean(by_cfg[k]))
    assert sel["hparams"]["alpha"] == best_alpha
    assert (run / "heads" / "cma.safetensors").exists()
    assert summary["provenance"]["features"]["dataset"] == "toy"
    assert res["summary"]["methods"]["erm"]["n_configs"] == 2


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

    with pytest.raises(KeyboardInterrupt):
        fit_grid(fs, ["erm"], {"seed": [0, 1]}, tmp_path / "run", steps=30, batch_size=16, eval_every=10,
                 progress=Stop())
    rows = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert [r["hparams"]["seed"] for r in rows] == [0]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["methods"]["erm"]["selected"]


def test_linear_head_estimator(tmp_path: Path) -> None:
    arr = toy_arrays(30, 5)
    tr = arr["split"] == 0
    head = LinearHead("cma", alpha=10.0, beta=1.0, steps=200, batch_size=0, device="cpu")
    head.fit(arr["features"][tr], arr["y"][tr], arr["group"][tr])
    proba = head.predict_proba(arr["features"])
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    assert head.score(arr["features"][tr], arr["y"][tr]) > 0.8
    assert not hasattr(LinearHead("erm"), "coef_")
