"""The label-free heads (AFR, JTT, CB-LLR) wherever a fit runs: on the fit's device, without
a bias column, with the solver's verdict on their rows, CB-LLR judged on its selection half;
and test metrics that no information regime changes (issue 28's review)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from features.store import FeatureSet
from probe.api import LinearHead, make_settings
from probe.fitting.dispatch import fit_method
from probe.methods import get_method
from probe.methods.cb_llr import halves
from probe.train.solver import Problem, lbfgs
from tests.test_trainer import waterbirds_like

GRIDS = {"afr": {"gamma": [4.0, 12.0], "lam": [0.0, 0.2], "epochs": [50]},
         "jtt": {"upweight": [20.0, 50.0], "first_steps": [20]},
         "cb-llr": {"weight_decay": [1e-3, 1e-1]}}


@pytest.fixture(scope="module")
def planted() -> FeatureSet:
    return waterbirds_like(n=(400, 200, 200), seed=3)


def _fit(fs: FeatureSet, method: str, device: str = "cpu", **settings):
    st = make_settings(device, "float64", **{"tol": 1e-10, **settings})
    return fit_method(fs, method, get_method(method).configs(GRIDS[method], st.steps), st)


@pytest.mark.cuda
@pytest.mark.parametrize("method", list(GRIDS))
def test_label_free_heads_fit_on_cuda_as_on_the_cpu(planted, method) -> None:
    cpu, gpu = _fit(planted, method, "cpu"), _fit(planted, method, "cuda")
    for a, b in zip(cpu, gpu, strict=True):
        assert a.run_id == b.run_id and a.status == b.status and b.theta.device.type == "cpu"
        np.testing.assert_allclose(b.theta.numpy(), a.theta.numpy(), atol=1e-6)
        assert a.metrics["test"]["acc"] == pytest.approx(b.metrics["test"]["acc"], abs=1e-2)


# ------------------------------------------------------------------ heads without a bias column


@pytest.mark.parametrize("C", [2, 3])
def test_the_solver_fits_heads_without_a_bias_column_to_sklearns_optimum(C) -> None:
    rng = np.random.default_rng(C)
    X = rng.standard_normal((300, 5)) + 0.5
    y = (X @ rng.standard_normal((5, C)) + rng.gumbel(size=(300, C))).argmax(1)
    w, lam = rng.uniform(0.5, 2.0, 300), 1e-2
    pb = Problem(torch.as_tensor(X), torch.as_tensor(y), torch.as_tensor(w / w.sum()), C, bias=False)
    sol = lbfgs(pb, torch.tensor([lam], dtype=torch.float64), 1e-10, 1000)
    assert sol.status == ["ok"] and sol.theta.shape == (1, C, 5)
    sk = LogisticRegression(C=(2.0 if C == 2 else 1.0) / lam, fit_intercept=False, tol=1e-12, max_iter=100_000)
    coef = sk.fit(X, y, sample_weight=w / w.sum()).coef_
    want = np.vstack([-coef / 2, coef / 2]) if C == 2 else coef
    np.testing.assert_allclose(sol.theta[0].numpy(), want, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("method", list(GRIDS))
def test_label_free_heads_fit_without_a_bias_column(planted, method) -> None:
    with_bias, without = _fit(planted, method), _fit(planted, method, bias=False)
    for a, b in zip(with_bias, without, strict=True):
        assert b.theta.shape[-1] == a.theta.shape[-1] - 1 and b.status == "ok"
        assert b.metrics["test"]["acc"] > 0.5


def test_cb_llr_without_a_bias_is_sklearns_head_without_an_intercept(planted) -> None:
    seed, wd = 2, 1e-2
    st = make_settings("cpu", "float64", bias=False, tol=1e-10)
    row = fit_method(planted, "cb-llr", [{"weight_decay": wd, "seed": seed, "preprocess": "none"}], st)[0]
    val = planted.split == 1
    Xv, yv = planted.features[val].astype(np.float64), planted.y[val]
    fit_half = halves(len(yv), seed)[0]
    w = 1.0 / (2 * np.bincount(yv[fit_half])[yv[fit_half]])
    sk = LogisticRegression(C=2.0 / wd, fit_intercept=False, tol=1e-12, max_iter=100_000)
    coef = sk.fit(Xv[fit_half], yv[fit_half], sample_weight=w / w.sum()).coef_
    np.testing.assert_allclose(row.theta.numpy(), np.vstack([-coef / 2, coef / 2]), atol=1e-6)


# ------------------------------------------------------------------ the solver's verdict


@pytest.mark.parametrize("method", list(GRIDS))
def test_a_head_the_solver_left_unconverged_is_recorded_so(planted, method) -> None:
    statuses = {r.status for r in _fit(planted, method, max_iter=1, tol=1e-12)}
    assert "not_converged" in statuses and statuses <= {"not_converged", "collapsed"}  # one step: never "ok"


# ------------------------------------------------------------------ CB-LLR judged where it selects


def test_cb_llr_is_judged_collapsed_on_its_selection_half(planted) -> None:
    """On the retraining half the class sits on feature 0; on the selection half every row lies
    on class 0's side whatever its class: the head predicts one class for the whole selection
    half (collapsed there), though both across validation."""
    seed = 4
    fs = dataclasses.replace(planted, features=planted.features.copy())
    rows = np.flatnonzero(fs.split == 1)
    fit_half, select_half = (rows[h] for h in halves(len(rows), seed))
    fs.features[fit_half, 0] = 4.0 * (2 * fs.y[fit_half] - 1)
    fs.features[select_half, 0] = -4.0
    fs.features[rows, 1:] *= 0.01
    row = fit_method(fs, "cb-llr", [{"weight_decay": 1e-2, "seed": seed, "preprocess": "none"}],
                     make_settings("cpu", "float64"))[0]
    assert len(set(fs.y[select_half])) == 2 and row.metrics["val"]["acc"] == pytest.approx(
        float((fs.y[select_half] == 0).mean()))
    assert row.status == "collapsed"


# ------------------------------------------------------------------ test metrics in every regime


def test_an_erm_heads_test_metrics_are_the_same_under_every_regime(planted) -> None:
    out = {}
    for regime in ("all", "val", "none"):
        st = make_settings("cpu", "float64", group_labels=regime, domain="infer:errors", select="val_acc")
        out[regime] = fit_method(planted, "erm", get_method("erm").configs({"weight_decay": [1e-2]}, st.steps), st)[0]
    assert out["all"].metrics["test"]["acc_train_weighted"] is not None
    for regime in ("val", "none"):
        assert torch.equal(out[regime].theta, out["all"].theta)
        assert out[regime].metrics["test"] == out["all"].metrics["test"]
    # what the fit may not read stays unread: validation's train-weighted figure under val
    assert out["val"].metrics["val"]["acc_train_weighted"] is None


# ------------------------------------------------------------------ the estimator's groups


def test_the_estimator_names_a_training_domain_and_a_validation_group_of_one_value_alike() -> None:
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 3)), np.arange(60) % 2
    domains = np.where(np.arange(60) < 20, 1, 2)  # 20 rows of domain 1, 40 of domain 2
    groups_val = np.where(np.arange(60) < 45, 1, 2)  # 45 of group 1, 15 of group 2
    head = LinearHead("erm", steps=5).fit(X, y, domains, X_val=X, y_val=y, groups_val=groups_val)
    metrics = head.result_.metrics
    assert {k: v["n"] for k, v in metrics["train"]["per_group"].items()} == {"1": 20, "2": 40}
    assert {k: v["n"] for k, v in metrics["val"]["per_group"].items()} == {"1": 45, "2": 15}
